"""Equivalence with the authors' release: same weights, same inputs, compare outputs.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/release_equivalence.py --release-path wheels/SaMam

For patch size 8 and 4 the release (a local copy of github.com/Chernobyllight/SaMam, its
pure-torch scan) is built with random weights, every 1-D parameter but PReLU's perturbed by
0.05·N(0,1) and every weight matrix or kernel scaled by --gain (1.5: at PyTorch's default
init the style changes the output by only ~3e-5 of its range, too little to show that the
style path agrees; at 1.5 it changes it by ~7 %). Its state_dict() is saved as a
Lightning-style .ckpt (plus a loss-network entry the loader must drop) and loaded with
samam.load_official_checkpoint once per scan backend. Both stylise the same random contents
(72×104, whole patches; 77×109, where the release drops the partial patches and ours is given
the content cropped as stylize.py match_release=true does) with two 256² styles (uniform noise, a smooth colour ramp), batch 1, fp32, CPU, one
thread. Reported: the output's error, and the error of the style's effect (output for style
1 minus output for style 2). Also checks zigzag_orders and their inverses against the
release's get_permute_order.
Record: experiments/release_equivalence.md. Exits 1 if a relative error exceeds --tol or an order differs.

The release is imported from --release-path at run time only; none of its code is in this repo.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from benchmark import git_commit, release_series  # experiments/ is sys.path[0]
from torch import nn

import samam
from samam.evaluation import drop_partial_patches
from samam.ops.scan_orders import scan_indices, zigzag_orders
from samam.ops.selective_scan import numba_available

REPO = Path(__file__).resolve().parents[1]
GRIDS = ((1, 1), (1, 5), (4, 4), (3, 2), (5, 7), (8, 6), (2, 9))
CONTENTS, STYLE = ((72, 104), (77, 109)), (256, 256)  # H, W; 77×109: partial patches for p = 8 and 4


def release_commit(path: Path) -> str:
    """Short HEAD of `path` if it is the top of its own git checkout, else "unknown"."""
    try:
        git = ["git", "-C", str(path), "rev-parse"]
        top = subprocess.run([*git, "--show-toplevel"], capture_output=True, text=True, check=True)
        if Path(top.stdout.strip()).resolve() != path.resolve():
            return "unknown"  # a plain copy inside some other repository
        return subprocess.run(
            [*git, "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def perturbed_release(path: Path, patch_size: int, seed: int, gain: float) -> nn.Module:
    """The release, pure-torch scan, random weights: 1-D parameters (PReLU's excepted)
    + 0.05·N(0,1), every ≥ 2-D weight × gain."""
    torch.manual_seed(seed)
    net = release_series(path, {"patch_size": patch_size}, "torch", torch.device("cpu")).build()
    prelu = {id(m.weight) for m in net.modules() if isinstance(m, nn.PReLU)}
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 1 and id(p) not in prelu:
                p.add_(0.05 * torch.randn_like(p))
            elif p.dim() > 1:
                p.mul_(gain)
    return net


def styles(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform noise and a smooth colour ramp, (1, 3, 256, 256) each."""
    y, x = torch.meshgrid(torch.linspace(0, 1, STYLE[0]), torch.linspace(0, 1, STYLE[1]), indexing="ij")
    return torch.rand(1, 3, *STYLE, generator=g), torch.stack([y, x, x * y])[None]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def compare(
    path: Path, patch_size: int, backends: list[str], seed: int, gain: float, tmp: Path
) -> list[dict[str, Any]]:
    """Rows of max|ours − release| / max|release| for one patch size, one per content and backend."""
    release = perturbed_release(path, patch_size, seed, gain)
    ckpt = tmp / f"release_p{patch_size}.ckpt"
    sd = {f"model.{k}": v for k, v in release.state_dict().items()}
    sd["loss_func.enc_1.0.weight"] = torch.randn(64, 3, 3, 3)  # frozen VGG in real files: must be dropped
    torch.save({"state_dict": sd}, ckpt)

    g = torch.Generator().manual_seed(seed + 1)
    contents = [torch.rand(1, 3, *CONTENTS[0], generator=g)]
    s1, s2 = styles(g)
    contents += [torch.rand(1, 3, *size, generator=g) for size in CONTENTS[1:]]
    rows = []
    for content in contents:
        rows += compare_content(release, ckpt, patch_size, backends, content, s1, s2)
    return rows


def compare_content(
    release: nn.Module,
    ckpt: Path,
    patch_size: int,
    backends: list[str],
    content: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
) -> list[dict[str, Any]]:
    cropped = drop_partial_patches(content, patch_size)
    size = f"{content.shape[-2]}×{content.shape[-1]}"
    if cropped.shape != content.shape:
        size += f" (ours: cropped to {cropped.shape[-2]}×{cropped.shape[-1]})"
    with torch.inference_mode():
        t0 = time.perf_counter()
        ref = release(content, s1)
        release_s = time.perf_counter() - t0
        ref_effect = ref - release(content, s2)  # what the style changes
        rows = []
        for backend in backends:
            ours = samam.load_official_checkpoint(ckpt, backend=backend)
            t0 = time.perf_counter()
            out = ours(cropped, s1)
            ours_s = time.perf_counter() - t0
            assert out.shape == ref.shape, (out.shape, ref.shape)
            row = dict(
                patch_size=patch_size, content=size, backend=backend, rel_error=rel(out, ref),
                style_effect=(ref_effect.abs().max() / ref.abs().max()).item(),
                style_effect_error=rel(out - ours(cropped, s2), ref_effect),
                release_s=round(release_s, 2), ours_s=round(ours_s, 2),
            )  # fmt: skip
            rows.append(row)
            print(
                f"p={patch_size} {size} {backend}: output {row['rel_error']:.1e}, style effect "
                f"{row['style_effect']:.1e} of the range, its error {row['style_effect_error']:.1e} "
                f"(release {release_s:.1f} s, ours {ours_s:.1f} s)"
            )
    return rows


def check_zigzag(path: Path) -> list[str]:
    """Grids whose zigzag orders or inverses differ from the release's get_permute_order."""
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    from ARCHI.archi_utils import get_permute_order

    bad = []
    for h, w in GRIDS:
        orders, inverses, _ = get_permute_order(h, w)  # 4 tuples each, slot k = our row k
        _, inverse = scan_indices("zigzag", h, w)  # what the network gathers with
        if not (
            torch.equal(zigzag_orders(h, w), torch.tensor(orders))
            and torch.equal(inverse, torch.tensor(inverses))
        ):
            bad.append(f"{h}x{w}")
    return bad


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| patch size | content | our backend | output: relative error | style effect (share of range) "
        "| style effect: relative error |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['patch_size']} | {r['content']} | {r['backend']} | {r['rel_error']:.1e} | {r['style_effect']:.1e} "
        f"| {r['style_effect_error']:.1e} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--release-path", type=Path, required=True, help="local copy of github.com/Chernobyllight/SaMam"
    )
    p.add_argument("--out", type=Path, help="default experiments/results/<today>-release-equivalence")
    p.add_argument("--tol", type=float, default=1e-4, help="max relative error (issue 2 acceptance: 1e-4)")
    p.add_argument("--patch-sizes", type=int, nargs="+", default=[8, 4], choices=[8, 4])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--effect-tol", type=float, default=1e-3,
        help="max relative error of the style's effect: the output's round-off over a difference "
        "~10× smaller than the output, so ~10× looser; a broken style path is off by O(1)",
    )  # fmt: skip
    p.add_argument("--gain", type=float, default=1.5, help="scale of every ≥ 2-D release weight (see above)")
    args = p.parse_args()
    path = args.release_path.expanduser().resolve()
    today = datetime.date.today().isoformat()
    out = args.out or REPO / "experiments" / "results" / f"{today}-release-equivalence"
    torch.set_num_threads(1)
    backends = ["torch", "numba"] if numba_available() else ["torch"]

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            r for ps in args.patch_sizes for r in compare(path, ps, backends, args.seed, args.gain, Path(tmp))
        ]
    bad_grids = check_zigzag(path)
    elapsed = time.perf_counter() - start

    table = markdown(rows)
    zigzag = (
        f"zigzag orders and inverses vs get_permute_order, grids {', '.join(f'{h}x{w}' for h, w in GRIDS)}: "
    )
    zigzag += f"DIFFER for {', '.join(bad_grids)}" if bad_grids else "identical"
    print(f"\n{table}\n\n{zigzag}\nelapsed {elapsed:.0f} s")

    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"), torch=torch.__version__,
        commit=git_commit(), release_path=str(path), release_commit=release_commit(path),
        command=" ".join(sys.argv), threads=torch.get_num_threads(), seed=args.seed, gain=args.gain, tol=args.tol, effect_tol=args.effect_tol,
        contents=[list(c) for c in CONTENTS], style=list(STYLE), elapsed_s=round(elapsed, 1), rows=rows,
        zigzag_grids=[f"{h}x{w}" for h, w in GRIDS], zigzag_mismatches=bad_grids,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(meta, indent=2) + "\n")
    head = f"# Release equivalence, {meta['date']}\n\ncommit {meta['commit']}, torch {meta['torch']}, "
    head += (
        f"release {meta['release_path']} ({meta['release_commit']}), CPU fp32, 1 thread, {elapsed:.0f} s\n\n"
    )
    head += (
        f"max |ours − release| / max |release|, styles {STYLE[0]}², batch 1, "
        f"weights × {args.gain:g}; style effect = output(noise style) − output(colour ramp):\n\n"
    )
    (out / "results.md").write_text(f"{head}{table}\n\n{zigzag}\n")
    print(f"wrote {out}")

    failed = [  # NaN fails too
        r for r in rows if not (r["rel_error"] <= args.tol and r["style_effect_error"] <= args.effect_tol)
    ]
    if failed or bad_grids:
        sys.exit(
            f"FAILED: {len(failed)} rows above --tol {args.tol:g} / --effect-tol {args.effect_tol:g}; zigzag mismatches: {bad_grids or 'none'}"
        )


if __name__ == "__main__":
    main()
