"""Launching and resuming the runs of a comparison, one process (or torchrun group) per run.

A run is trained by the command its caller builds (`TrainCommand`: the run's overrides and
whether to resume -> argv; tools/compare_losses.py runs tools/train_net.py), with this process's
drdet first on PYTHONPATH, so that every run trains with the code that planned it. A finished
run (final model and metrics) is skipped; one with a checkpoint is resumed.

With --num-gpus N and --gpus-per-run K, N // K runs train at once, each on its own K GPUs
(CUDA_VISIBLE_DEVICES: a slice of this process's visible GPUs); a failed run does not stop the
others, and the error names every run that failed.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from drdet.engine.compare.plan import CompareError, Comparison, Run
from drdet.engine.defaults import safe_folder_name

TrainCommand = Callable[[list[str], bool], list[str]]


class Progress:
    """Prints the overall stage, and each run's iteration and ETA from its log lines."""

    ETA = re.compile(r"eta: (\S+)\s+iter: (\d+)")

    def __init__(self, total: int) -> None:
        self.total = total
        self.stage = 0
        self._lock = threading.Lock()  # runs may train side by side

    def start(self, what: str) -> None:
        with self._lock:
            self.stage += 1
            print(f"[stage {self.stage}/{self.total}] {what}", flush=True)

    def line(self, label: str, text: str, max_iter: int) -> None:
        match = self.ETA.search(text)
        if match:
            print(
                f"  [{self.stage}/{self.total} {label}] iteration {match.group(2)}/{max_iter}, "
                f"ETA {match.group(1)}",
                flush=True,
            )


def torchrun_command(script_argv: Sequence[str], num_gpus: int) -> list[str]:
    """[python, *script_argv], through torchrun (one machine) when `num_gpus` > 1."""
    launcher = [sys.executable]
    if num_gpus > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_gpus}"]
    return launcher + list(script_argv)


def result_file(run_dir: str, test_name: str) -> str:
    return os.path.join(run_dir, "inference", safe_folder_name(test_name), "metrics.json")


def check_same_comparison(output_dir: str, settings: dict[str, Any]) -> None:
    """A folder resumes only the comparison it was started with."""
    path = os.path.join(output_dir, "comparison.json")
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        if before != settings:
            raise CompareError(
                f"{output_dir} holds a comparison with other settings ({path}): pass another "
                f"--output-dir or delete it"
            )
    else:
        os.makedirs(output_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(settings, f, indent=1)


def child_env(gpus: Sequence[str] | None = None) -> dict[str, str]:
    """This process's environment, unbuffered, with the folder of its drdet package first on
    PYTHONPATH; `gpus`: the GPU ids the child sees (CUDA_VISIBLE_DEVICES), None: this
    process's."""
    package = sys.modules[__name__.partition(".")[0]]  # drdet, as this process imported it
    root = os.path.dirname(os.path.dirname(os.path.abspath(str(package.__file__))))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def gpu_slots(num_gpus: int, per_run: int) -> list[list[str] | None]:
    """The GPU ids of each run slot: `num_gpus` // `per_run` disjoint slices of the GPUs this
    process sees (CUDA_VISIBLE_DEVICES, else 0..num_gpus-1); [None] (one slot, the config's
    device) when `num_gpus` is 0."""
    if num_gpus == 0:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [i.strip() for i in visible.split(",") if i.strip()] if visible else []
    ids = ids or [str(i) for i in range(num_gpus)]
    if len(ids) < num_gpus:
        raise CompareError(
            f"--num-gpus {num_gpus}, but CUDA_VISIBLE_DEVICES={visible} names {len(ids)} GPUs"
        )
    return [ids[k * per_run : (k + 1) * per_run] for k in range(num_gpus // per_run)]


def _launch(
    command: list[str], log_path: str, echo: Callable[[str], None], gpus: list[str] | None
) -> int:
    """Runs `command` on `gpus` (None: as this process), appending its output to `log_path` and
    passing each line to `echo`; returns its exit status."""
    with (
        open(log_path, "a") as log,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=os.getcwd(),
            env=child_env(gpus),
        ) as child,
    ):
        assert child.stdout is not None
        for text in child.stdout:
            log.write(text)
            log.flush()
            echo(text)
    return child.returncode


def train_run(
    comparison: Comparison,
    run: Run,
    command: TrainCommand,
    progress: Progress,
    gpus: list[str] | None = None,
) -> dict[str, float]:
    """Trains and evaluates one run on `gpus` (skipped when finished, resumed when
    half-finished); returns its metrics on the test set."""
    run_dir = comparison.run_dir(run)
    done = result_file(run_dir, comparison.test_name)
    if os.path.isfile(done) and os.path.isfile(os.path.join(run_dir, "model_final.pth")):
        progress.start(f"{run.label}: finished earlier, skipped ({run_dir})")
        with open(done) as f:
            return json.load(f)
    resume = os.path.isfile(os.path.join(run_dir, "last_checkpoint"))
    where = f" on GPUs {','.join(gpus)}" if gpus else ""
    progress.start(f"{run.label}: {'resuming' if resume else 'training'} in {run_dir}{where}")
    os.makedirs(run_dir, exist_ok=True)
    argv = command(comparison.run_opts[run.name] + ["OUTPUT_DIR", run_dir], resume)
    log_path = os.path.join(run_dir, "compare_stdout.log")
    echo = functools.partial(progress.line, run.label, max_iter=comparison.max_iter)
    status = _launch(argv, log_path, echo, gpus)
    if status != 0 or not os.path.isfile(done):
        with open(log_path) as f:
            tail = "".join(f.readlines()[-15:])
        raise CompareError(
            f"the {run.label} run failed (exit {status}); its log {log_path} ends:\n"
            f"{tail}\nrun the same command again to resume it"
        )
    with open(done) as f:
        return json.load(f)


def train_runs(
    comparison: Comparison, command: TrainCommand, progress: Progress
) -> dict[str, dict[str, float]]:
    """Trains every run, as many at once as the GPU slots allow (after checking that the
    output folder holds this comparison or none); returns {run name: metrics}. Raises
    CompareError naming every failed run once the others have finished."""
    settings = comparison.settings
    check_same_comparison(settings.output_dir, comparison.record())
    slots: queue.Queue[list[str] | None] = queue.Queue()
    for slot in gpu_slots(settings.num_gpus, settings.run_gpus()):
        slots.put(slot)

    def on_a_free_slot(run: Run) -> dict[str, float]:
        gpus = slots.get()
        try:
            return train_run(comparison, run, command, progress, gpus)
        finally:
            slots.put(gpus)

    with ThreadPoolExecutor(max_workers=slots.qsize()) as pool:
        futures = {run.name: pool.submit(on_a_free_slot, run) for run in comparison.runs}
    failed = [e for e in (f.exception() for f in futures.values()) if e is not None]
    for error in failed:
        if not isinstance(error, CompareError):
            raise error  # a bug, not a run that failed
    if failed:
        raise CompareError("\n\n".join(str(e) for e in failed))
    return {name: future.result() for name, future in futures.items()}
