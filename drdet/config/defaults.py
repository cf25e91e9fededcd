"""Default configuration of drdet (yacs), with maskrcnn-benchmark's key names.

The defaults are maskrcnn-benchmark's RetinaNet (focal loss) defaults. A config that names a
classification loss (``MODEL.RETINANET.LOSS_TYPE "DR"``) also gets the setup that loss declares
(DR: ``PRIOR_PROB 0.5``, matcher thresholds 0.5 / 0.5, ``INFERENCE_TH 0.2``, ``NMS_TH 0.5``; see
drdet/modeling/losses/setup.py), under the config's own keys.

Never modify ``_C``: call :func:`drdet.config.get_cfg` for an independent copy.
"""

import math

from drdet.evaluation.coco_backends import DEFAULT_COCO_EVAL_BACKEND

from .config import CfgNode as CN

_C = CN()

_C.MODEL = CN()
_C.MODEL.DEVICE = "cuda"
_C.MODEL.META_ARCHITECTURE = "RetinaNet"
# Path or catalog name of the weights to start from; "" trains from scratch.
_C.MODEL.WEIGHT = ""
# Training on the CPU: run the 3x3 stride-1 convolutions of the ResNet, the FPN and the head that
# have enough channels and output tiles (>= 128 in, >= 64 out, >= 128 4x4 tiles, e.g. a 32 x 32
# map at batch 2) by Winograd F(4x4, 3x3) (drdet/layers/winograd.py): 0.44-0.67x the time of
# oneDNN's direct convolution for the head's convolutions (docs/BENCHMARKS.md), with outputs
# within ~1e-5 of their magnitude. No effect on CUDA, under autocast, or in eval mode.
_C.MODEL.CPU_WINOGRAD = True

# ---------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------
_C.MODEL.BACKBONE = CN()
# R-18/34/50/101/152-FPN-RETINANET. ResNeXt is R-101 with RESNETS.NUM_GROUPS / WIDTH_PER_GROUP.
_C.MODEL.BACKBONE.CONV_BODY = "R-50-FPN-RETINANET"
# 0: train everything; 1: freeze the stem; 2: stem and res2 (layer1); ... 5: the whole body.
_C.MODEL.BACKBONE.FREEZE_CONV_BODY_AT = 2

_C.MODEL.RESNETS = CN()
# 1 for ResNet; 32 (x8d) or 64 (x4d) for ResNeXt.
_C.MODEL.RESNETS.NUM_GROUPS = 1
# Channels per group of the res2 bottleneck 3x3 conv (doubled at each stage). Basic-block bodies
# (R-18/34) use NUM_GROUPS * WIDTH_PER_GROUP as the res2 output width and ignore RES2_OUT_CHANNELS.
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# True: the stride of a bottleneck sits in its first 1x1 conv (MSRA / Caffe2 weights);
# False: in its 3x3 conv (torchvision and FAIR ResNeXt weights).
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 256
# Must be 1 for the FPN-RETINANET bodies (P3-P7 need a stride-32 C5).
_C.MODEL.RESNETS.RES5_DILATION = 1
# Normalisation of the ResNet body: FrozenBN, BN, GN or SyncBN (drdet's key).
_C.MODEL.RESNETS.NORM = "FrozenBN"

_C.MODEL.GROUP_NORM = CN()
# Channels per group; -1: use NUM_GROUPS groups instead.
_C.MODEL.GROUP_NORM.DIM_PER_GP = -1
_C.MODEL.GROUP_NORM.NUM_GROUPS = 32
_C.MODEL.GROUP_NORM.EPSILON = 1e-5

_C.MODEL.FPN = CN()
_C.MODEL.FPN.USE_GN = False
_C.MODEL.FPN.USE_RELU = False

# ---------------------------------------------------------------------------------------------
# RetinaNet head, anchors, matching, inference
# ---------------------------------------------------------------------------------------------
_C.MODEL.RETINANET = CN()
# Includes the background class (maskrcnn-benchmark): the head predicts NUM_CLASSES - 1
# foreground classes, labelled 1 .. NUM_CLASSES - 1.
_C.MODEL.RETINANET.NUM_CLASSES = 81
# One anchor size and stride per pyramid level P3-P7 (pixels).
_C.MODEL.RETINANET.ANCHOR_SIZES = (32, 64, 128, 256, 512)
_C.MODEL.RETINANET.ANCHOR_STRIDES = (8, 16, 32, 64, 128)
_C.MODEL.RETINANET.ASPECT_RATIOS = (0.5, 1.0, 2.0)
_C.MODEL.RETINANET.OCTAVE = 2.0
_C.MODEL.RETINANET.SCALES_PER_OCTAVE = 3
# How anchors are placed and sized (drdet/modeling/anchor_generator.py): "exact" (drdet), or the
# conventions of models converted from elsewhere, "torchvision" or "maskrcnn_benchmark".
_C.MODEL.RETINANET.ANCHOR_CONVENTION = "exact"
# True: P6 from C5; False: P6 from P5.
_C.MODEL.RETINANET.USE_C5 = True
_C.MODEL.RETINANET.NUM_CONVS = 4
# GroupNorm in the class and box towers of the head.
_C.MODEL.RETINANET.USE_GN = False
_C.MODEL.RETINANET.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_C.MODEL.RETINANET.BBOX_REG_BETA = 0.11
# Divisor of the regression loss per positive anchor (maskrcnn-benchmark: 4, one per coordinate).
_C.MODEL.RETINANET.BBOX_REG_WEIGHT = 4.0
_C.MODEL.RETINANET.PRE_NMS_TOP_N = 1000
_C.MODEL.RETINANET.NMS_TH = 0.5
# IoU >= FG_IOU_THRESHOLD: foreground; < BG_IOU_THRESHOLD: background; between: ignored.
_C.MODEL.RETINANET.FG_IOU_THRESHOLD = 0.5
_C.MODEL.RETINANET.BG_IOU_THRESHOLD = 0.4
# Each ground-truth box also keeps the anchors of highest IoU with it (drdet's key).
_C.MODEL.RETINANET.ALLOW_LOW_QUALITY_MATCHES = True
# Focal loss.
_C.MODEL.RETINANET.LOSS_ALPHA = 0.25
_C.MODEL.RETINANET.LOSS_GAMMA = 2.0
# Initial foreground probability of the classifier (bias = -log((1 - p) / p)).
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
# Scores at or below this are dropped before NMS.
_C.MODEL.RETINANET.INFERENCE_TH = 0.05
# Classification loss: "FOCAL" (RetinaNet) or "DR" (Dr. Retina). drdet's key.
_C.MODEL.RETINANET.LOSS_TYPE = "FOCAL"

# ---------------------------------------------------------------------------------------------
# FCOS (MODEL.META_ARCHITECTURE "FCOS"; drdet/modeling/fcos). FCOS also reads, from
# MODEL.RETINANET: NUM_CLASSES (with the background, as for RetinaNet), USE_C5 (P6 from C5 or
# P5; torchvision's FCOS uses P5), ANCHOR_CONVENTION (where the locations lie: "exact" (s*j),
# "torchvision" (its strides), "maskrcnn_benchmark" (s*j + s/2, the FCOS authors' code)),
# LOSS_ALPHA / LOSS_GAMMA (focal loss); and MODEL.DR_LOSS for the DR loss, MODEL.GROUP_NORM.
# ---------------------------------------------------------------------------------------------
_C.MODEL.FCOS = CN()
# Classification loss, a registered name: "FOCAL" (FCOS) or "DR".
_C.MODEL.FCOS.LOSS_TYPE = "FOCAL"
_C.MODEL.FCOS.NUM_CONVS = 4
# GroupNorm in the class and box towers of the head (FCOS: yes).
_C.MODEL.FCOS.USE_GN = True
# Initial foreground probability of the classifier (bias = -log((1 - p) / p)).
_C.MODEL.FCOS.PRIOR_PROB = 0.01
# Level l takes the locations whose largest distance to the box, max(l, t, r, b), lies in
# [SIZES_OF_INTEREST[l-1], SIZES_OF_INTEREST[l]] (0 below P3, infinity above P7), pixels.
_C.MODEL.FCOS.SIZES_OF_INTEREST = (64, 128, 256, 512)
# Positives only within this many strides of the box centre (as well as inside the box);
# 0 turns centre sampling off (every location inside the box).
_C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
# Box loss: "giou" (1 - GIoU, torchvision) or "iou" (-ln IoU, the FCOS paper).
_C.MODEL.FCOS.REG_LOSS = "giou"
# Weight each positive's box loss by its centre-ness target and divide by their sum (the FCOS
# authors' code) instead of by the number of positives (torchvision).
_C.MODEL.FCOS.CENTERNESS_WEIGHTED_REG = False
# Score = sqrt(sigmoid(class logit) * sigmoid(centre-ness logit)); scores at or below this are
# dropped before NMS (torchvision: 0.2).
_C.MODEL.FCOS.INFERENCE_TH = 0.2
_C.MODEL.FCOS.PRE_NMS_TOP_N = 1000
_C.MODEL.FCOS.NMS_TH = 0.6

# ---------------------------------------------------------------------------------------------
# DR loss (drdet): drdet/layers/dr_loss.py (DRLossParams) and the paper's Eq. 6-9.
# ---------------------------------------------------------------------------------------------
_C.MODEL.DR_LOSS = CN()
# Temperatures of the positive / negative distributions (lambda+ and lambda- of Eq. 6).
_C.MODEL.DR_LOSS.POS_LAMBDA = 1.0
_C.MODEL.DR_LOSS.NEG_LAMBDA = 0.1 / math.log(3.5)
# The paper's Table 1 parametrisation: lambda+ = 1 / ln(H_POS), lambda- = 0.1 / ln(H_NEG).
# 0 = not used (POS_LAMBDA / NEG_LAMBDA apply); a value > 1 overrides the matching lambda.
# See drdet.layers.DRLossParams.from_cfg.
_C.MODEL.DR_LOSS.H_POS = 0.0
_C.MODEL.DR_LOSS.H_NEG = 0.0
# Sharpness of the logistic smoothing (Eq. 8).
_C.MODEL.DR_LOSS.L = 6.0
# The ranking margin gamma.
_C.MODEL.DR_LOSS.MARGIN = 0.5
# Weight of the classification loss against the regression loss.
_C.MODEL.DR_LOSS.TAU = 4.0
# Smoothing of the hinge: "logistic" (Eq. 8), "quadratic" (Eq. 7, uses RHO) or "hinge" (none).
_C.MODEL.DR_LOSS.SMOOTHING = "logistic"
_C.MODEL.DR_LOSS.RHO = 0.5
# "dr": rank E[negatives] against E[positives]; "negonly": against each positive (Table 3).
_C.MODEL.DR_LOSS.PAIRING = "dr"
# "image": one loss per image, averaged over the batch (the paper's Eq. 9);
# "batch": one loss over all anchors of the per-GPU batch (the authors' released code).
_C.MODEL.DR_LOSS.GROUPING = "image"

# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
# Shorter side in pixels; one is drawn per image when several are given (scale jitter).
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# Per-channel mean and std in the order the network sees (BGR 0-255 for MSRA weights).
_C.INPUT.PIXEL_MEAN = [102.9801, 115.9465, 122.7717]
_C.INPUT.PIXEL_STD = [1.0, 1.0, 1.0]
_C.INPUT.TO_BGR255 = True
_C.INPUT.HORIZONTAL_FLIP_PROB_TRAIN = 0.5

_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.TEST = ()

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# Batched images are zero-padded to a multiple of this (pixels).
_C.DATALOADER.SIZE_DIVISIBILITY = 32
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
# drdet: seed of the training index stream and of the workers' augmentation; keep it fixed across
# --resume so the resumed run continues the same sequence.
_C.DATALOADER.SEED = 0
# drdet: unreadable images (missing, empty, truncated, corrupt, not of the annotated size) that
# training skips, each replaced by the next readable image with a warning naming the file; one
# more (counted as distinct files, summed over the processes) stops the run with an error listing
# them. 0: the first one stops the run. Evaluation never skips.
_C.DATALOADER.MAX_BAD_IMAGES = 0

# ---------------------------------------------------------------------------------------------
# Solver (lr for IMS_PER_BATCH images; scale it linearly with the batch)
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.MAX_ITER = 90000
_C.SOLVER.BASE_LR = 0.01
_C.SOLVER.BIAS_LR_FACTOR = 2.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_BIAS = 0.0
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (60000, 80000)
_C.SOLVER.WARMUP_FACTOR = 1.0 / 3
_C.SOLVER.WARMUP_ITERS = 500
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.CHECKPOINT_PERIOD = 2500
# Images per iteration over all GPUs.
_C.SOLVER.IMS_PER_BATCH = 16
# drdet: "multistep" (STEPS, GAMMA) or "cosine" (to 0 at MAX_ITER), both after the warmup.
_C.SOLVER.LR_SCHEDULER = "multistep"
# drdet: weight decay of normalisation weights (GN/BN); negative = same as WEIGHT_DECAY.
_C.SOLVER.WEIGHT_DECAY_NORM = -1.0
# drdet: clip the global L2 norm of the gradients to MAX_NORM.
_C.SOLVER.CLIP_GRADIENTS = CN()
_C.SOLVER.CLIP_GRADIENTS.ENABLED = False
_C.SOLVER.CLIP_GRADIENTS.MAX_NORM = 10.0
# drdet: mixed precision (torch.autocast + GradScaler) on CUDA; ignored on the CPU.
_C.SOLVER.AMP = False
# drdet: iterations between log lines / metrics.jsonl records.
_C.SOLVER.LOG_PERIOD = 20
# drdet: timeout of the process group's collectives, so a failed rank cannot hang the others
# (minutes; fractions allowed, e.g. 0.05 = 3 s in tests).
_C.SOLVER.DIST_TIMEOUT_MINUTES = 30.0

# ---------------------------------------------------------------------------------------------
# Speed switches of the training step (drdet, issue 16). Each is off by default, none changes a
# checkpoint (same keys, same values), and their effect on a GPU is not yet measured
# (docs/BENCHMARKS.md, "GPU speed switches"). Applied by drdet.engine.speed.
# ---------------------------------------------------------------------------------------------
_C.SPEED = CN()
# Model weights and the backbone's input batch in channels_last (NHWC) memory format, the layout
# cuDNN's tensor-core convolutions use natively.
_C.SPEED.CHANNELS_LAST = False
# torch.compile of the model's forward, in place (nn.Module.compile): the state dict keeps its
# keys (no "_orig_mod." prefix). The first iterations are slow (compilation).
_C.SPEED.COMPILE = False
# torch.backends.cudnn.benchmark: cuDNN times its algorithms for every new input shape and keeps
# the fastest; pays with fixed-size batches, costs a search per new shape otherwise.
_C.SPEED.CUDNN_BENCHMARK = False
# Autocast dtype under SOLVER.AMP: "float16" (with GradScaler, the behaviour before this key),
# "bfloat16" (no GradScaler) or "auto" (bfloat16 where torch.cuda.is_bf16_supported(), else
# float16). The losses accumulate in float32 either way.
_C.SPEED.AMP_DTYPE = "float16"
# Host syncs of the training step: False reads the losses back every iteration (the NaN guard and
# the bad-image limit stop the run at the failing iteration, before its update). True keeps them
# on the device and reads them back every SOLVER.LOG_PERIOD iterations and at checkpoint,
# evaluation and last iterations: the run then stops at that read naming the first failing
# iteration, after the updates in between were applied (drdet/engine/train_step.py).
_C.SPEED.DEFER_CHECKS = False

_C.TEST = CN()
# Images per iteration over all GPUs.
_C.TEST.IMS_PER_BATCH = 8
_C.TEST.DETECTIONS_PER_IMG = 100
# drdet: evaluate on DATASETS.TEST every EVAL_PERIOD iterations during training (0: at the end only).
_C.TEST.EVAL_PERIOD = 0
# drdet: also report the AP of every category.
_C.TEST.PER_CATEGORY_AP = False
# drdet: what computes the COCO metric: "hotcoco" (the default: pycocotools' figures, faster;
# pycocotools where it cannot be imported) or "pycocotools" (the reference). Values:
# drdet.evaluation.coco_backends.COCO_EVAL_BACKENDS.
_C.TEST.COCO_EVAL_BACKEND = DEFAULT_COCO_EVAL_BACKEND
_C.TEST.BBOX_AUG = CN()
_C.TEST.BBOX_AUG.ENABLED = False
_C.TEST.BBOX_AUG.SCALES = ()
_C.TEST.BBOX_AUG.MAX_SIZE = 4000
_C.TEST.BBOX_AUG.H_FLIP = False

_C.OUTPUT_DIR = "."
