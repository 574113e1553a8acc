"""Time the selective-scan backends, forward and backward, at SaMam's scan sizes.

Example (the record in experiments/scan_kernels.md):
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=2 .venv/bin/python experiments/bench_scan.py \\
        --tokens 1024 4096 --threads 1 2 --repeats 5 --csv /tmp/scan.csv

Inputs are random with the shapes of one SaMam scan: batch 1, K groups of D channels,
N states, L tokens; Δ comes from softplus(delta + bias) inside the call, like the model.
Prints a markdown table of min and median seconds over --repeats (after one warm-up call
that also pays numba's compile or cache load).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time

import torch

from samam.ops.selective_scan import (
    BACKENDS,
    mamba_available,
    numba_available,
    selective_scan_numba,
    selective_scan_torch,
)

FUNCTIONS = {"torch": selective_scan_torch, "numba": selective_scan_numba}
RUNS_ON = {"numba": "cpu", "mamba": "cuda"}  # device type of each kernel; torch runs anywhere


def make_inputs(channels: int, groups: int, state: int, tokens: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    kd = channels
    u = torch.randn(1, kd, tokens, generator=g)
    delta = torch.randn(1, kd, tokens, generator=g) * 0.5 - 2.0
    A = -torch.exp(torch.randn(1, kd, state, generator=g) * 0.5)  # per-sample A, as in S7
    B = torch.randn(1, groups, state, tokens, generator=g)
    C = torch.randn(1, groups, state, tokens, generator=g)
    D = torch.randn(1, kd, generator=g)
    bias = torch.randn(kd, generator=g) * 0.3
    return [t.to(device).requires_grad_() for t in (u, delta, A, B, C, D, bias)]


def time_backend(fn, inputs: list[torch.Tensor], repeats: int, sync) -> dict[str, list[float]]:
    """Wall and process-CPU seconds of forward and backward. On a shared box the CPU time
    of a 1-thread run is the steadier figure: it leaves out time spent waiting for a core."""
    out: dict[str, list[float]] = {"fwd": [], "bwd": [], "fwd_cpu": [], "bwd_cpu": []}
    for i in range(repeats + 1):
        for t in inputs:
            t.grad = None
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        y = fn(*inputs[:6], delta_bias=inputs[6])
        sync()
        t1, c1 = time.perf_counter(), time.process_time()
        y.backward(torch.ones_like(y))
        sync()
        t2, c2 = time.perf_counter(), time.process_time()
        if i > 0:  # the first call compiles / loads caches
            for key, value in (
                ("fwd", t1 - t0),
                ("bwd", t2 - t1),
                ("fwd_cpu", c1 - c0),
                ("bwd_cpu", c2 - c1),
            ):
                out[key].append(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tokens", type=int, nargs="+", default=[32 * 32, 64 * 64], help="L values (128²=16384 optional)"
    )
    p.add_argument("--channels", type=int, default=2048, help="K·D channels")
    p.add_argument("--groups", type=int, default=4, help="K groups sharing B, C")
    p.add_argument("--state", type=int, default=16, help="N")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch intra-op (and numba) threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--backends", nargs="+", default=["numba", "torch"], choices=[b for b in BACKENDS if b != "auto"]
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--csv", default=None, help="also write the rows here")
    args = p.parse_args()

    functions = dict(FUNCTIONS)
    if "mamba" in args.backends and mamba_available():
        from samam.ops.selective_scan.mamba_scan import selective_scan_mamba

        functions["mamba"] = selective_scan_mamba
    device_type = torch.device(args.device).type
    cuda = device_type == "cuda"
    if cuda and not torch.cuda.is_available():  # else a traceback from the first input, after the header
        raise SystemExit(f"--device {args.device}: no CUDA device visible")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    load = os.getloadavg()[0]
    print(
        f"# device={args.device} load(1 min)={load:.2f} numba={numba_available()} mamba={mamba_available()}"
    )
    print(f"# channels={args.channels} groups={args.groups} state={args.state} repeats={args.repeats}")
    print(
        "| backend | tokens | threads | fwd min (s) | fwd median (s) | fwd CPU (s) "
        "| bwd min (s) | bwd median (s) | bwd CPU (s) | bwd/fwd (min) | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for tokens in args.tokens:
        inputs = make_inputs(args.channels, args.groups, args.state, tokens, args.device)
        for name in args.backends:
            fn = functions.get(name)
            if fn is None or (name == "numba" and not numba_available()):
                print(f"| {name} | {tokens} | – | unavailable | | | | | | | |")
                continue
            if RUNS_ON.get(name, device_type) != device_type:  # e.g. numba with --device cuda
                print(f"| {name} | {tokens} | – | runs on {RUNS_ON[name]} only | | | | | | | |")
                continue
            for threads in args.threads:
                torch.set_num_threads(threads)
                t = time_backend(fn, inputs, args.repeats, sync)
                row = dict(
                    backend=name,
                    tokens=tokens,
                    threads=threads,
                    fwd_min=min(t["fwd"]),
                    fwd_median=statistics.median(t["fwd"]),
                    fwd_cpu=min(t["fwd_cpu"]),
                    bwd_min=min(t["bwd"]),
                    bwd_median=statistics.median(t["bwd"]),
                    bwd_cpu=min(t["bwd_cpu"]),
                    load=os.getloadavg()[0],
                )
                rows.append(row)
                print(
                    f"| {name} | {tokens} | {threads} | {row['fwd_min']:.3f} | {row['fwd_median']:.3f} "
                    f"| {row['fwd_cpu']:.3f} | {row['bwd_min']:.3f} | {row['bwd_median']:.3f} "
                    f"| {row['bwd_cpu']:.3f} | {row['bwd_min'] / row['fwd_min']:.1f} | {row['load']:.1f} |",
                    flush=True,
                )
    print(f"# load(1 min) at end={os.getloadavg()[0]:.2f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
