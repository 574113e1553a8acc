"""Evaluation: the StyleID protocol behind ``eval.py``, batch stylisation behind
``stylize.py``, and a Lightning callback that logs the protocol's metrics during training.

Images are float (3, H, W) or (B, 3, H, W) in [0, 1]; e denotes a style embedding
(S, 3, 3) from ``net.embed_style``. Outputs are quantised to uint8 once and the metrics see
exactly the pixels written to the PNG files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import statistics
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from PIL import Image
from torch import Tensor, nn

from samam.checkpoint import code_version, folder_given, load_mapped
from samam.data import IMAGE_EXTENSIONS, list_images, load_rgb, to_tensor
from samam.fileio import atomic_write, check_output_dir
from samam.logging_utils import brief_list
from samam.metrics import (
    METRIC_NAMES,
    StyleTransferMetrics,
    build_metrics,
    opt,
    refuse_unknown_settings,
    short_side_size,
    to_uint8,
)
from samam.nn.samam import check_switches

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
PathLike = str | os.PathLike

# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------


def collect_images(
    source: PathLike | Sequence[PathLike], what: str, output_dir: PathLike | None = None
) -> list[Path]:
    """An image file, a folder (recursive, sorted) or a list of either → image paths.

    ``output_dir``: where the run writes. Files found in it through a given folder (it lies
    inside, or a symlink in the folder leads to it) are left out (a rerun must not stylise the
    last run's outputs), as are earlier runs' folders (:func:`samam.data.list_images`); a folder
    that is the output folder itself is refused."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source).expanduser()
        if p.is_dir():
            files = list_images(p, what)
            if output_dir is None:
                return files
            out = Path(output_dir).expanduser().resolve()
            if out == p.resolve():
                raise ValueError(
                    f"output_dir {str(output_dir)!r} is the {what} folder: outputs would be read as "
                    f"{what} images on the next run. Write them to another folder."
                )
            if p.resolve().is_relative_to(out):  # a folder inside the output folder: all is input
                return files
            # Resolved paths: the output folder may be reached through a symlink (photos/out → …).
            kept = [f for f in files if not f.resolve().is_relative_to(out)]
            if len(kept) < len(files):
                log.warning(
                    "%s: leaving out %d image(s) under the output folder %s",
                    what,
                    len(files) - len(kept),
                    out,
                )
            if not kept:
                raise FileNotFoundError(f"no {what} images in {p} outside the output folder {out}")
            return kept
        if p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ValueError(f"{what} {str(p)!r} is not an image file ({'/'.join(IMAGE_EXTENSIONS)})")
            return [p]
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist (absolute: {p.resolve()})")
    files = [f for s in source for f in collect_images(s, what, output_dir)]
    if not files:
        raise FileNotFoundError(f"no {what} images given")
    return files


def check_unique_stems(paths: Sequence[Path], what: str) -> None:
    """Output names use file stems only: two inputs with one stem would write the same file, and
    so would ``Cat.jpg`` and ``cat.png`` on a case-insensitive file system (macOS, Windows, USB
    drives): stems are compared case-folded."""
    seen: dict[str, Path] = {}
    clashes = []
    for p in paths:
        key = unicodedata.normalize("NFC", p.stem).casefold()  # macOS also ignores NFC vs NFD
        if key in seen:
            clashes.append(f"{seen[key]} and {p}")
        seen.setdefault(key, p)
    if clashes:
        raise ValueError(
            f"{what} images share a file name stem (ignoring case), so their outputs would overwrite each other: "
            f"{brief_list(clashes, 5)}. Rename them or pass them in separate runs."
        )


def read_image(
    path: PathLike,
    size: int | None = None,
    short_side: int | None = None,
    max_side: int | None = None,
    resample: int = Image.BICUBIC,
    plain: bool = False,
) -> Tensor:
    """Decode ``path`` → (3, H, W) in [0, 1], resized as :func:`resize_image` says (``plain``:
    see :func:`samam.data.load_rgb`). Unreadable files raise ``OSError``/``ValueError``."""
    return to_tensor(resize_image(load_rgb(path, plain), size, short_side, max_side, resample))


def resize_image(
    im: Image.Image,
    size: int | None = None,
    short_side: int | None = None,
    max_side: int | None = None,
    resample: int = Image.BICUBIC,
) -> Image.Image:
    """A PIL image resized: ``size`` to size×size (StyleID protocol); ``short_side`` so the
    shorter side is this (the longer one truncated, as torchvision's ``Resize(short_side)``);
    ``max_side`` shrunk (never enlarged) so the longer side is at most this; none of them: as
    it is. ``resample``: a PIL filter (bicubic; the release's test script uses bilinear)."""
    w, h = im.size
    if size is not None:
        new = (size, size)
    elif short_side is not None:
        new = short_side_size(w, h, short_side)  # (W, H) in, (W, H) out: the rule is symmetric
    elif max_side is not None and max(w, h) > max_side:
        s = max_side / max(w, h)
        new = (max(1, round(w * s)), max(1, round(h * s)))
    else:
        new = (w, h)
    return im.resize(new, resample) if new != (w, h) else im


def drop_partial_patches(x: Tensor, patch_size: int) -> Tensor:
    """(…, H, W) → (…, ⌊H/p⌋·p, ⌊W/p⌋·p), top-left kept: what the release's strided patch
    embedding sees of an image (it drops the bottom and right partial patches)."""
    h, w = x.shape[-2:]
    return x[..., : h // patch_size * patch_size, : w // patch_size * patch_size]


def save_png(image: Tensor, path: PathLike) -> None:
    """(3, H, W) uint8 or float in [0, 1] → PNG, written atomically (temp file + rename)."""
    img = image if image.dtype == torch.uint8 else to_uint8(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A short temp name: a legal output name of 251-255 bytes has no room for a longer one.
    with atomic_write(path, suffix=".png.tmp") as f:
        Image.fromarray(img.permute(1, 2, 0).cpu().numpy()).save(f, format="PNG")


def check_inputs_exist(ckpt_path: PathLike, **inputs: PathLike | Sequence[PathLike]) -> None:
    """Every input that does not exist, and a folder given as the checkpoint, named in one error
    before any work (``inputs``: each key's file, folder or list of them): a missing ckpt_path was
    reported alone, and a mistyped content or style folder only on the next try, once the network
    (and eval's metric networks) had loaded. train.py has its own, on its config
    (samam.train.check_inputs_exist)."""
    problems = []
    ckpt = Path(ckpt_path).expanduser()
    if ckpt.is_dir():
        problems.append(folder_given(f"ckpt_path {str(ckpt)!r}"))
    elif not ckpt.exists():
        problems.append(f"checkpoint not found: {str(ckpt)!r} (ckpt_path=...; absolute: {ckpt.resolve()})")
    for key, given in inputs.items():
        for source in [given] if isinstance(given, (str, os.PathLike)) else given:
            p = Path(source).expanduser()
            if not p.exists():
                problems.append(f"{key}: {str(p)!r} does not exist (absolute: {p.resolve()})")
    if len(problems) == 1:
        raise (IsADirectoryError if ckpt.is_dir() else FileNotFoundError)(problems[0])
    if problems:
        raise FileNotFoundError("missing inputs:\n  " + "\n  ".join(problems))


def check_output_names(names: Sequence[str], output_dir: Path) -> None:
    """Refuse, before any work, output file names longer than the file system allows."""
    try:
        limit = os.pathconf(output_dir, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    long = sorted({n for n in names if len(n.encode()) > limit})
    if long:
        raise ValueError(
            f"{len(long)} output file name(s) exceed this file system's {limit}-byte limit, e.g. "
            f"{long[0]!r} ({len(long[0].encode())} bytes); shorten the content or style file names"
        )


def output_name(content: Path, style: str, alpha: float = 1.0) -> str:
    """StyleID naming: ``{content_stem}_stylized_{style_stem}.png`` (α ≠ 1 adds ``_alpha0.5``,
    the shortest text that reads back as the same float, so two different α never share a file)."""
    text = repr(float(alpha)).removesuffix(".0")  # 0.5 → "0.5", 0 → "0", 0.1234561 kept whole
    suffix = "" if alpha == 1 else f"_alpha{text}"
    return f"{content.stem}_stylized_{style}{suffix}.png"


def mix_name(stems: Sequence[str], weights: Sequence[float], taken: Mapping[str, Any] | None = None) -> str:
    """The ``style`` part of a weighted mix's file name: ``a@0.7+b@0.3`` (weights normalised, six
    significant digits), or ``mix3-<10 hex digits>`` hashing the stems and exact weights when
    that text is long, or when ``taken`` (``mixes.json``: name → {"weights": ...}) already
    gives it to a mix with other weights. ``stylize`` records each name in ``mixes.json``."""
    total = sum(weights)
    normalised = [w / total for w in weights]
    text = "+".join(f"{stem}@{w:.6g}" for stem, w in zip(stems, normalised))
    other = (taken or {}).get(text)
    if len(text.encode()) <= 120 and (other is None or other.get("weights") == normalised):
        return text
    key = "+".join(f"{stem}@{w!r}" for stem, w in zip(stems, normalised))
    return f"mix{len(stems)}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


# ---------------------------------------------------------------------------------------
# Devices, precision, model
# ---------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """``auto`` → cuda if available else cpu; an explicit CUDA device without CUDA fails."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but CUDA is not available (use device=cpu or auto)")
    return dev


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """fp32: no autocast; bf16: autocast to bfloat16 on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")


def load_network(
    ckpt_path: PathLike, device: torch.device, backend: str, trust_pickle: bool = False
) -> nn.Module:
    """Our checkpoint or the authors' released one → eval-mode SaMam on ``device``. A folder or a
    missing file is named by check_inputs_exist before any work (and by load_model)."""
    from samam import load_model

    net = load_model(
        Path(ckpt_path).expanduser(), map_location=device, backend=backend, trust_pickle=trust_pickle
    )
    return net.eval().requires_grad_(False)


def checkpoint_record(ckpt_path: PathLike) -> dict[str, Any]:
    """What a checkpoint says of itself, for results.json: the training step it holds
    (``checkpoint_step``: last.ckpt moves on as a run trains) and, for ours, the code that trained
    it (``checkpoint_code``, its ``samam.code``: git commit, dirty, samam and torch versions); None
    where it does not say (the authors' checkpoints have no code, ours from before it was recorded).
    Read with load_mapped: memory-mapped where the file system allows, so the weights are not
    read again."""
    record: dict[str, Any] = {"checkpoint_step": None, "checkpoint_code": None}
    try:
        ckpt = load_mapped(Path(ckpt_path).expanduser())
    except Exception:  # pickled objects, a damaged file: loaded (or refused) by the network's own load
        return record
    if not isinstance(ckpt, Mapping):
        return record
    step, meta = ckpt.get("global_step"), ckpt.get("samam")
    if isinstance(step, int) and not isinstance(step, bool):
        record["checkpoint_step"] = step
    if isinstance(meta, Mapping):
        record["checkpoint_code"] = meta.get("code")
    return record


@torch.no_grad()
def embed_styles(
    net: nn.Module, images: Sequence[Tensor], batch_size: int, precision: Precision = "fp32"
) -> Tensor:
    """Style images (3, h, w) each → embeddings (N, S, 3, 3) float32; same-size images share a batch."""
    device, dtype = next(net.parameters()).device, next(net.parameters()).dtype
    out: list[Tensor | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(tuple(im.shape[-2:]), []).append(i)
    for idx in by_size.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            with autocast(device, precision):
                e = net.embed_style(torch.stack([images[i] for i in chunk]).to(device, dtype)).float()
            for j, i in enumerate(chunk):
                out[i] = e[j]
    return torch.stack(out)  # type: ignore[arg-type]


def mix_embeddings(e: Tensor, weights: Sequence[float]) -> Tensor:
    """Σ w_i e_i with weights normalised to sum 1: e (N, S, 3, 3) → (S, 3, 3)."""
    w = torch.as_tensor(list(weights), dtype=e.dtype, device=e.device)
    if w.shape != (e.shape[0],):
        raise ValueError(f"style_weights has {w.numel()} entries for {e.shape[0]} styles")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"style_weights must be finite and ≥ 0 with a positive sum, got {list(weights)}")
    return torch.einsum("n,n...->...", w / w.sum(), e)


def blend_with_content(e_style: Tensor, e_content: Tensor, alpha: float) -> Tensor:
    """Style strength: (1 − α)·e_content + α·e_style (α = 0 reconstructs the content)."""
    return e_style if alpha == 1 else torch.lerp(e_content, e_style, alpha)


# ---------------------------------------------------------------------------------------
# Efficiency: MACs, time, memory
# ---------------------------------------------------------------------------------------

# Selective-scan MACs per (sample, direction·channel, token): per state n, exp(Δ·A) needs
# Δ·A (1), ΔB̄u needs (Δu)·B (1), h ← Ā·h + B̄u (1), y += C·h (1) → 4N; per channel Δ·u (1) and
# the skip D·u (1) → +2. Exponentials and softplus are not multiply-accumulates.
SCAN_MACS_PER_STATE = 4
SCAN_MACS_PER_CHANNEL = 2


def scan_macs(batch: int, channels: int, length: int, d_state: int) -> int:
    """Analytic MACs of one selective scan over (B, K·D, L) with N states: B·K·D·L·(4N + 2)."""
    return batch * channels * length * (SCAN_MACS_PER_STATE * d_state + SCAN_MACS_PER_CHANNEL)


class _CountingScan:
    """Stands in for a scan backend while MACs are counted: adds the analytic count and
    returns zeros of the right shape, so FlopCounterMode sees none of the backend's internals
    (the count is the same for the torch, numba and mamba backends).

    Not an nn.Module, as the backends are not: FlopCounterMode's module tracker hooks every
    module call and fails on an input that requires grad with no grad_fn, which the scan's
    delta_bias (a view of a trainable parameter under no_grad) is."""

    def __init__(self) -> None:
        self.macs = 0

    def __call__(self, u: Tensor, delta: Tensor, A: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        b, kd, length = u.shape  # (B, K·D, L)
        self.macs += scan_macs(b, kd, length, A.shape[-1])
        return torch.zeros(b, kd, length, dtype=torch.float32, device=u.device)


@contextlib.contextmanager
def _scans_replaced(net: nn.Module, stub: _CountingScan) -> Iterator[int]:
    from samam.nn.ss2d import SS2D

    swapped = []
    for m in net.modules():
        if isinstance(m, SS2D):
            where = m._modules if "backend" in m._modules else m.__dict__
            swapped.append((where, where["backend"]))
            where["backend"] = stub
    try:
        yield len(swapped)
    finally:
        for where, orig in swapped:
            where["backend"] = orig


@torch.no_grad()
def count_macs(net: nn.Module, content: Tensor, style: Tensor) -> dict[str, float]:
    """GMACs of one ``net(content, style)``: convolutions, matmuls and attention counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) plus the selective scans
    added analytically (:func:`scan_macs`)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa_flops(query, key, value, *args, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    # The mixer=attention arm: on the CPU, SDPA runs as an op FlopCounterMode has no formula for
    # (it counts the CUDA kernels only), so its QKᵀ and AV, the arm's quadratic cost, were 0.
    cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops}
    stub = _CountingScan()
    with _scans_replaced(net, stub), FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        net(content, style)
    dense = counter.get_total_flops() / 2
    return {"gmacs": (dense + stub.macs) / 1e9, "gmacs_dense": dense / 1e9, "gmacs_scan": stub.macs / 1e9}


@torch.no_grad()
def measure_efficiency(
    net: nn.Module,
    content_size: int = 512,
    style_size: int = 256,
    warmup: int = 2,
    repeats: int = 10,
    precision: Precision = "fp32",
) -> dict[str, Any]:
    """Median ms of ``net(content, style)`` at batch 1 (style embedding included), MACs,
    parameters and peak CUDA memory (``None`` on CPU, with the reason)."""
    device = next(net.parameters()).device
    g = torch.Generator().manual_seed(0)
    c = torch.rand(1, 3, content_size, content_size, generator=g).to(device)
    s = torch.rand(1, 3, style_size, style_size, generator=g).to(device)
    res: dict[str, Any] = {"params": sum(p.numel() for p in net.parameters())}
    res.update(count_macs(net, c, s))
    # The network's device, not the current one (device=cuda:1): else the clock stops before
    # its kernels have run.
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        with autocast(device, precision):
            net(c, s)
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    res["ms_per_image"] = statistics.median(times)
    res["peak_mem_mib"] = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with autocast(device, precision):
            net(c, s)
        sync()
        res["peak_mem_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        res["peak_mem_note"] = "CUDA memory allocated during one forward, above the resident weights"
    else:
        res["peak_mem_note"] = "peak memory is measured on CUDA only"
    res["bench"] = dict(
        content_size=content_size, style_size=style_size, batch=1, repeats=repeats, precision=precision
    )
    return res


# ---------------------------------------------------------------------------------------
# eval.py: the StyleID protocol
# ---------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def results_markdown(
    res: Mapping[str, Any], higher_is_better: Mapping[str, bool | None] | None = None
) -> str:
    """The results as one markdown table (null values show as – with their reason below).
    ``higher_is_better``: the metrics' directions (the suite's), shown as ↑/↓ beside the metrics
    of one's own; one left unknown (None) shows none."""
    arrow = {True: " ↑", False: " ↓"}
    better = higher_is_better or {}
    rows = [
        ("ArtFID ↓", "artfid"),
        ("FID (art Inception) ↓", "fid_art"),
        ("LPIPS ↓", "lpips"),
        ("CFSD ↓", "cfsd"),
        ("FID (TF-Inception, torch-fidelity) ↓", "fid_tf"),
        # metrics of one's own (metrics.extra), named by their key
        *(
            (f"{k}{arrow.get(better.get(k), '')}", k)
            for k in res.get("metric_networks") or {}
            if k not in METRIC_NAMES
        ),
        ("ms / image", "ms_per_image"),
        ("GMACs", "gmacs"),
        ("parameters", "params"),
        ("peak memory (MiB)", "peak_mem_mib"),
    ]
    lines = [f"# Evaluation of `{res.get('ckpt_path', '?')}`", "", "| metric | value |", "|---|---|"]
    if res.get("protocol_deviations"):
        lines[1:1] = [
            "",
            "**Not the StyleID protocol (SPEC §6), so not comparable with the paper's figures:**",
            *(f"- {d}" for d in res["protocol_deviations"]),
        ]
    if res.get("warning"):
        lines[1:1] = ["", f"**Warning: {res['warning']}**"]
    lines += [f"| {label} | {_fmt(res.get(key))} |" for label, key in rows]
    p = res.get("protocol", {})
    if p.get("style_size"):
        style = f"style {p['style_size']}²"
    elif p.get("style_short_side"):
        style = f"style shorter side {p['style_short_side']} (bilinear, aspect kept)"
    else:
        style = "style as decoded"
    px = p.get("content_px", [p.get("content_size")] * 2 if p.get("content_size") else None)
    content = f"content {px[0]}×{px[1]}" if px else "each content at its own size"
    lines += [
        "",
        f"{p.get('n_content')} content × {p.get('n_style')} style = {p.get('n_images')} images; "
        f"{content}, {style}; device {res.get('device')}, "
        f"precision {res.get('precision')}. FID reference set: "
        f"{p.get('style_reference', 'the style images')}.",
    ]
    if p.get("decoding"):
        lines.append(f"Decoding: {p['decoding']}.")
    b = res.get("bench") or {}
    if b:
        lines.append(
            f"Speed/MACs/memory: batch 1, content {b.get('content_size')}², style {b.get('style_size')}², "
            f"median of {b.get('repeats')} runs; MACs = FlopCounterMode (dense ops) + analytic scan "
            f"B·K·D·L·(4N + 2)."
        )
    for path, why in (p.get("skipped_inputs") or {}).items():
        lines.append(f"- skipped input `{path}`: {why}")
    for key, why in (res.get("null_reasons") or {}).items():
        lines.append(f"- `{key}` is null: {why}")
    for key, net in (res.get("metric_networks") or {}).items():
        lines.append(f"- `{key}`: {net}")
    return "\n".join(lines) + "\n"


def _bench_settings(
    bench: Mapping[str, Any] | None, net: nn.Module, content_size: int, style_size: int
) -> dict[str, Any]:
    """eval's ``bench`` config → :func:`measure_efficiency` keywords ({} when disabled), checked
    before any work: a bad value must not surface after the whole evaluation. Null = default."""
    cfg = dict(bench or {})
    refuse_unknown_settings("bench", cfg, ["enabled", "content_size", "style_size", "warmup", "repeats"])
    check_switches({"bench.enabled": opt(cfg, "enabled", True)})
    if not opt(cfg, "enabled", True):
        return {}
    kw = dict(
        content_size=opt(cfg, "content_size", content_size),
        style_size=opt(cfg, "style_size", style_size),
        warmup=opt(cfg, "warmup", 2),
        repeats=opt(cfg, "repeats", 10),
    )
    least = dict(content_size=2 * net.cfg.patch_size, style_size=net.min_style_side, warmup=0, repeats=1)
    for key, value in kw.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < least[key]:
            raise ValueError(f"bench.{key} must be an integer ≥ {least[key]} for this network, got {value!r}")
    return kw


# What the StyleID protocol fixes of the images the metrics see (SPEC §6): 20 MS-COCO contents
# at 512², 40 WikiArt styles, fid_art and lpips at a 512-px shorter side.
PROTOCOL_CONTENTS, PROTOCOL_STYLES, PROTOCOL_SIDE = 20, 40, 512


def protocol_deviations(
    n_content: int, n_style: int, content_px: int | None, suite: StyleTransferMetrics
) -> list[str]:
    """How an evaluation departs from the StyleID protocol in what moves its numbers; empty when
    its figures compare with the paper's. FID is biased by the sample size (the same outputs
    score higher as a set of fewer images), so another image count is not comparable either."""
    out = []
    if (n_content, n_style) != (PROTOCOL_CONTENTS, PROTOCOL_STYLES):
        out.append(
            f"{n_content} content × {n_style} style = {n_content * n_style} images, not the protocol's "
            f"{PROTOCOL_CONTENTS} × {PROTOCOL_STYLES} = {PROTOCOL_CONTENTS * PROTOCOL_STYLES} "
            "(FID depends on the number of images)"
        )
    if content_px != PROTOCOL_SIDE:
        seen = "each content at its own size" if content_px is None else f"contents at {content_px}²"
        out.append(f"{seen}, not the protocol's {PROTOCOL_SIDE}²")
    art = suite.fid_art.inception.net if suite.fid_art is not None else None  # inside FID's _Sized
    # A stand-in network has no short_side: it is named below.
    sides = {
        "fid_art": getattr(art, "short_side", PROTOCOL_SIDE),
        "lpips": getattr(suite.lpips, "short_side", None),
    }
    for name, side in sides.items():
        if getattr(suite, name) is not None and side != PROTOCOL_SIDE:
            seen = "each image at its own size" if side is None else f"a {side}-px shorter side"
            out.append(f"{name} saw {seen}, not the protocol's {PROTOCOL_SIDE} (metrics.{name}.short_side)")
    if suite.stand_ins:
        out.append("random stand-in metric networks (TEST ONLY)")
    out += [f"{name} read weights that are not the published file" for name in suite.unpublished]
    return out


def _write_text(path: Path, text: str) -> None:
    """Atomically: a reader sees the old file or the new one, never half of it."""
    with atomic_write(path) as f:
        f.write(text.encode())


def evaluate(
    ckpt_path: PathLike,
    content_dir: PathLike,
    style_dir: PathLike,
    output_dir: PathLike,
    device: str = "auto",
    precision: Precision = "fp32",
    backend: str = "auto",
    batch_size: int = 8,
    content_size: int | None = 512,
    style_size: int | None = None,
    style_short_side: int | None = 256,
    metrics: Mapping[str, Any] | None = None,
    bench: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    progress: bool = True,
    match_release: bool = False,
) -> dict[str, Any]:
    """Stylise every content × style pair, save ``{content}_stylized_{style}.png``, compute
    the protocol's metrics and efficiency figures, write ``results.json`` and ``results.md``
    into ``output_dir`` and return the results.

    The network sees each content at ``content_size``² (StyleID's images are 512²) and each
    style as the release's test script prepares it: shorter side ``style_short_side``, aspect
    kept, bilinear (``style_size``, when set, wins and squashes it to size×size). FID's reference set is
    the style files themselves, each counted once per content image.

    ``match_release``: every input (content, the style the network sees, FID's reference set)
    is decoded with PIL's ``convert('RGB')`` only, as the release's test script and art-fid read
    images (no EXIF rotation, alpha dropped), and the content's partial edge patches are dropped
    as the release's patch embedding drops them; otherwise EXIF rotation is applied, alpha is
    composited on white and every pixel is kept. The two differ only for such files.

    ``metrics``: keyword arguments of :func:`samam.metrics.build_metrics`; ``bench``:
    ``{enabled, content_size, style_size, warmup, repeats}`` (sizes default to the eval sizes).
    """
    from tqdm.auto import tqdm

    check_switches(dict(trust_pickle=trust_pickle, progress=progress, match_release=match_release))
    t_start = time.perf_counter()
    if style_size is not None:
        style_short_side = None  # style_size (N×N) wins; results.json records what was used
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    out = Path(output_dir).expanduser()
    check_output_dir(out)
    check_inputs_exist(ckpt_path, content_dir=content_dir, style_dir=style_dir)
    dev = resolve_device(device)
    autocast(dev, precision)  # validates the name before any work
    net = load_network(ckpt_path, dev, backend, trust_pickle)
    # Read now, with the weights: last.ckpt of a run still training is replaced while this one stylises.
    ckpt_record = checkpoint_record(ckpt_path)
    bench = _bench_settings(bench, net, content_size or 512, style_size or style_short_side or 256)
    suite: StyleTransferMetrics = build_metrics(**dict(metrics or {})).to(dev)
    contents = collect_images(content_dir, "content", output_dir=out)
    styles = collect_images(style_dir, "style", output_dir=out)
    check_unique_stems(contents, "content")
    check_unique_stems(styles, "style")
    out.mkdir(parents=True, exist_ok=True)
    check_output_names([output_name(c, s.stem) for c in contents for s in styles], out)

    def read_content(path: Path) -> Tensor:  # (3, H, W); decoded twice (check, then use) to hold none
        c = read_image(path, size=content_size, plain=match_release)
        return drop_partial_patches(c, net.cfg.patch_size) if match_release else c

    log.info(
        "eval: %d content × %d style images on %s (%s) → %s", len(contents), len(styles), dev, precision, out
    )

    # Every input is decoded and size-checked before any work: a bad file is skipped (and listed
    # in results.json), not found after minutes of stylising.
    skipped: dict[str, str] = {}
    usable_styles, e_list = [], []
    with torch.no_grad():
        for p in styles:
            try:
                # Decoded again for the FID reference set below: kept, 40 WikiArt scans at full size
                # sat in memory at once.
                im = load_rgb(p, plain=match_release)
                if min(im.size) < suite.min_style_side:
                    raise ValueError(
                        f"{(im.height, im.width)} px is below the metrics' {suite.min_style_side}-px minimum"
                    )
                net_in = resize_image(
                    im, size=style_size, short_side=style_short_side, resample=Image.BILINEAR
                )
                e_list.append(embed_styles(net, [to_tensor(net_in)], 1, precision)[0])  # (S, 3, 3)
                usable_styles.append(p)
            except Exception as err:  # unreadable, or below the style embedder's minimum
                skipped[str(p)] = f"{type(err).__name__}: {err}"
        if not usable_styles:
            raise ValueError(f"eval: no usable style image; skipped: {skipped}")
        usable, content_shapes = [], set()
        for cpath in contents:
            try:
                c = read_content(cpath)[None]
                net.check_inputs(c, style_embedding=e_list[0][None].to(c.device))  # c stays on the CPU
                if min(c.shape[-2:]) < suite.min_side:
                    raise ValueError(
                        f"{tuple(c.shape[-2:])} px is below the metrics' {suite.min_side}-px minimum"
                    )
                usable.append(cpath)
                content_shapes.add(tuple(c.shape[-2:]))
            except Exception as err:
                skipped[str(cpath)] = f"{type(err).__name__}: {err}"
    for path, why in skipped.items():
        log.warning("eval: skipping %s (%s)", path, why)
    if not usable:
        raise ValueError(f"eval: no usable content image; skipped: {skipped}")
    contents, styles = usable, usable_styles
    e_styles = torch.stack(e_list)  # (N_s, S, 3, 3)
    with torch.no_grad():
        for p in styles:
            # FID's reference set is the style images as they are, aspect kept (the art
            # Inception resizes them to its 512 shorter side itself, SPEC §6), each counted once
            # per stylised image made with it, as StyleID's copied reference folder holds it.
            im = to_tensor(load_rgb(p, plain=match_release))[None]
            suite.update_style(im.to(dev), weight=len(contents))

    # A run into the folder of an earlier one: its results describe other images, and must not
    # stand beside this run's if it is stopped before writing its own; its images this run does
    # not overwrite (another style set, say) stay, and are named.
    for name in ("results.json", "results.md"):
        (out / name).unlink(missing_ok=True)
    ours = {output_name(c, s.stem) for c in contents for s in styles}
    others = sorted(p.name for p in out.glob("*_stylized_*.png") if p.name not in ours)
    if others:
        log.warning(
            "eval: %s holds %d stylised image(s) of an earlier run that this run does not write "
            "(not scored; e.g. %s)",
            out,
            len(others),
            brief_list(others, 3),
        )

    bar = tqdm(total=len(contents) * len(styles), desc="stylising", unit="img", disable=not progress)
    with torch.no_grad():
        for cpath in contents:
            c = read_content(cpath).to(dev)
            for s in range(0, len(styles), batch_size):
                e = e_styles[s : s + batch_size]
                with autocast(dev, precision):
                    y = net(c.expand(e.shape[0], -1, -1, -1), style_embedding=e)
                if not torch.isfinite(y).all():  # to_uint8 makes NaN black: it would be scored as an image
                    raise FloatingPointError(
                        f"eval: the network's output for {cpath.name} with {styles[s].name} … holds NaN or inf "
                        "(diverged weights, or a bf16 overflow: try precision=fp32); nothing is scored"
                    )
                y8 = to_uint8(y)  # (b, 3, H, W): exactly the saved pixels
                for j in range(e.shape[0]):
                    save_png(y8[j], out / output_name(cpath, styles[s + j].stem))
                suite.update(y8.float() / 255, c.expand(e.shape[0], -1, -1, -1))
                bar.update(e.shape[0])
    bar.close()
    values = suite.compute()

    p = net.cfg.patch_size
    side = None if content_size is None else content_size // p * p if match_release else content_size
    res: dict[str, Any] = dict(values)
    res.update(
        null_reasons={k: suite.null_reasons[k] for k in (*METRIC_NAMES, *suite.extra) if values[k] is None},
        metric_networks=suite.networks,
        protocol=dict(
            n_content=len(contents),
            n_style=len(styles),
            n_images=len(contents) * len(styles),
            skipped_inputs=skipped,
            content_size=content_size,
            content_px=None if side is None else [side, side],  # what the network saw; None: each file's size
            style_size=style_size,
            style_short_side=style_short_side,
            style_reference="style files as decoded, each weighted by n_content",
            decoding=(
                "as the release and art-fid: PIL convert('RGB'), partial edge patches dropped"
                if match_release
                else "EXIF rotation applied, alpha on white, every pixel kept"
            ),
        ),
        ckpt_path=str(ckpt_path),
        **ckpt_record,  # its step and the code that trained it
        code=code_version(),  # the code that evaluated it
        model=net.config,
        scan_backend=net.scan_backend.describe(),
        device=str(dev),
        precision=precision,
    )
    if suite.stand_ins:
        res["warning"] = (
            f"the values of {', '.join(suite.stand_ins)} come from random stand-in networks (TEST ONLY) and mean nothing"
        )
    # content_size=null keeps each file's size: StyleID's own files are all 512² already.
    (h, w), *others = content_shapes
    px = side if side is not None or others or h != w else h
    res["protocol_deviations"] = protocol_deviations(len(contents), len(styles), px, suite)
    if res["protocol_deviations"]:
        log.warning(
            "eval: not the StyleID protocol, so not comparable with the paper's figures: %s",
            "; ".join(res["protocol_deviations"]),
        )

    def write(eff: Mapping[str, Any]) -> None:
        for key in ("ms_per_image", "gmacs", "params", "peak_mem_mib"):
            res[key] = eff.get(key)
            if res[key] is None:
                res["null_reasons"][key] = eff.get("peak_mem_note", "not measured")
            else:
                res["null_reasons"].pop(key, None)
        res.update(
            gmacs_breakdown={k: eff.get(k) for k in ("gmacs_dense", "gmacs_scan")}, bench=eff.get("bench")
        )
        res["elapsed_s"] = time.perf_counter() - t_start
        _write_text(out / "results.json", json.dumps(res, indent=2) + "\n")
        _write_text(out / "results.md", results_markdown(res, suite.higher_is_better))

    # The metrics are on disk before the benchmark starts: a benchmark that fails (out of
    # memory, say) or is killed loses none of them.
    if not bench:
        write({"peak_mem_note": "bench disabled in config (bench.enabled=false)"})
    else:
        write({"peak_mem_note": "benchmark did not finish (killed while timing?)"})
        try:
            eff = measure_efficiency(net, precision=precision, **bench)
        except Exception as err:
            log.exception("eval: the efficiency benchmark failed; the metrics are saved")
            eff = {"peak_mem_note": f"benchmark failed: {type(err).__name__}: {err}"}
        write(eff)
    log.info(
        "eval: %s",
        {k: res[k] for k in (*METRIC_NAMES, *suite.extra, "ms_per_image", "gmacs", "params", "peak_mem_mib")},
    )
    return res


# ---------------------------------------------------------------------------------------
# stylize.py
# ---------------------------------------------------------------------------------------


def _read_or_none(path: Path, what: str, **resize: Any) -> Tensor | None:
    """:func:`read_image`, or None with a warning for an unreadable file."""
    try:
        return read_image(path, **resize)
    except Exception as err:  # PIL raises many types for bad files
        log.warning("skipping unreadable %s image %s (%s: %s)", what, path, type(err).__name__, err)
        return None


def _thumb(img: Tensor, cell: int) -> Tensor:
    """(3, H, W) → (3, cell, cell): fit inside keeping the aspect, centred on white."""
    h, w = img.shape[-2:]
    s = cell / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = torch.nn.functional.interpolate(
        img[None].float(), size=(nh, nw), mode="bilinear", antialias=True
    )[0]
    canvas = torch.ones(3, cell, cell)
    top, left = (cell - nh) // 2, (cell - nw) // 2
    canvas[:, top : top + nh, left : left + nw] = small.clamp(0, 1)
    return canvas


def make_grid(
    contents: Sequence[Tensor], styles: Sequence[Tensor], outputs: Sequence[Sequence[Tensor]], cell: int
) -> Tensor:
    """First row: styles; first column: contents; cell (i, j): output of content i, style j."""
    rows = [torch.cat([torch.ones(3, cell, cell)] + [_thumb(s, cell) for s in styles], dim=2)]
    for c, outs in zip(contents, outputs):
        rows.append(torch.cat([_thumb(c, cell)] + [_thumb(o, cell) for o in outs], dim=2))
    return torch.cat(rows, dim=1)  # (3, (1 + n_c)·cell, (1 + n_s)·cell)


def weights_digest(net: nn.Module) -> str:
    """The first 16 hex digits of a SHA-256 over ``net``'s weights as loaded (names, dtypes, shapes,
    bytes). Not the file's: a training run replaces its last.ckpt under the same name, maybe while
    the images are made, and two files with the same weights (last.ckpt and the step checkpoint
    saved with it, a re-saved or converted copy) make the same images."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def record_settings(
    record: Path, made_with: dict[str, Any], outputs: Sequence[Path], overwrite: bool
) -> None:
    """Refuse, before an image is written, to keep the existing ``outputs`` as this run's when ``record`` (written
    by an earlier stylize into the folder) says they were made with another checkpoint, sizes,
    precision or decoding, or does not list them: a rerun with the next checkpoint kept every earlier
    image under its name and wrote nothing. Then ``record`` holds ``made_with`` and the names it
    vouches for: this run's, plus the earlier ones when the settings agree. The checkpoint's path alone
    may differ (a copy), and a key the earlier record lacks is not compared."""
    try:
        earlier = json.loads(record.read_text()) if record.is_file() else {}
    except (OSError, ValueError) as err:  # unreadable: nothing to compare with
        log.warning("stylize: %s cannot be read (%s); it is rewritten", record, err)
        earlier = {}
    differ = [
        f"{k}: {earlier[k]!r} → {v!r}"
        for k, v in made_with.items()
        if k in earlier and k != "ckpt_path" and earlier[k] != v
    ]
    # An overwrite=true run with other settings vouches only for its own outputs: images an earlier
    # run made beside them under other names were kept, later, as the new settings' own.
    vouched = None if differ else earlier.get("outputs")
    kept = (
        []
        if overwrite
        else [
            p for p in outputs if p.exists() and (differ or (vouched is not None and p.name not in vouched))
        ]
    )
    if kept:
        why = (
            f"made with other settings ({brief_list(differ, 6)}; checkpoint then: {earlier.get('ckpt_path')})"
            if differ
            else "that stylize.json does not list (an overwrite=true run with other settings came after them)"
        )
        raise ValueError(
            f"output_dir {str(record.parent)!r} holds {len(kept)} of this run's outputs (e.g. {kept[0].name}) {why}; "
            "they would be kept as this run's. Pass overwrite=true to replace them, or give another output_dir."
        )
    names = sorted({p.name for p in outputs} | set(vouched or ()))
    _write_text(record, json.dumps({**made_with, "outputs": names}, indent=2) + "\n")


def stylize(
    ckpt_path: PathLike,
    content: PathLike | Sequence[PathLike],
    style: PathLike | Sequence[PathLike],
    output_dir: PathLike,
    alpha: float = 1.0,
    style_weights: Sequence[float] | None = None,
    max_side: int | None = None,
    style_side: int | None = 256,
    batch_size: int = 4,
    device: str = "auto",
    precision: Precision = "fp32",
    backend: str = "auto",
    overwrite: bool = False,
    grid: bool = False,
    grid_cell: int = 256,
    trust_pickle: bool = False,
    progress: bool = True,
    cuda_graph: bool = False,
    match_release: bool = False,
) -> dict[str, Any]:
    """Stylise every content × style pair (or, with ``style_weights``, every content with one
    weighted mix of all styles) and save ``{content}_stylized_{style}.png`` in ``output_dir``.

    Content keeps its size (``max_side`` only shrinks); styles (and, for α < 1, the content
    used as its own style) are resized so the shorter side is ``style_side`` (bilinear; 256 and
    bilinear are the release's test defaults). α ∈ [0, 1]
    interpolates the embedding from the content's own (α = 0) to the style's. Existing
    outputs are kept unless ``overwrite``, and refused where ``stylize.json`` says another
    checkpoint, ``max_side``, ``style_side``, ``precision`` or ``match_release`` made them.
    ``cuda_graph`` replays one captured CUDA graph per input shape (samam.cuda_graph): worth it
    for many images of one size, such as video frames. ``match_release`` reads images as the
    release's test script does (PIL ``convert('RGB')``: no EXIF rotation, alpha dropped) and drops
    the partial patches at the bottom and right edges as its patch embedding does, so outputs are floor(H/p)·p ×
    floor(W/p)·p and equal the release's; otherwise every pixel is kept (edges padded).
    Returns lists of written and skipped files.
    """
    from tqdm.auto import tqdm

    check_switches(
        dict(
            overwrite=overwrite,
            grid=grid,
            trust_pickle=trust_pickle,
            progress=progress,
            cuda_graph=cuda_graph,
            match_release=match_release,
        )
    )
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    for name, value in (("batch_size", batch_size), ("grid_cell", grid_cell)):
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")
    for name, value in (("max_side", max_side), ("style_side", style_side)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be ≥ 1 px or null, got {value}")
    out = Path(output_dir).expanduser()
    check_output_dir(out)
    check_inputs_exist(ckpt_path, content=content, style=style)
    dev = resolve_device(device)
    autocast(dev, precision)
    net = load_network(ckpt_path, dev, backend, trust_pickle)
    weights = weights_digest(net)  # those that make the images, whatever the file holds by then
    for name, value, least in (
        ("max_side", max_side, 2 * net.cfg.patch_size),
        ("style_side", style_side, net.min_style_side),
    ):
        if value is not None and value < least:
            raise ValueError(f"{name}={value} is below this network's {least}-px minimum for it")
    stylise = net
    if cuda_graph:
        from samam.cuda_graph import GraphedSaMam

        stylise = GraphedSaMam(net, precision)
    out.mkdir(parents=True, exist_ok=True)
    content_paths = collect_images(content, "content", output_dir=out)
    check_unique_stems(content_paths, "content")
    all_styles = collect_images(style, "style", output_dir=out)
    check_unique_stems(all_styles, "style")
    # Each style is decoded, embedded and dropped before the next (its grid thumbnail kept):
    # decoded all first, a folder of large scans (style_side=null) sat in memory at full size.
    e_list, keep, thumbs, bad_styles, unusable_styles = [], [], [], [], []
    for p in all_styles:
        im = _read_or_none(p, "style", short_side=style_side, resample=Image.BILINEAR, plain=match_release)
        if im is None:
            bad_styles.append(p)
            continue
        try:
            e_list.append(embed_styles(net, [im], 1, precision)[0])  # (S, 3, 3)
        except ValueError as err:  # e.g. smaller than the style encoder's minimum
            log.warning("skipping style image %s: %s", p, err)
            unusable_styles.append(p)
            continue
        keep.append(p)
        if grid:
            thumbs.append(_thumb(im, grid_cell))
    for skipped, why in ((bad_styles, "are unreadable"), (unusable_styles, "cannot be used")):
        if style_weights is not None and skipped:
            raise ValueError(f"style_weights given but these styles {why}: {[str(p) for p in skipped]}")
    if not keep:
        raise ValueError("no usable style image")
    style_paths, e_styles = keep, torch.stack(e_list)  # (N_s, S, 3, 3)
    if style_weights is not None:
        mixed = mix_embeddings(e_styles, style_weights)  # checks the weights
        mixes = out / "mixes.json"  # name → its styles and normalised weights
        taken = json.loads(mixes.read_text()) if mixes.is_file() else {}
        name = mix_name([p.stem for p in style_paths], style_weights, taken)
        total = sum(style_weights)
        taken[name] = {"styles": [str(p) for p in style_paths], "weights": [w / total for w in style_weights]}
        _write_text(mixes, json.dumps(taken, indent=2) + "\n")
        targets = [(name, mixed)]
        grid_styles = [torch.cat(thumbs, dim=2)] if grid else []  # one strip header
    else:
        targets = [(p.stem, e) for p, e in zip(style_paths, e_styles)]
        grid_styles = thumbs
    outputs = [out / output_name(c, name, alpha) for c in content_paths for name, _ in targets]
    check_output_names([p.name for p in outputs], out)
    made_with = dict(
        ckpt_path=str(Path(ckpt_path).expanduser().resolve()),
        weights_sha256=weights,
        max_side=max_side,
        style_side=style_side,
        precision=precision,
        match_release=match_release,
    )
    record_settings(out / "stylize.json", made_with, outputs, overwrite)

    summary: dict[str, Any] = {
        "written": [],
        "skipped_existing": [],
        "skipped_unreadable": [str(p) for p in bad_styles],  # cannot decode
        "skipped_unusable": [str(p) for p in unusable_styles],  # decoded, below the network's minimum
    }
    grid_rows: list[tuple[Tensor, list[Tensor]]] = []
    bar = tqdm(total=len(content_paths) * len(targets), desc="stylising", unit="img", disable=not progress)
    for cpath in content_paths:
        try:
            c_pil = load_rgb(cpath, plain=match_release)
            c = to_tensor(resize_image(c_pil, max_side=max_side)).to(dev)  # (3, H, W)
            if match_release:
                c = drop_partial_patches(c, net.cfg.patch_size)
        except Exception as err:  # PIL raises many types for bad files
            log.warning("skipping unreadable content image %s (%s: %s)", cpath, type(err).__name__, err)
            summary["skipped_unreadable"].append(str(cpath))
            bar.update(len(targets))
            continue
        paths = [out / output_name(cpath, name, alpha) for name, _ in targets]
        todo = [i for i, p in enumerate(paths) if overwrite or not p.exists()]
        try:  # the network's own limits (e.g. 2 patches per side), checked before any output
            net.check_inputs(c[None], style_embedding=targets[0][1][None])
            if todo and alpha < 1:  # the content is also embedded as a style
                c_style = (
                    c
                    if style_side is None
                    else to_tensor(resize_image(c_pil, short_side=style_side, resample=Image.BILINEAR)).to(
                        dev
                    )
                )
                e_content = embed_styles(net, [c_style], 1, precision)[0]  # (S, 3, 3)
        except ValueError as err:
            log.warning("skipping content image %s: %s", cpath, err)
            summary["skipped_unusable"].append(str(cpath))
            bar.update(len(targets))
            continue
        for i in set(range(len(targets))) - set(todo):
            log.info("exists, not overwritten (overwrite=true to replace): %s", paths[i])
            summary["skipped_existing"].append(str(paths[i]))
        with torch.no_grad():
            for s in range(0, len(todo), batch_size):
                idx = todo[s : s + batch_size]
                e = torch.stack([targets[i][1] for i in idx])
                if alpha < 1:
                    e = blend_with_content(e, e_content, alpha)
                with autocast(dev, precision):
                    y = stylise(c.expand(len(idx), -1, -1, -1), style_embedding=e)  # (b, 3, H, W)
                finite = torch.isfinite(y.flatten(1)).all(1).tolist()  # to_uint8 would make NaN black
                y8 = to_uint8(y)
                for j, i in enumerate(idx):
                    if not finite[j]:
                        with_style = (
                            style_paths[i].name if style_weights is None else f"the mix {targets[i][0]}"
                        )
                        raise FloatingPointError(
                            f"stylize: the network's output for {cpath.name} with {with_style} holds NaN "
                            "or inf (diverged weights, or a bf16 overflow: try precision=fp32); the "
                            f"{len(summary['written'])} images written before it are kept in {out}"
                        )
                    save_png(y8[j], paths[i])
                    summary["written"].append(str(paths[i]))
                bar.update(len(idx))
        bar.update(len(targets) - len(todo))
        if grid:
            # Thumbnails only: full-size contents kept to the end would hold every image at once.
            grid_rows.append(
                (_thumb(c.cpu(), grid_cell), [_thumb(to_tensor(load_rgb(p)), grid_cell) for p in paths])
            )
    bar.close()
    if grid and grid_rows:
        g = make_grid([r[0] for r in grid_rows], grid_styles, [r[1] for r in grid_rows], grid_cell)
        save_png(g, out / "grid.png")
        summary["grid"] = str(out / "grid.png")
    log.info(
        "stylize: %d written, %d kept (exist), %d unreadable and %d too small skipped → %s",
        len(summary["written"]),
        len(summary["skipped_existing"]),
        len(summary["skipped_unreadable"]),
        len(summary["skipped_unusable"]),
        out,
    )
    return summary


# ---------------------------------------------------------------------------------------
# The training callback
# ---------------------------------------------------------------------------------------


class EvalMetricsCallback(L.Callback):
    """Every ``every_n_val_rounds`` validation rounds (the first included), stylise a fixed
    set of content × style pairs with ``pl_module.net`` and log ``val/artfid``,
    ``val/fid_art``, ``val/lpips``, ``val/cfsd``, ``val/fid_tf`` (disabled metrics are not
    logged), ``val/eval_seconds`` and, with a WandbLogger, a table of samples.

    DDP: each rank stylises a shard of the pairs; the metrics' float64 sums are all-reduced.
    Style statistics of the FIDs are computed once and kept. A ``ModelCheckpoint`` monitoring
    one of these metrics (or one of ``metrics.extra``) must save right after each evaluation, so
    each checkpoint is ranked by its own weights' score: ``every_n_val_rounds=1`` and a checkpoint
    saved at validation (no ``every_n_train_steps`` or ``train_time_interval``;
    conf/callbacks/best_artfid.yaml). Anything else is refused at setup: the last value stays in
    ``trainer.callback_metrics``, and later weights would be kept under an earlier score. Its
    ``mode`` must be the metric's direction (min for the protocol's, max for a metric of one's
    own whose ``higher_is_better`` is true), or it is refused too.
    """

    def __init__(
        self,
        content: PathLike | Sequence[PathLike],
        style: PathLike | Sequence[PathLike],
        every_n_val_rounds: int = 1,
        content_size: int | None = 256,
        style_size: int | None = None,
        style_short_side: int | None = 256,
        batch_size: int = 8,
        max_pairs: int | None = None,
        log_samples: int = 8,
        precision: Precision = "fp32",
        metrics: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if every_n_val_rounds < 1:
            raise ValueError(f"every_n_val_rounds must be ≥ 1, got {every_n_val_rounds}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"max_pairs must be ≥ 1 or null (all pairs), got {max_pairs}")
        autocast(torch.device("cpu"), precision)  # validates the name here, not at the first evaluation
        if style_size is not None:
            style_short_side = None  # style_size (N×N) wins
        self.content, self.style = content, style
        self.every_n_val_rounds = every_n_val_rounds
        self.content_size, self.style_size, self.style_short_side = content_size, style_size, style_short_side
        self.batch_size, self.max_pairs, self.log_samples = batch_size, max_pairs, log_samples
        self.precision = precision
        self.metrics_cfg = dict(metrics or {})
        self.rounds = 0
        self.suite: StyleTransferMetrics | None = None
        self._style_fed = False
        self._names_checked = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.suite is not None or stage != "fit":
            return
        self._check_checkpoint_monitors(trainer)
        # Built here, not at the first evaluation: a missing weight file fails before training.
        self.suite = build_metrics(**self.metrics_cfg, reset_style=False)
        # test_extractors / lpips.pnet_rand: val/ values that look like real ones and mean nothing.
        if self.suite.stand_ins and trainer.is_global_zero:
            log.warning(
                "eval metrics: %s use random stand-in networks (TEST ONLY): their val/ values mean nothing",
                ", ".join(self.suite.stand_ins),
            )
        self.content_paths = collect_images(self.content, "eval content")
        self.style_paths = collect_images(self.style, "eval style")
        net = pl_module.net
        least = max(2 * net.cfg.patch_size, self.suite.min_side)  # the network's and the metrics'
        self.contents = self._read(self.content_paths, "content", least, size=self.content_size)
        self.styles = self._read(
            self.style_paths,
            "style",
            net.min_style_side,
            size=self.style_size,
            short_side=self.style_short_side,
            resample=Image.BILINEAR,
        )
        # FID's reference set takes the style files as decoded (fid_art keeping the size has a minimum)
        if self.suite.min_style_side > 1:
            self._read(self.style_paths, "style", self.suite.min_style_side)
        pairs = [(i, j) for i in range(len(self.contents)) for j in range(len(self.styles))]
        if self.max_pairs is not None and self.max_pairs < len(pairs):
            step = len(pairs) / self.max_pairs  # spread over all contents and styles
            pairs = [pairs[int(k * step)] for k in range(self.max_pairs)]
        self.pairs = pairs
        self.style_uses = Counter(j for _, j in pairs)  # FID counts each style once per use
        for cb in self._ranking_checkpoints(trainer):
            monitor = cb.monitor
            name = monitor.removeprefix("val/")
            why = self.suite.reasons.get(name)
            if why is None and name in ("artfid", "fid_art", "fid_tf") and len(pairs) < 2:
                why = f"a FID needs at least 2 stylised images, and the eval set gives {len(pairs)}"
            if why is not None:
                raise ValueError(
                    f"ModelCheckpoint(monitor={monitor!r}): {monitor} will never be logged ({why})"
                )
            self._check_direction(cb, name)
        if trainer.is_global_zero:  # the same on every rank
            log.info(
                "eval metrics: %d pairs (%d content × %d style) every %d validation round(s); metrics %s",
                len(pairs),
                len(self.contents),
                len(self.styles),
                self.every_n_val_rounds,
                self.suite.enabled,
            )

    @staticmethod
    def _read(paths: Sequence[Path], what: str, least: int, **resize: Any) -> list[Tensor]:
        """Decode each image at setup, naming the file that is unreadable or smaller than
        ``least`` px as resized: not found at the first evaluation, steps into training."""
        images = []
        for p in paths:
            try:
                im = read_image(p, **resize)
            except Exception as err:  # PIL raises many types for bad files
                raise ValueError(
                    f"eval metrics: {what} image {p} is unreadable ({type(err).__name__}: {err})"
                ) from None
            if min(im.shape[-2:]) < least:
                raise ValueError(
                    f"eval metrics: {what} image {p} is {im.shape[-1]}×{im.shape[-2]} px (W×H) as resized, "
                    f"below the {least}-px minimum of the network and the metrics"
                )
            images.append(im)
        return images

    def _ranking_checkpoints(self, trainer: L.Trainer) -> list[Any]:
        """The ModelCheckpoints that rank checkpoints by one of these metrics (or one's own)."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        names = {*METRIC_NAMES, *(self.metrics_cfg.get("extra") or {})}
        return [
            cb
            for cb in trainer.callbacks
            if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.monitor.removeprefix("val/") in names
        ]

    def _check_checkpoint_monitors(self, trainer: L.Trainer) -> None:
        for cb in self._ranking_checkpoints(trainer):
            monitor = cb.monitor
            scheduled = cb._every_n_train_steps > 0 or cb._train_time_interval is not None
            if self.every_n_val_rounds != 1 or scheduled:
                raise ValueError(
                    f"ModelCheckpoint(monitor={monitor!r}) would keep checkpoints ranked by a {monitor} "
                    "measured on earlier weights (every_n_val_rounds="
                    f"{self.every_n_val_rounds}, every_n_train_steps={cb._every_n_train_steps}). "
                    "Evaluate at every validation and save there: callbacks.eval_metrics.every_n_val_rounds=1 "
                    "+callbacks@callbacks.best_artfid=best_artfid"
                )

    def _check_direction(self, cb: Any, name: str) -> None:
        """A checkpoint ranked the wrong way keeps the worst weights: its mode must agree with the
        metric's direction (the protocol's are lower-is-better; one's own says higher_is_better)."""
        assert self.suite is not None
        better = self.suite.higher_is_better[name]
        if better is None:
            raise ValueError(
                f"ModelCheckpoint(monitor={cb.monitor!r}): "
                f"{type(self.suite.extra[name]).__name__}.higher_is_better is None, "
                "so which checkpoint is best is unknown; state it: "
                f"+callbacks.eval_metrics.metrics.extra.{name}.higher_is_better=true|false"
            )
        mode = "max" if better else "min"
        if cb.mode != mode:
            raise ValueError(
                f"ModelCheckpoint(monitor={cb.monitor!r}, mode={cb.mode!r}) would keep the worst checkpoint: "
                f"a {'higher' if better else 'lower'} {name} is better. Set mode={mode} "
                f"(e.g. callbacks.best_artfid.mode={mode})"
            )

    def _check_extra_names_free(self, trainer: L.Trainer) -> None:
        """A metric of one's own named like a value the module logs in validation (a loss term of
        one's own, say) would overwrite it: refused at the first validation (the sanity check, when
        there is one), the first time the module's names are known, before this callback logs."""
        if self._names_checked or self.suite is None:
            return
        self._names_checked = True
        # Lightning's private result collection (2.5, 2.6: keys "<hook>.<name>"); a release without it
        # skips this check rather than stop the run over it.
        results = getattr(trainer, "_results", None)
        if results is None or not hasattr(results, "keys"):
            log.warning("eval metrics: this Lightning does not say what the module logs; names not checked")
            return
        logged = {str(key).split(".", 1)[-1] for key in results.keys()}
        taken = sorted(name for name in self.suite.extra if f"val/{name}" in logged)
        if taken:
            raise ValueError(
                f"eval metrics: the module already logs {', '.join(f'val/{n}' for n in taken)}; "
                f"rename the metric of one's own (callbacks.eval_metrics.metrics.extra.{taken[0]})"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rounds = int(state_dict.get("rounds", 0))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_extra_names_free(trainer)
        if trainer.sanity_checking:
            return
        due = self.rounds % self.every_n_val_rounds == 0
        self.rounds += 1
        if due:
            self.evaluate(trainer, pl_module)

    # Lightning's validate (validate_before_training) runs in inference mode, fit's validation does
    # not: metric states made in the one must take in-place updates in the other, so neither makes
    # inference tensors. no_grad inside: inference_mode(False) alone turns gradients back on.
    @torch.inference_mode(False)
    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float | None]:
        """Stylise this rank's shard, compute the synced metrics, log them; returns the values."""
        if self.suite is None:
            self.setup(trainer, pl_module, "fit")
        assert self.suite is not None
        t0 = time.perf_counter()
        net, dev = pl_module.net, pl_module.device
        was_training = net.training
        net.eval()
        suite = self.suite.to(dev)
        rank, world = trainer.global_rank, trainer.world_size
        if not self._style_fed:  # the style files as decoded, as in eval.py
            for j in range(rank, len(self.style_paths), world):
                if self.style_uses[j] > 0:
                    suite.update_style(
                        read_image(self.style_paths[j])[None].to(dev), weight=self.style_uses[j]
                    )
            self._style_fed = True
        # In the weights' dtype (trainer.precision=64-true, bf16-true): Lightning converts only the batches it feeds.
        dtype = next(net.parameters()).dtype
        e_styles = embed_styles(net, self.styles, self.batch_size, self.precision).to(dev, dtype)
        shard = self.pairs[rank::world]
        by_size: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for i, j in shard:  # a batch holds one content size (content_size=null keeps each file's)
            by_size.setdefault(tuple(self.contents[i].shape), []).append((i, j))
        chunks = [
            g[s : s + self.batch_size] for g in by_size.values() for s in range(0, len(g), self.batch_size)
        ]
        samples: list[tuple[str, Tensor, Tensor, Tensor]] = []
        nonfinite = torch.zeros((), device=dev)  # outputs holding NaN or inf, which to_uint8 makes black
        for chunk in chunks:
            c = torch.stack([self.contents[i] for i, _ in chunk]).to(dev)
            with autocast(dev, self.precision):
                y = net(c.to(dtype), style_embedding=e_styles[[j for _, j in chunk]])
            nonfinite += (~torch.isfinite(y.flatten(1))).any(1).sum()
            y8 = to_uint8(y)
            suite.update(y8.float() / 255, c)
            for (i, j), out in zip(chunk, y8):
                if len(samples) < self.log_samples:
                    name = f"{self.content_paths[i].stem}_stylized_{self.style_paths[j].stem}"
                    samples.append((name, to_uint8(self.contents[i]), to_uint8(self.styles[j]), out.cpu()))
        values = suite.compute()  # all-reduces across ranks
        suite.reset()
        # Every rank reduces (a collective), so every rank logs NaN alike; NaN never ranks as best.
        bad = int(trainer.strategy.reduce(nonfinite, reduce_op="sum"))
        if bad:
            values = {k: None if v is None else float("nan") for k, v in values.items()}
            if trainer.is_global_zero:
                log.warning(
                    "eval metrics at step %d: %d of %d outputs hold NaN or inf (diverged weights?); "
                    "the metrics are logged as NaN",
                    trainer.global_step,
                    bad,
                    len(self.pairs),
                )
        net.train(was_training)
        elapsed = time.perf_counter() - t0
        for name, v in values.items():
            if v is not None:
                pl_module.log(f"val/{name}", v, sync_dist=True)
        pl_module.log("val/eval_seconds", elapsed, sync_dist=True)
        if trainer.is_global_zero:  # the values are synced: the same on every rank
            self._log_table(trainer, samples)
            log.info(
                "eval metrics at step %d: %s (%d pairs, %.1f s)%s",
                trainer.global_step,
                {k: round(v, 4) for k, v in values.items() if v is not None},
                len(self.pairs),
                elapsed,
                f"; TEST ONLY random networks for {', '.join(suite.stand_ins)}" if suite.stand_ins else "",
            )
        return values

    @staticmethod
    def _log_table(trainer: L.Trainer, samples: Sequence[tuple[str, Tensor, Tensor, Tensor]]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not samples:
            return
        import wandb

        hwc = lambda t: t.permute(1, 2, 0).numpy()  # noqa: E731 — uint8 (H, W, 3); float images log black
        rows = [
            [name, wandb.Image(hwc(c)), wandb.Image(hwc(s)), wandb.Image(hwc(o))] for name, c, s, o in samples
        ]
        for lg in loggers:
            lg.log_table(
                key="val/samples",
                columns=["pair", "content", "style", "output"],
                data=rows,
                step=trainer.global_step,
            )
