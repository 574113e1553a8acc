"""Interleaved A/B timing of two source trees of samam on CPU, one thread.

Example (the records in experiments/performance.md, "CPU A/B"):
    mkdir -p /tmp/base && git archive <base> src | tar -x -C /tmp/base
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python experiments/ab_cpu.py \\
        --old /tmp/base/src --new src --workload train64 --rounds 7 --repeats 3

Each round runs both trees, each in a fresh process with PYTHONPATH set to it, in alternating
order (old first in even rounds), so load from other processes on a shared box falls on both
sides alike. A process builds the workload, runs one untimed call (numba compiles or loads its
cache there) and then --repeats timed calls, and prints their median wall and process-CPU
seconds. On a loaded box the CPU time of a one-thread process is the steadier figure.

Workloads: ``inf<n>``: the released network (random weights), batch 1, content n², style 256²,
under torch.no_grad; ``train<n>``: a training step of the ``tiny`` network, batch 8 on n² crops
(one forward of 3B, VGG-19 loss with random weights, backward; no optimiser step).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

TINY_PRESET = Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny.yaml"


def run_workload(workload: str, repeats: int) -> None:
    import torch

    from samam.nn.samam import SaMam

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if workload.startswith("inf"):
        size = int(workload[3:])
        net = SaMam().eval()
        c, s = torch.rand(1, 3, size, size), torch.rand(1, 3, 256, 256)

        def step() -> None:
            with torch.no_grad():
                net(c, s)

    else:
        from samam.losses import StyleTransferLoss

        size, b = int(workload[5:]), 8
        logging.getLogger("samam.losses").setLevel(logging.ERROR)  # the random-weights warning
        # conf/model/tiny.yaml's own settings (as tests/tiny.py reads them): a base tree's SaMam
        # may not know every key the full preset lists
        tiny = {k: v for k, v in yaml.safe_load(TINY_PRESET.read_text()).items() if k != "defaults"}
        net = SaMam(**tiny)
        loss = StyleTransferLoss(vgg="random")
        c, s = torch.rand(b, 3, size, size), torch.rand(b, 3, size, size)

        def step() -> None:
            net.zero_grad(set_to_none=True)
            ics, icc, iss = net(torch.cat([c, c, s]), torch.cat([s, c, s])).split(b)
            loss(ics, icc, iss, c, s)["loss"].backward()

    step()
    wall, cpu = [], []
    for _ in range(repeats):
        t, p = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - p)
    print(statistics.median(wall), statistics.median(cpu))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", help="the baseline's src folder")
    p.add_argument("--new", help="the candidate's src folder")
    p.add_argument("--workload", required=True, help="inf<n> or train<n>, e.g. inf256, train64")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    p.add_argument("--run", action="store_true", help=argparse.SUPPRESS)  # a child process
    args = p.parse_args()
    if args.run:
        return run_workload(args.workload, args.repeats)
    if not (args.old and args.new):
        p.error("--old and --new are required")
    for side in ("old", "new"):
        # A folder without the package would time the venv's installed samam instead, silently.
        src = os.path.abspath(getattr(args, side))
        if not os.path.isfile(os.path.join(src, "samam", "__init__.py")):
            p.error(f"--{side} {src}: no samam/__init__.py there; give the tree's src folder")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    times: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    for r in range(args.rounds):
        sides = ("old", "new") if r % 2 == 0 else ("new", "old")
        for side in sides:
            cmd = [
                sys.executable,
                __file__,
                "--run",
                "--workload",
                args.workload,
                "--repeats",
                str(args.repeats),
            ]
            src = os.path.abspath(getattr(args, side))
            out = subprocess.run(cmd, env={**env, "PYTHONPATH": src}, capture_output=True, text=True)
            if out.returncode != 0:  # its traceback, else only "non-zero exit status 1"
                sys.exit(f"round {r} {side} ({src}) failed:\n{out.stderr[-3000:]}")
            wall, cpu = map(float, out.stdout.split()[-2:])
            times[side].append((wall, cpu))
            print(f"round {r} {side}: wall {wall:.3f} s, cpu {cpu:.3f} s", flush=True)
    for i, kind in enumerate(("wall", "cpu")):
        old = [t[i] for t in times["old"]]
        new = [t[i] for t in times["new"]]
        ratios = [o / n for o, n in zip(old, new, strict=True)]
        print(
            f"{args.workload} {kind}: old median {statistics.median(old):.3f} s (min {min(old):.3f}), "
            f"new median {statistics.median(new):.3f} s (min {min(new):.3f}); old/new per round: "
            f"median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}; "
            f"of the minima {min(old) / min(new):.3f}"
        )


if __name__ == "__main__":
    main()
