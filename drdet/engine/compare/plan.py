"""Planning a comparison of classification losses: the settings, the checks that the runs will
differ in the loss and its setup only, and the runs with their config overrides.

A run is one training of one loss (`Run.loss`), with the config's data seed (`Run.seed` None) or
a seed of its own (--seeds N: N runs per loss sharing one label); its folder name (`Run.name`)
keys its results everywhere downstream.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from drdet.config import flat_keys, get_cfg, load_yaml_with_base, loss_key, setup_keys
from drdet.engine.defaults import load_config, safe_folder_name
from drdet.utils.errors import UserInputError

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SEED_KEY = "DATALOADER.SEED"


class CompareError(UserInputError):
    """A comparison that cannot run as asked; the message says what to change."""


@dataclass
class Run:
    """One training run: its folder name, its label in the tables, the classification loss it
    trains, its own config overrides, the paper's COCO minival AP for it (ablations) and the
    ablation table's columns. `seed`: DATALOADER.SEED of the run (None: the config's).
    `group`: the label of the runs that differ only in their seed (its own label by default)."""

    name: str
    label: str
    loss: str
    opts: list[str]
    paper_ap: float | None = None
    columns: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    group: str = ""

    def __post_init__(self) -> None:
        self.group = self.group or self.label

    def overrides(self) -> list[str]:
        """The run's own KEY VALUE overrides, its seed included."""
        return self.opts + ([] if self.seed is None else [SEED_KEY, str(self.seed)])


# The paper's Tables 1-3 (R-50-FPN 1x, COCO minival AP): (row label columns, ablation yaml or
# None for the unchanged DR config, loss, paper AP). "Focal" is the loss switched to FOCAL.
ABLATIONS: dict[str, dict[str, Any]] = {
    "table1": {
        "header": ("h+", "h-"),
        "rows": [
            (("e", "e"), "dr_R-50-FPN_1x_hpos-e_hneg-e.yaml", "DR", 37.1),
            (("e", "3.5"), "dr_R-50-FPN_1x_hpos-e_hneg-3.5.yaml", "DR", 37.4),
            (("e", "5.5"), "dr_R-50-FPN_1x_hpos-e_hneg-5.5.yaml", "DR", 37.2),
            (("e", "20"), "dr_R-50-FPN_1x_hpos-e_hneg-20.yaml", "DR", 36.6),
            (("5.5", "3.5"), "dr_R-50-FPN_1x_hpos-5.5_hneg-3.5.yaml", "DR", 36.7),
            (("20", "3.5"), "dr_R-50-FPN_1x_hpos-20_hneg-3.5.yaml", "DR", 35.6),
        ],
    },
    "table2": {
        "header": ("Loss",),
        "rows": [
            (("Focal",), None, "FOCAL", 36.1),
            (("Hinge",), "dr_R-50-FPN_1x_hinge.yaml", "DR", 35.8),
            (("rho = 0.2",), "dr_R-50-FPN_1x_quadratic_rho-0.2.yaml", "DR", 36.9),
            (("rho = 0.5",), "dr_R-50-FPN_1x_quadratic_rho-0.5.yaml", "DR", 37.2),
            (("L = 4",), "dr_R-50-FPN_1x_logistic_L-4.yaml", "DR", 37.2),
            (("L = 6",), "dr_R-50-FPN_1x_logistic_L-6.yaml", "DR", 37.4),
            (("L = 8",), "dr_R-50-FPN_1x_logistic_L-8.yaml", "DR", 37.1),
            (("L = 10",), "dr_R-50-FPN_1x_logistic_L-10.yaml", "DR", 36.8),
        ],
    },
    "table3": {
        "header": ("Pairing",),
        "rows": [
            (("Focal",), None, "FOCAL", 36.1),
            (("NegOnly",), "dr_R-50-FPN_1x_negonly.yaml", "DR", 37.0),
            (("DR",), None, "DR", 37.4),
        ],
    },
    # The published numbers (37.4 at R-50 1x) came from the released code's per-GPU batch.
    "grouping": {
        "header": ("MODEL.DR_LOSS.GROUPING",),
        "rows": [(("image",), None, "DR", None), (("batch",), None, "DR", 37.4)],
    },
}


@dataclass
class Settings:
    """What the user asked for (the flags of tools/compare_losses.py, same names)."""

    config_file: str
    output_dir: str
    dataset: str | None = None
    test_dataset: str | None = None
    losses: Sequence[str] = ("DR", "FOCAL")
    max_iter: int | None = None
    num_gpus: int = 0
    gpus_per_run: int | None = None
    seeds: int = 1
    ablation: str | None = None
    score_images: int = 50
    keep_explicit: bool = False
    opts: list[str] = field(default_factory=list)

    def run_gpus(self) -> int:
        """GPUs per run: --gpus-per-run, else all of --num-gpus (one run at a time)."""
        return self.gpus_per_run or self.num_gpus

    def parallel_runs(self) -> int:
        """How many runs train at once: the GPUs that --num-gpus lends, split into groups of
        `run_gpus()`; 1 on the config's device."""
        return max(1, self.num_gpus // self.run_gpus()) if self.num_gpus else 1


@dataclass
class Comparison:
    """A planned comparison: the settings, the datasets, the iterations per run, the runs and
    the full overrides of each (`run_opts`, by run name: shared ones, the run's own, then the
    user's)."""

    settings: Settings
    train_name: str
    test_name: str
    max_iter: int
    runs: list[Run]
    run_opts: dict[str, list[str]]

    def run_dir(self, run: Run) -> str:
        return os.path.join(self.settings.output_dir, run.name)

    def record(self) -> dict[str, Any]:
        """What identifies the comparison in OUTPUT/comparison.json (a resume must match it)."""
        s = self.settings
        return {"config": s.config_file, "runs": self.run_opts, "num_gpus": s.run_gpus()}


def check_dataset(name: str) -> int:
    """Number of categories of dataset ``name``; a clear error if it is unknown or absent."""
    from drdet.data.catalog import get_dataset

    try:
        dataset = get_dataset(name, transforms=None, is_train=False)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise CompareError(f"dataset {name!r}: {err}") from None
    return int(dataset.num_classes)


def scaled_schedule(cfg, max_iter: int) -> list[str]:
    """SOLVER overrides that run the config's schedule in ``max_iter`` iterations."""
    factor = max_iter / cfg.SOLVER.MAX_ITER
    steps = tuple(sorted({max(1, min(max_iter, round(s * factor))) for s in cfg.SOLVER.STEPS}))
    return [
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.STEPS",
        repr(steps),
        "SOLVER.WARMUP_ITERS",
        str(max(0, min(max_iter - 1, round(cfg.SOLVER.WARMUP_ITERS * factor)))),
        "SOLVER.CHECKPOINT_PERIOD",
        str(max(1, max_iter // 3)),
    ]


def loss_key_of(config_file: str, opts: Sequence[str]) -> str:
    """The loss key of the config's meta-architecture; a clear error when it has none."""
    cfg = get_cfg()
    try:
        cfg.merge_from_file_and_list(config_file, list(opts))
    except (KeyError, ValueError) as err:
        raise CompareError(f"{config_file} with the overrides {list(opts)}: {err}") from None
    meta = cfg.MODEL.META_ARCHITECTURE
    key = loss_key(meta)
    if key is None:
        raise CompareError(
            f"{config_file}: meta-architecture {meta!r} declares no loss key "
            "(drdet.config.register_detector_losses), so the tool cannot switch its "
            "classification loss"
        )
    return str(key)


def check_switchable(
    config_file: str,
    opts: Sequence[str],
    loss_key: str,
    losses: Sequence[str],
    keep_explicit: bool,
    seeds: int = 1,
) -> None:
    """Refuses what would make the runs differ in more than the loss and its setup."""
    from drdet.modeling.registry import CLASSIFICATION_LOSSES

    for loss in losses:
        if loss not in CLASSIFICATION_LOSSES:
            names = ", ".join(CLASSIFICATION_LOSSES.names())
            raise CompareError(f"unknown loss {loss!r}; registered: {names}")
    for key in (loss_key, SEED_KEY) if seeds > 1 else (loss_key,):
        if key in list(opts)[0::2]:
            raise CompareError(f"the overrides set {key}: the tool sets it for each run; remove it")
    meta = load_config(config_file, opts).MODEL.META_ARCHITECTURE
    fixed = sorted(set(flat_keys(load_yaml_with_base(config_file))) & set(setup_keys(meta)))
    fixed += sorted(set(list(opts)[0::2]) & set(setup_keys(meta)))
    if fixed and not keep_explicit:
        raise CompareError(
            f"{config_file} (or the overrides) fixes {', '.join(fixed)}, which each loss sets "
            f"to its own value; remove them, or pass --keep-explicit to use them for both"
        )


def with_seeds(runs: list[Run], seeds: int) -> list[Run]:
    """Each run trained with DATALOADER.SEED 0, 1, ..., `seeds` - 1 (data order and
    initialisation), named <run>_seed<k> and labelled "<label> seed <k>", in the group of the
    run's label (whose spread the report shows); the runs themselves when `seeds` is 1 (the
    config's seed)."""
    if seeds == 1:
        return runs
    return [
        replace(
            run,
            name=f"{run.name}_seed{seed}",
            label=f"{run.label} seed {seed}",
            group=run.group,
            seed=seed,
        )
        for run in runs
        for seed in range(seeds)
    ]


def plan_runs(
    loss_key: str,
    configs_dir: str,
    losses: Sequence[str] = ("DR", "FOCAL"),
    ablation=None,
    seeds: int = 1,
) -> list[Run]:
    """The runs of a comparison of `losses`, or of the paper's table `ablation` (its yamls read
    from `configs_dir`/ablations/, their keys that differ from `configs_dir`/Base-DR-Retina.yaml
    applied to each run), each `seeds` times (:func:`with_seeds`)."""
    if not ablation:
        runs = [Run(loss.lower(), loss, loss, [loss_key, loss]) for loss in losses]
        return with_seeds(runs, seeds)
    table = ABLATIONS[ablation]
    base = flat_keys(load_yaml_with_base(os.path.join(configs_dir, "Base-DR-Retina.yaml")))
    runs = []
    for k, (labels, yaml_name, loss, paper_ap) in enumerate(table["rows"]):
        opts = [loss_key, loss]
        if yaml_name:
            own = load_yaml_with_base(os.path.join(configs_dir, "ablations", yaml_name))
            opts += [
                item
                for key, value in flat_keys(own).items()
                if base.get(key) != value
                for item in (key, str(value))
            ]
        if ablation == "grouping":
            opts += ["MODEL.DR_LOSS.GROUPING", labels[0]]
        name = safe_folder_name(f"{k}_{'_'.join(labels)}")
        columns = dict(zip(table["header"], labels))
        runs.append(Run(name, " / ".join(labels), loss, opts, paper_ap, columns))
    return with_seeds(runs, seeds)


def _datasets(settings: Settings, base) -> tuple[str, str]:
    """(training set, evaluation set): the flags', else the config's DATASETS.TRAIN[0] and
    DATASETS.TEST[0] (the training set when only --dataset is given)."""
    train_name = settings.dataset or (base.DATASETS.TRAIN[0] if base.DATASETS.TRAIN else None)
    test_name = settings.test_dataset or (
        base.DATASETS.TEST[0] if base.DATASETS.TEST and not settings.dataset else train_name
    )
    if not train_name or not test_name:
        raise CompareError(
            f"{settings.config_file} names no dataset: pass --dataset (and --test-dataset)"
        )
    if test_name == train_name:
        print(f"warning: evaluating on the training set {train_name} (pass --test-dataset)")
    return train_name, test_name


def _common_opts(settings: Settings, base, train_name: str, test_name: str) -> list[str]:
    """The overrides every run shares: the datasets, the class count, the scaled schedule and
    the device."""
    num_classes = check_dataset(train_name)
    check_dataset(test_name)
    common = [
        "DATASETS.TRAIN",
        repr((train_name,)),
        "DATASETS.TEST",
        repr((test_name,)),
        "MODEL.NUM_CLASSES",
        str(num_classes + 1),
    ]
    if settings.max_iter:
        common += scaled_schedule(base, settings.max_iter)
    if settings.num_gpus:
        common += ["MODEL.DEVICE", "cuda"]
    return common


def plan_comparison(settings: Settings, configs_dir: str) -> Comparison:
    """Checks the settings (nothing is written) and plans the runs; every run's config is
    loaded once, so that a bad one fails before anything trains. `configs_dir`: the folder of
    the shipped configs (for the ablations' yamls)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CompareError(
            "run this tool without torchrun and pass --num-gpus N: it launches each run "
            "through torchrun itself"
        )
    config_file, opts = settings.config_file, list(settings.opts)
    if not os.path.isfile(config_file):
        raise CompareError(f"config file not found: {config_file}")
    key = loss_key_of(config_file, opts)
    losses = settings.losses if not settings.ablation else ["DR", "FOCAL"]
    if settings.seeds < 1:
        raise CompareError(f"--seeds must be >= 1, got {settings.seeds}")
    check_switchable(config_file, opts, key, losses, settings.keep_explicit, settings.seeds)
    base = load_config(config_file, opts)
    train_name, test_name = _datasets(settings, base)
    common = _common_opts(settings, base, train_name, test_name)
    runs = plan_runs(key, configs_dir, settings.losses, settings.ablation, settings.seeds)
    run_opts = {r.name: common + r.overrides() + opts for r in runs}
    for run in runs:
        load_config(config_file, run_opts[run.name])
    max_iter = settings.max_iter or base.SOLVER.MAX_ITER
    return Comparison(settings, train_name, test_name, max_iter, runs, run_opts)
