"""The RetinaNet detector: normalise and batch the images, backbone + FPN, head, then the losses
(training) or the detections (eval)."""

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from drdet.layers.winograd import set_winograd
from drdet.modeling.anchor_generator import AnchorGenerator, build_anchor_generator
from drdet.modeling.backbone import build_backbone
from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.registry import META_ARCHITECTURES
from drdet.modeling.retinanet import (
    RetinaNetHead,
    RetinaNetLossComputation,
    RetinaNetPostProcessor,
    build_retinanet_head,
    build_retinanet_loss,
    build_retinanet_postprocessor,
)
from drdet.structures.image_list import ImageList, to_image_list


class DenseDetector(nn.Module):
    """What every dense detector of drdet shares: its five parts, the input normalisation and
    batching (:meth:`preprocess`) and the rescale of detections to the original image sizes
    (:meth:`rescale`). Subclasses (RetinaNet, FCOS) add ``forward``.

    Input images are (3, H_i, W_i) float tensors in the network's input format, not normalised:
    BGR 0-255 when INPUT.TO_BGR255 (MSRA/Caffe2 weights), else RGB 0-1. The detector subtracts
    ``pixel_mean``, divides by ``pixel_std`` and pads the batch to a multiple of
    ``size_divisibility``: this is the one place where images are normalised.

    Args:
        backbone: module with ``out_channels``; forward((B, 3, H, W)) -> list of FPN maps.
        head: the per-level predictions from the FPN maps.
        anchor_generator: the anchors (FCOS: one per location, whose centre is the location).
        loss: the training losses from the predictions and the targets.
        postprocessor: the detections from the predictions, with an ``nms_thresh``.
        pixel_mean, pixel_std: 3 values each, in the input's channel order and scale.
        size_divisibility: padded batch height and width are multiples of it.
    """

    pixel_mean: Tensor
    pixel_std: Tensor
    # The loss reads its targets through drdet.modeling.retinanet.loss._pad_targets, so the
    # training step may check them on the host (check_targets) and spare the loss its device
    # check (one sync per step on a GPU). A subclass whose loss reads targets otherwise: False.
    HOST_CHECKED_TARGETS = True

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        anchor_generator: AnchorGenerator,
        loss,
        postprocessor,
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
        self.register_buffer(
            "pixel_mean",
            torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "pixel_std",
            torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1),
            persistent=False,
        )

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


class RetinaNet(DenseDetector):
    """RetinaNet on a batch of images of different sizes (input format and arguments: see
    :class:`DenseDetector`), with the RetinaNet head, anchors, loss and post-processor."""

    head: RetinaNetHead
    loss: RetinaNetLossComputation
    postprocessor: RetinaNetPostProcessor

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[dict[str, Tensor]] | None = None,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: ``targets`` (one dict per image: "boxes" (K, 4) float x1y1x2y2 in pixels of
        the given tensor, "labels" (K,) int64 in 1..C, optional "image_id") -> {"loss_cls",
        "loss_reg"}. Degenerate boxes raise ValueError (see RetinaNetLossComputation).

        Eval: -> one dict per image, "boxes" (K, 4), "scores" (K,), "labels" (K,) int64 in 1..C,
        in pixels of the given tensor, or of ``original_sizes[i]`` (height, width) when given
        (the size of the image before the data pipeline resized it).
        """
        batch = self.preprocess(images)
        features = self.backbone(batch.tensors)
        cls_logits, box_deltas = self.head(features)
        anchors = self.anchor_generator(features, batch.tensors.shape[-2:])
        if self.training:
            if targets is None:
                raise ValueError("RetinaNet: `targets` are required in training mode")
            return self.loss(anchors, cls_logits, box_deltas, targets)
        detections = self.postprocessor(anchors, cls_logits, box_deltas, batch.image_sizes)
        return self.rescale(detections, batch.image_sizes, original_sizes)

    @torch.no_grad()
    def classification_scores(
        self, images: Sequence[Tensor] | Tensor, targets: Sequence[dict[str, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """What the classification loss sees, for the paper's Fig. 4/5
        (drdet.engine.score_distribution): (B, A, C) sigmoid scores of every anchor and its
        (B, A) int64 label from the loss's own matcher (k >= 1: class k, 0: background, -1:
        ignored). ``targets`` as for training, in pixels of the given images."""
        batch = self.preprocess(images)
        features = self.backbone(batch.tensors)
        cls_logits, _ = self.head(features)
        anchors = torch.cat(self.anchor_generator(features, batch.tensors.shape[-2:]))
        labels, _, _ = self.loss.prepare_targets(anchors, targets)
        return torch.cat(cls_logits, dim=1).float().sigmoid(), labels


@META_ARCHITECTURES.register("RetinaNet")
def build_retinanet(cfg) -> RetinaNet:
    """RetinaNet (with any registered backbone and classification loss) from ``cfg``."""
    backbone = build_backbone(cfg)
    anchor_generator = build_anchor_generator(cfg)
    box_coder = BoxCoder(cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS)
    return RetinaNet(
        backbone,
        build_retinanet_head(
            cfg, cast(int, backbone.out_channels), anchor_generator.num_anchors_per_location
        ),
        anchor_generator,
        build_retinanet_loss(cfg, box_coder),
        build_retinanet_postprocessor(cfg, box_coder),
        pixel_mean=cfg.INPUT.PIXEL_MEAN,
        pixel_std=cfg.INPUT.PIXEL_STD,
        size_divisibility=cfg.DATALOADER.SIZE_DIVISIBILITY,
    )


def build_detector(cfg) -> nn.Module:
    """The detector registered as ``cfg.MODEL.META_ARCHITECTURE`` (drdet.modeling.registry),
    on the CPU; move it to cfg.MODEL.DEVICE yourself. Pretrained weights are not loaded here."""
    model = META_ARCHITECTURES.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    set_winograd(model, cfg.MODEL.CPU_WINOGRAD)
    return model
