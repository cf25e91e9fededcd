"""Model components: backbone, anchors, box coding, matching, the RetinaNet head and the detector."""
