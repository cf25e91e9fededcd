"""Speed and peak memory of drdet's ops against pure-PyTorch implementations.

    python tools/benchmark_ops.py [--quick] [--threads 2] [--device cpu|cuda|all]

DR loss: forward + backward at 2 images x {100k, 200k} anchors x 80 classes (one group per
image), drdet's fused op against a pure-PyTorch implementation written the way the authors'
released code computes it (boolean masks, gathers, softmax; one loss per image, averaged).
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from drdet.layers import dr_loss

NEG_LAMBDA = 0.1 / math.log(3.5)


def masked_dr_loss(logits, labels, group_ids, num_groups, pos_lambda=1.0, neg_lambda=NEG_LAMBDA,
                   L=6.0, margin=0.5, tau=4.0):
    """The DR loss computed like the released code: (N, C) masks, gathers and a softmax."""
    classes = torch.arange(1, logits.shape[1] + 1, device=logits.device)
    losses = []
    for g in range(num_groups):
        rows = group_ids == g
        x, t = logits[rows], labels[rows].unsqueeze(1)
        pos_prob = x[t == classes].sigmoid()
        neg_prob = x[(t != classes) & (t >= 0)].sigmoid()
        neg_dist = (F.softmax(neg_prob / neg_lambda, dim=0) * neg_prob).sum()
        if pos_prob.numel() > 0:
            pos_dist = (F.softmax(-pos_prob / pos_lambda, dim=0) * pos_prob).sum()
        else:
            pos_dist = 1.0
        losses.append(tau * F.softplus(L * (neg_dist - pos_dist + margin)) / L)
    return torch.stack(losses).mean()


def _fused(logits, labels, group_ids, num_groups):
    return dr_loss(logits, labels, group_ids, num_groups=num_groups)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time_fwd_bwd(fn, logits, labels, gids, groups, device, reps):
    """Median seconds of forward + backward (after one warm-up run), then, in a separate run,
    the peak memory in bytes allocated above the inputs (gradient included)."""
    times = []
    for i in range(reps + 1):
        x = logits.detach().requires_grad_(True)
        _sync(device)
        t0 = time.perf_counter()
        fn(x, labels, gids, groups).backward()
        _sync(device)
        if i > 0:
            times.append(time.perf_counter() - t0)
        del x
    times.sort()
    x = logits.detach().requires_grad_(True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(x, labels, gids, groups).backward()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        _cpu_peak_start()
        fn(x, labels, gids, groups).backward()
        peak = _cpu_peak_stop()
    return times[len(times) // 2], peak


# CPU peak memory: torch's CPU allocator keeps no statistics, so we replay the profiler's
# record of tensor allocations and frees.
_cpu_prof = None


def _cpu_peak_start():
    global _cpu_prof
    _cpu_prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                       profile_memory=True)
    _cpu_prof.__enter__()


def _cpu_peak_stop():
    _cpu_prof.__exit__(None, None, None)
    events = sorted((e.time_range.start, e.cpu_memory_usage) for e in _cpu_prof.events()
                    if e.cpu_memory_usage != 0 and not e.cpu_children)
    cur = peak = 0
    for _, delta in events:
        cur += delta
        peak = max(peak, cur)
    return peak


def bench_dr_loss(device, args):
    """Prints the DR loss table for one device."""
    reps = 1 if args.quick else args.reps
    print(f"\nDR loss forward+backward on {device} "
          f"({torch.get_num_threads()} threads)" if device == "cpu" else
          f"\nDR loss forward+backward on {torch.cuda.get_device_name()}")
    print(f"{'images x anchors x classes':>28} {'impl':>8} {'time ms':>9} {'peak MiB':>9} "
          f"{'speed-up':>9}")
    sizes = [(2, 100_000, 80)] if args.quick and device == "cpu" else [(2, 100_000, 80),
                                                                         (2, 200_000, 80)]
    gen = torch.Generator().manual_seed(0)
    for images, anchors, classes in sizes:
        n = images * anchors
        logits = torch.randn(n, classes, generator=gen).to(device)
        labels = torch.zeros(n, dtype=torch.long)
        labels[torch.rand(n, generator=gen) < 0.01] = -1
        fg = torch.rand(n, generator=gen) < 0.01
        labels[fg] = torch.randint(1, classes + 1, (int(fg.sum()),), generator=gen)
        labels = labels.to(device)
        gids = torch.arange(images).repeat_interleave(anchors).to(device)
        t_ref, m_ref = _time_fwd_bwd(masked_dr_loss, logits, labels, gids, images, device, reps)
        t_drd, m_drd = _time_fwd_bwd(_fused, logits, labels, gids, images, device, reps)
        shape = f"{images} x {anchors // 1000}k x {classes}"
        mib = 1 / 2**20
        print(f"{shape:>28} {'masked':>8} {t_ref * 1e3:9.1f} {m_ref * mib:9.1f}")
        print(f"{shape:>28} {'drdet':>8} {t_drd * 1e3:9.1f} {m_drd * mib:9.1f} "
              f"{t_ref / t_drd:8.1f}x")
        print(f"{'':>28} (logits: {logits.numel() * logits.element_size() * mib:.1f} MiB; "
              f"the gradient is one more)")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timed run, smallest CPU size")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("\nno CUDA GPU visible: skipping the CUDA benchmarks")
            continue
        bench_dr_loss(device, args)


if __name__ == "__main__":
    main()
