"""The template of every dense detector (RetinaNet, FCOS, ...): normalise and batch the images,
run the dense core (backbone, head, anchors), then the loss in training or the post-processing
in eval. A detector is its five parts; it writes no forward of its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from drdet.modeling.anchor_generator import AnchorGenerator
from drdet.modeling.dense.outputs import DenseOutputs
from drdet.modeling.dense.targets import check_targets
from drdet.structures.image_list import ImageList, to_image_list


def backbone_strides(backbone: nn.Module) -> list[int]:
    """The stride of each feature map of ``backbone`` (its ``strides``), pixels."""
    return [int(s) for s in cast(Sequence[int], backbone.strides)]


def input_args(cfg) -> dict[str, Any]:
    """DenseDetector's input arguments from the config: INPUT.PIXEL_MEAN, INPUT.PIXEL_STD and
    DATALOADER.SIZE_DIVISIBILITY."""
    return {
        "pixel_mean": cfg.INPUT.PIXEL_MEAN,
        "pixel_std": cfg.INPUT.PIXEL_STD,
        "size_divisibility": cfg.DATALOADER.SIZE_DIVISIBILITY,
    }


class DenseDetector(nn.Module):
    """A dense detector on a batch of images of different sizes.

    Input images are (3, H_i, W_i) float tensors in the network's input format, not normalised:
    BGR 0-255 when INPUT.TO_BGR255 (MSRA/Caffe2 weights), else RGB 0-1. The detector subtracts
    ``pixel_mean``, divides by ``pixel_std`` and pads the batch to a multiple of
    ``size_divisibility``: this is the one place where images are normalised.

    Args:
        backbone: module with ``out_channels``; forward((B, 3, H, W)) -> list of FPN maps.
        head: FPN maps -> :class:`DenseOutputs`; has ``num_classes`` (C).
        anchor_generator: per level the (A_l, 4) anchors of the maps (FCOS: one per location,
            centred on it).
        loss: ``loss(anchors, outputs, targets, check_targets) -> {name: scalar}``, with
            ``labels(anchors, targets) -> (B, A)`` (what the classification loss sees; per-level
            anchors, as the loss takes them).
        postprocessor: ``postprocessor(anchors, outputs, image_sizes) -> detections``, with an
            ``nms_thresh`` (drdet.modeling.dense.postprocessor.DensePostProcessor).
        pixel_mean, pixel_std: 3 values each, in the input's channel order and scale.
        size_divisibility: padded batch height and width are multiples of it.
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        anchor_generator: AnchorGenerator,
        loss: Any,
        postprocessor: Any,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.anchor_generator = anchor_generator
        self.loss = loss
        self.postprocessor = postprocessor
        self.size_divisibility = size_divisibility
        for name, values in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
            tensor = torch.tensor(values, dtype=torch.float32).view(3, 1, 1)
            self.register_buffer(name, tensor, persistent=False)

    @property
    def num_classes(self) -> int:
        """Foreground classes C (labels 1..C)."""
        return int(cast(int, self.head.num_classes))

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[dict[str, Tensor]] | None = None,
        original_sizes: Sequence[tuple[int, int]] | None = None,
        *,
        check_targets: bool = True,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: ``targets`` (one dict per image: "boxes" (K, 4) float x1y1x2y2 in pixels of
        the given tensor, "labels" (K,) int64 in 1..C, optional "image_id") -> the loss dict.
        A degenerate box or a label outside 1..C raises ValueError naming the image, unless
        ``check_targets`` is False (the caller ran :meth:`check_targets` on the host).

        Eval: -> one dict per image, "boxes" (K, 4), "scores" (K,), "labels" (K,) int64 in 1..C,
        in pixels of the given tensor, or of ``original_sizes[i]`` (height, width) when given
        (the size of the image before the data pipeline resized it).
        """
        batch = self.preprocess(images)
        outputs, anchors = self.dense_forward(batch.tensors)
        if self.training:
            if targets is None:
                raise ValueError(f"{type(self).__name__}: `targets` are required in training mode")
            return self.loss(anchors, outputs, targets, check_targets=check_targets)
        detections = self.postprocessor(anchors, outputs, batch.image_sizes)
        return self.rescale(detections, batch.image_sizes, original_sizes)

    def dense_forward(self, tensors: Tensor) -> tuple[DenseOutputs, list[Tensor]]:
        """The dense core: a normalised, padded (B, 3, H, W) batch -> (the head's per-level
        predictions, the per-level (A_l, 4) anchors). Pure tensors, no post-processing."""
        features = self.backbone(tensors)
        return self.head(features), self.anchor_generator(features, tensors.shape[-2:])

    def check_targets(self, targets: Sequence[dict[str, Tensor]]) -> None:
        """The targets' check of the loss, run where they are (the host, for a data loader's):
        ValueError naming the image with a degenerate box or a label outside 1..C."""
        check_targets(targets, self.num_classes)

    @torch.no_grad()
    def classification_scores(
        self, images: Sequence[Tensor] | Tensor, targets: Sequence[dict[str, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """What the classification loss sees, for the paper's Fig. 4/5
        (drdet.engine.score_distribution): (B, A, C) sigmoid class scores of every anchor (or
        location; without centre-ness) and its (B, A) int64 label from the loss's own
        assignment (k >= 1: class k, 0: background, -1: ignored). ``targets`` as for training,
        in pixels of the given images."""
        batch = self.preprocess(images)
        outputs, anchors = self.dense_forward(batch.tensors)
        labels = self.loss.labels(anchors, targets)
        return torch.cat(outputs.cls_logits, dim=1).float().sigmoid(), labels

    def preprocess(self, images: Sequence[Tensor] | Tensor) -> ImageList:
        """Normalises (3, H_i, W_i) images and pads them into one (B, 3, H, W) batch."""
        name = type(self).__name__
        if isinstance(images, Tensor) and images.dim() == 4:
            images = list(images.unbind(0))
        if isinstance(images, Tensor) or len(images) == 0:
            raise ValueError(
                f"{name}: `images` must be a non-empty list of (3, H, W) tensors "
                "or a (B, 3, H, W) tensor"
            )
        normalised = []
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"{name}: images[{i}] has shape {tuple(image.shape)}, expected (3, H, W)"
                )
            image = image.to(device=self.pixel_mean.device, dtype=torch.float32)
            normalised.append((image - self.pixel_mean) / self.pixel_std)
        return to_image_list(normalised, self.size_divisibility)

    def rescale(
        self,
        detections: list[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]] | None,
    ) -> list[dict[str, Tensor]]:
        """Scales each image's "boxes" (K, 4) from its (height, width) in ``image_sizes`` to
        ``original_sizes[i]``, in place; no-op when ``original_sizes`` is None."""
        if original_sizes is None:
            return detections
        if len(original_sizes) != len(detections):
            raise ValueError(
                f"{type(self).__name__}: {len(original_sizes)} original_sizes for "
                f"{len(detections)} images"
            )
        for det, (h, w), (oh, ow) in zip(detections, image_sizes, original_sizes):
            scale = det["boxes"].new_tensor([ow / w, oh / h, ow / w, oh / h])
            det["boxes"] = det["boxes"] * scale
        return detections
