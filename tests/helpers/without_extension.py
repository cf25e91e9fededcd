"""Run as a script by tests/test_without_extension.py, in a fresh process:

    python tests/helpers/without_extension.py OUTPUT_DIR

makes ``import drdet._C`` fail (a sys.meta_path finder raises ImportError for it, as on a machine
without a compiler), then imports drdet, trains a tiny Dr. Retina for two iterations on the
synthetic set, evaluates it, runs the Predictor on an image, and prints one JSON line: what the
test asserts on. The synthetic set goes to $DRDET_DATASETS. Its PYTHONPATH holds the checkout and
tests/ (helpers, tool_loader), as the test sets it.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))


class BlockExtension(importlib.abc.MetaPathFinder):
    """Makes ``import drdet._C`` raise ImportError; every other import goes on as usual."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "drdet._C":
            raise ImportError("drdet._C blocked by tests/helpers/without_extension.py")
        return None


def train_and_evaluate(output_dir: str) -> dict:
    """Two iterations of the tiny set-up, then the evaluation on two synthetic images."""
    from tool_loader import load_tool

    from helpers.tiny import SMALL_HEAD, STEADY, tiny_overrides

    argv = [
        "--config-file",
        os.path.join(HERE, "..", "..", "configs", "synthetic", "dr_R-18-FPN_synthetic.yaml"),
    ]
    argv += tiny_overrides(max_iter=2, overrides={**SMALL_HEAD, **STEADY})
    return load_tool("train_net").main(argv + ["OUTPUT_DIR", output_dir])


def predict(output_dir: str) -> dict:
    """The Predictor with the trained weights, on one random 100 x 140 image."""
    import numpy as np

    from drdet import Predictor
    from drdet.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(output_dir, "config.yaml"))
    cfg.MODEL.WEIGHT = os.path.join(output_dir, "model_final.pth")
    cfg.MODEL.RETINANET.INFERENCE_TH = 0.0  # detections whatever the model learnt in 2 steps
    image = (np.random.RandomState(0).rand(100, 140, 3) * 255).astype(np.uint8)
    out = Predictor(cfg)(image)
    return {"num_detections": len(out["scores"]), "boxes_dtype": str(out["boxes"].dtype)}


def main(output_dir: str) -> None:
    sys.meta_path.insert(0, BlockExtension())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import drdet.layers
        from drdet.layers.cpu_isa import cpu_isa, supported_cpu_isas

        metrics = train_and_evaluate(output_dir)
        prediction = predict(output_dir)
    missing = [w for w in caught if issubclass(w.category, drdet.layers.ExtensionMissingWarning)]
    records = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.jsonl"))]
    summary = {
        "extension_loaded": drdet.layers.extension_loaded(),
        "extension_in_use": drdet.layers.extension_in_use(),
        "c_module_imported": "drdet._C" in sys.modules,
        "warnings": [str(w.message) for w in missing],
        "cpu_isas": [cpu_isa(), supported_cpu_isas()],
        "losses": [r["loss"] for r in records if "loss" in r],
        "metrics": metrics,
        "prediction": prediction,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1])
