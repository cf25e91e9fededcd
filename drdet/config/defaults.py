"""The framework's own config keys (yacs), with maskrcnn-benchmark's key names: the model's
device, detector, weights and classes, the input, data, solver, speed and test settings.

Each part of the model declares its own node beside its builder, with its defaults and their
meaning (drdet.config.add_config_node): the backbone's MODEL.BACKBONE.* bodies, MODEL.RESNETS
and MODEL.FPN (drdet/modeling/backbone/build.py), MODEL.GROUP_NORM (drdet/layers/misc.py),
MODEL.ANCHOR_GENERATOR (drdet/modeling/anchor_generator.py), each detector's node
(MODEL.RETINANET in drdet/modeling/retinanet/config.py, MODEL.FCOS in drdet/modeling/fcos/
config.py, ...) and each loss's (MODEL.DR_LOSS, MODEL.FOCAL_LOSS in drdet/modeling/losses/).
``python -c "from drdet.config import get_cfg; print(get_cfg().dump())"`` prints them all.

A config that names a classification loss (``MODEL.RETINANET.LOSS_TYPE "DR"``) also gets the
setup that loss declares for its detector (drdet/config/setups.py).

Never modify ``_C``: call :func:`drdet.config.get_cfg` for an independent copy.
"""

from .config import CfgNode as CN

_C = CN()

_C.MODEL = CN()
_C.MODEL.DEVICE = "cuda"
# A registered detector (drdet.modeling.registry.META_ARCHITECTURES): "RetinaNet", "FCOS", ...
_C.MODEL.META_ARCHITECTURE = "RetinaNet"
# Path or catalog name of the weights to start from; "" trains from scratch.
_C.MODEL.WEIGHT = ""
# Classes the detector predicts, counting the background (maskrcnn-benchmark): the heads predict
# NUM_CLASSES - 1 foreground classes, labelled 1 .. NUM_CLASSES - 1 (81 for COCO).
_C.MODEL.NUM_CLASSES = 81
# Training on the CPU: run the 3x3 stride-1 convolutions of the ResNet, the FPN and the head that
# have enough channels and output tiles (>= 128 in, >= 64 out, >= 128 4x4 tiles, e.g. a 32 x 32
# map at batch 2) by Winograd F(4x4, 3x3) (drdet/layers/winograd.py): 0.44-0.67x the time of
# oneDNN's direct convolution for the head's convolutions (docs/BENCHMARKS.md), with outputs
# within ~1e-5 of their magnitude. No effect on CUDA, under autocast, or in eval mode.
_C.MODEL.CPU_WINOGRAD = True

# A registered backbone (drdet.modeling.registry.BACKBONES): the ResNet/ResNeXt-FPN bodies
# R-18/34/50/101/152-FPN-RETINANET (ResNeXt is R-101 with RESNETS.NUM_GROUPS / WIDTH_PER_GROUP;
# their keys: MODEL.RESNETS, MODEL.FPN, drdet/modeling/backbone/build.py).
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.CONV_BODY = "R-50-FPN-RETINANET"
# 0: train everything; 1: freeze the stem; 2: stem and res2 (layer1); ... 5: the whole body.
_C.MODEL.BACKBONE.FREEZE_CONV_BODY_AT = 2

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
# Speed switches of the training step (drdet). Each is off by default, none changes a
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
_C.TEST.COCO_EVAL_BACKEND = "hotcoco"
_C.TEST.BBOX_AUG = CN()
_C.TEST.BBOX_AUG.ENABLED = False
_C.TEST.BBOX_AUG.SCALES = ()
_C.TEST.BBOX_AUG.MAX_SIZE = 4000
_C.TEST.BBOX_AUG.H_FLIP = False

_C.OUTPUT_DIR = "."
