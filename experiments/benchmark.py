"""Full-network benchmark: latency, throughput, peak memory and training-step time vs resolution.

    make bench                                     # CPU defaults: 256, 512, 1024
    python experiments/benchmark.py --device cuda --precision fp32 bf16
    python experiments/benchmark.py --mixers ssm attention --sizes 256 512
    python experiments/benchmark.py --release-path ~/src/SaMam  # same-run ratio vs the authors' code
    python experiments/benchmark.py --peers stytr2 stytr2-sdpa  # same-run ratio vs StyTr² (transformer)

Writes results.csv, results.md, scaling.png and meta.json to --out. Columns and how to read
them: experiments/performance.md. Failures (out of memory, 32-bit index limits) become rows
with a status, never a crash; outputs are rewritten after every case, so a killed run keeps
what it measured.

The authors' release is never imported unless --release-path names a local clone; it is
then timed in the same process with its own scan (mamba-ssm on CUDA, pure torch on CPU).
--peers times other networks (experiments/stytr2.py) on the inference tasks, with our style size
(--peer-style same, like for like) or style side = content side (content, the published setting).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import dataclasses
import datetime
import gc
import importlib.metadata
import inspect
import io
import json
import logging
import math
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
TASKS = ("latency", "throughput", "train")
FIELDS = (
    "impl", "mixer", "backend", "precision", "task", "batch", "content", "style", "pixels",
    "median_ms", "min_ms", "repeats", "img_per_s", "peak_mib", "mem_kind", "speedup_vs_release",
    "speedup_vs_stytr2", "speedup_vs_stytr2_sdpa", "status", "notes",
)  # fmt: skip
# Reference impl → (column, markdown header): its median / a row's median, same task, batch,
# content and style sides and precision, same run; filled for every other impl's ok rows.
SPEEDUPS = {
    "release": ("speedup_vs_release", "vs release"),
    "stytr2": ("speedup_vs_stytr2", "vs StyTr²"),
    "stytr2-sdpa": ("speedup_vs_stytr2_sdpa", "vs StyTr² sdpa"),
}
# --peers choice → StyTr2(attention=...): as published, or the same weights through SDPA.
PEERS = {"stytr2": "mha", "stytr2-sdpa": "sdpa"}
MEM_KINDS = {
    "cuda_max_allocated": "torch.cuda.max_memory_allocated over the case's calls; absolute: weights + inputs + activations",
    "rss_hwm_delta": "resident-set peak (VmHWM) that one extra untimed call adds above the RSS before it; weights and "
    "inputs excluded",
    "ru_maxrss_delta": "growth of the process's lifetime peak RSS (ru_maxrss) in one extra call: a lower bound",
}
# Release constructor names for our SaMamConfig fields; any other field must keep its default.
RELEASE_ARGS = {
    "embed_dim": "embed_dim",
    "patch_size": "patch_size",
    "encoder_depth": "nVSSMs",
    "decoder_depth": "nSAVSSMs",
    "decoder_groups": "nSAVSSGs",
    "style_dim": "representation_dim",
    "d_state": "d_state",
    "expand": "expand",
    "loe_compress": "compress_ratio",
    "loe_squeeze": "squeeze_factor",
}
RELEASE_IGNORED = {"mixer", "backend", "zero_init", "dt_rank"}  # no effect on the release's speed

log = logging.getLogger("benchmark")


# ---- arguments ------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """`k=v` value: true/false, none/null, int, float, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def load_preset(name: str) -> dict[str, Any]:
    """Constructor kwargs from conf/model/<name>.yaml, following its `defaults` list."""
    path = REPO / "conf" / "model" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
        raise SystemExit(f"--preset {name!r}: no {path}; presets: {choices}")
    try:
        import yaml
    except ImportError as e:
        raise SystemExit("--preset needs PyYAML (pip install pyyaml); or pass --model k=v ...") from e
    doc = yaml.safe_load(path.read_text()) or {}
    out: dict[str, Any] = {}
    own = {k: v for k, v in doc.items() if k not in ("defaults", "_target_")}
    defaults = [d for d in doc.get("defaults", []) if isinstance(d, str)]  # model presets: plain names
    for entry in defaults:
        out.update(own if entry == "_self_" else load_preset(entry))
    if "_self_" not in defaults:
        out.update(own)
    return out


def parse_overrides(items: list[str], flag: str, managed: dict[str, str]) -> dict[str, Any]:
    """`k=v` items as kwargs; a key in `managed` is set by the flag it names instead."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag} expects key=value, got {item!r}")
        if key in managed:
            raise SystemExit(f"{flag} {key}=...: use {managed[key]} instead")
        kwargs[key] = parse_value(value)
    return kwargs


def model_kwargs(preset: str | None, overrides: list[str]) -> dict[str, Any]:
    """SaMam constructor kwargs from a preset and `k=v` overrides; mixer and backend are set per series."""
    from samam.nn.samam import SaMamConfig

    kwargs = load_preset(preset) if preset else {}
    for managed in ("mixer", "backend"):
        kwargs.pop(managed, None)
    kwargs.update(parse_overrides(overrides, "--model", {"mixer": "--mixers", "backend": "--backend"}))
    fields = {f.name for f in dataclasses.fields(SaMamConfig)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise SystemExit(f"--model: unknown SaMam arguments {unknown}; known: {sorted(fields)}")
    return kwargs


def peer_kwargs(overrides: list[str]) -> dict[str, Any]:
    """StyTr2 constructor kwargs from `k=v` overrides (default: the published sizes)."""
    from stytr2 import StyTr2  # experiments/ is sys.path[0] when this file runs as a script

    kwargs = parse_overrides(overrides, "--peer-model", {"attention": "--peers"})
    known = sorted(inspect.signature(StyTr2).parameters.keys() - {"attention"})
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise SystemExit(f"--peer-model: unknown StyTr2 arguments {unknown}; known: {known}")
    return kwargs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset", help="conf/model/<name>.yaml (samam, small, tiny); default: SaMam() (released p=8)"
    )
    p.add_argument("--model", nargs="*", default=[], metavar="K=V", help="SaMam constructor overrides")
    p.add_argument("--mixers", nargs="+", default=["ssm"], choices=["ssm", "attention"])
    p.add_argument("--backend", nargs="+", default=["auto"], choices=["auto", "torch", "numba", "mamba"])
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"], help="bf16 = autocast"
    )
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument(
        "--sizes", nargs="+", type=int, help="latency content sides (CPU 256 512 1024; CUDA 256…4096)"
    )
    p.add_argument("--style-size", type=int, default=256)
    p.add_argument("--throughput-batch", type=int, default=8)
    p.add_argument("--throughput-sizes", nargs="+", type=int, help="default: 256 on CPU, 512 on CUDA")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-sizes", nargs="+", type=int, default=[256], help="crop side (style crop too)")
    p.add_argument(
        "--loss", choices=["auto", "vgg", "mse"], default="auto", help="auto: VGG if samam.losses imports"
    )
    p.add_argument("--warmup", type=int, help="untimed calls first (default CPU 1, CUDA 3)")
    p.add_argument("--repeats", type=int, help="timed calls (default CPU 3, CUDA 10)")
    p.add_argument(
        "--case-seconds",
        type=float,
        default=30.0,
        help="about this many seconds of warm-up, and of timed calls, per case (≥ 1 timed call)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        help="skip a case whose one call is predicted (from smaller sizes) to exceed this (s); 0 = never "
        "(default CPU 300, CUDA 60)",
    )
    p.add_argument(
        "--budget", type=float, default=0.0, help="stop starting cases after this many seconds; 0 = none"
    )
    p.add_argument("--threads", type=int, help="intra-op threads (torch and numba); default: as the env says")
    p.add_argument(
        "--matmul-precision",
        choices=["highest", "high", "medium"],
        default="highest",
        help="torch.set_float32_matmul_precision for every series: highest = true fp32 matmuls (the "
        "release's setting), high = TF32 (Ampere and newer); convolutions use TF32 either way",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile our network (not the release)")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="also time each SaMam series replayed from captured CUDA graphs (samam.cuda_graph; inference only)",
    )
    p.add_argument("--release-path", type=Path, help="local clone of github.com/Chernobyllight/SaMam")
    p.add_argument(
        "--release-scan",
        choices=["auto", "mamba", "torch"],
        default="auto",
        help="auto: mamba on CUDA, torch on CPU",
    )
    p.add_argument(
        "--release-train", action="store_true", help="also time the release's training step on CPU (slow)"
    )
    p.add_argument(
        "--peers",
        nargs="+",
        default=[],
        choices=list(PEERS),
        help="also time StyTr² (experiments/stytr2.py, random weights): stytr2 = published attention, "
        "stytr2-sdpa = same weights through SDPA; inference only",
    )
    p.add_argument(
        "--peer-style",
        choices=["same", "content"],
        default="same",
        help="the peers' style side: same = --style-size, as ours (like for like; the vs-peer ratios "
        "compare equal inputs); content = the content's side (how StyTr²'s figures are usually taken)",
    )
    p.add_argument(
        "--peer-model", nargs="*", default=[], metavar="K=V", help="StyTr2 constructor overrides (tests)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, help="default experiments/results/<date>-<device>/ (-2, -3, … if taken)"
    )
    p.add_argument(
        "--replot",
        type=Path,
        metavar="DIR",
        help="only rewrite DIR's results.md and scaling.png from its results.csv and meta.json (e.g. "
        "on a machine with matplotlib after a GPU run without it); runs nothing",
    )
    return p


# ---- machine --------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        # A copied work tree (e.g. on a lent GPU machine) has no .git: the caller may name it.
        return os.environ.get("SAMAM_COMMIT", "unknown (no git checkout; set SAMAM_COMMIT)")


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "commit": git_commit(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def loaded_versions() -> dict[str, str]:
    """Versions of the optional kernels the run actually imported."""
    out = {m: getattr(sys.modules[m], "__version__", "?") for m in ("numba", "mamba_ssm") if m in sys.modules}
    if "mamba_ssm" not in out:  # samam imports only its kernel module, without the package entry
        from samam.ops.selective_scan import mamba_available

        if mamba_available():
            try:
                out["mamba_ssm"] = importlib.metadata.version("mamba_ssm")
            except importlib.metadata.PackageNotFoundError:
                out["mamba_ssm"] = "?"
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ---- measurement ----------------------------------------------------------------------


class PeakMemory:
    """Peak memory of a case.

    CUDA: torch.cuda.max_memory_allocated over all of the case's calls, absolute (weights,
    inputs and activations). CPU: one extra untimed call after the timed ones, measured as the
    process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) above
    the RSS just before it: the memory that call adds. glibc keeps freed blocks resident and
    reuses them, which would hide most of it, so the heap is trimmed first and blocks ≥ 1 MiB
    are mmapped (returned on free) during that call only. Timed calls run under glibc's
    steady-state thresholds, fixed at start so that every case sees the same allocator.
    Where /proc or glibc is unavailable: growth of ru_maxrss, a lower bound.
    """

    # mallopt parameter numbers (glibc malloc.h) and the values glibc's dynamic thresholds
    # settle at in a long-running process; every case runs under these fixed values.
    _M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
    _STEADY = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}

    def __init__(self, device: torch.device):
        self.device = device
        self._libc = None
        if device.type == "cuda":
            self.kind = "cuda_max_allocated"
            return
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc only)
            self._libc = libc
            for param, value in self._STEADY.items():
                libc.mallopt(param, value)
        self.kind = "rss_hwm_delta" if self._libc is not None and self._reset_hwm() else "ru_maxrss_delta"

    @property
    def extra_call(self) -> bool:
        return self.device.type != "cuda"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status_kib(field: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
        raise KeyError(field)

    def reset(self) -> None:
        """CUDA: start counting (before the case's first call)."""
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float:
        """CUDA: peak since reset()."""
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def measure(self, fn: Callable[[], Any]) -> float:
        """CPU: MiB that one call of fn adds at its peak."""
        gc.collect()
        if self.kind == "ru_maxrss_delta":
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
            fn()
            return max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        self._libc.malloc_trim(0)
        self._reset_hwm()
        base = self._status_kib("VmRSS")
        self._libc.mallopt(self._M_MMAP_THRESHOLD, 1 << 20)
        try:
            fn()
        finally:
            self._libc.mallopt(self._M_MMAP_THRESHOLD, self._STEADY[self._M_MMAP_THRESHOLD])
        return max(0.0, self._status_kib("VmHWM") - base) / 1024


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds for one call: CUDA events on GPU (queue drained first), perf_counter on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_calls(
    fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, case_seconds: float
) -> list[float]:
    """Times of up to `repeats` calls after up to `warmup` untimed ones; a case whose calls are
    slow gets fewer of both (at least one timed call), about `case_seconds` of each. The first
    warm-up call pays one-off costs (compilation, CUDA-graph capture, autotuning): it neither
    counts towards `case_seconds` nor sets how many calls are timed (with `warmup=0` the first
    timed call pays them, and counts)."""
    spent = 0.0
    for i in range(warmup):
        t = time_once(fn, device)
        spent += t if i else 0.0
        if spent > case_seconds:
            break
    # The timed calls size themselves (with warmup ≤ 1 no steady-state call has been seen):
    # stop before the next call, at their mean, would pass case_seconds.
    times: list[float] = []
    while len(times) < repeats:
        times.append(time_once(fn, device))
        if sum(times) * (len(times) + 1) / len(times) > case_seconds:
            break
    return times


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ---- networks -------------------------------------------------------------------------


@dataclasses.dataclass
class Series:
    """One network being timed: ours (per mixer/backend), the release, or a peer (StyTr²)."""

    impl: str  # "samam" | "release" | a --peers name
    mixer: str
    requested: str  # backend asked for
    build: Callable[[], nn.Module]
    batched: bool = True  # False: the network takes one sample at a time (the release's S7)
    peer: bool = False  # another method: inference tasks only (style side: --peer-style)
    graph: bool = False  # replayed from a captured CUDA graph per shape (samam.cuda_graph): inference only
    backend: str = ""  # what the built network resolved it to

    def __post_init__(self):
        self.backend = self.backend or self.requested

    @property
    def label(self) -> str:
        return f"{self.impl} {self.mixer}/{self.backend}"


def backend_name(backend: Any, device: torch.device) -> str:
    """What a resolved ScanBackend runs on `device`, e.g. 'numba' for auto on CPU."""
    describe = getattr(backend, "describe", None)
    if callable(describe):  # "auto (cpu: numba, cuda: torch)"
        m = re.search(rf"\b{device.type}: ([^,)]+)", describe())
        if m:
            return m.group(1).strip()
    name = getattr(backend, "name", None) or getattr(backend, "__name__", None) or type(backend).__name__
    return str(name).removeprefix("selective_scan_")


def samam_series(
    kwargs: dict[str, Any], mixers: list[str], backends: list[str], device, compile_: bool, graph: bool
):
    """Ours per mixer and backend; with ``graph`` each also as a CUDA-graph series."""
    from samam import SaMam
    from samam.nn.samam import ATTENTION_UNUSED

    out = []
    for mixer in mixers:
        # The attention mixer never calls the scan: time it once.
        for backend in backends if mixer == "ssm" else backends[:1]:

            def build(mixer=mixer, backend=backend) -> nn.Module:
                # --model scan=cross --mixers ssm attention: the attention arm has no scan order or
                # A, D to generate (SaMam refuses them there), so it is the one attention network.
                kw = {k: v for k, v in kwargs.items() if mixer == "ssm" or k not in ATTENTION_UNUSED}
                net = SaMam(**kw, mixer=mixer, backend=backend).to(device).eval()
                # one graph per input shape, as in training (module.py): no symbolic sizes
                return torch.compile(net, dynamic=False) if compile_ else net

            out.append(Series("samam", mixer, backend if mixer == "ssm" else "-", build))
            if graph:
                out.append(Series("samam", mixer, backend if mixer == "ssm" else "-", build, graph=True))
    return out


def release_series(path: Path, kwargs: dict[str, Any], scan: str, device: torch.device) -> Series:
    """The authors' network from a local clone, same widths as ours, random weights."""
    from samam.nn.samam import SaMamConfig

    path = path.expanduser().resolve()
    if not (path / "MODEL" / "SaMam_model.py").is_file():
        raise SystemExit(
            f"--release-path {path}: no MODEL/SaMam_model.py (clone github.com/Chernobyllight/SaMam)"
        )
    defaults = SaMamConfig()
    differ = [
        k
        for k, v in kwargs.items()
        if k not in RELEASE_ARGS and k not in RELEASE_IGNORED and getattr(defaults, k) != v
    ]
    if differ:
        raise SystemExit(f"--release-path: the release has no switch for {differ}; drop them or the release")
    cfg = dataclasses.replace(defaults, **kwargs)
    rel_kwargs = {rel: getattr(cfg, ours) for ours, rel in RELEASE_ARGS.items()}
    if scan == "auto":
        scan = "mamba" if device.type == "cuda" else "torch"
    rel_kwargs["mamba_from_trion"] = 1 if scan == "mamba" else 0

    def build() -> nn.Module:
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
        with contextlib.redirect_stdout(io.StringIO()):  # it prints while building
            from MODEL.SaMam_model import SaMam as ReleaseSaMam

            net = ReleaseSaMam(**rel_kwargs)
        return net.to(device).eval()

    return Series("release", "ssm", scan, build, batched=False)


def peer_series(names: list[str], kwargs: dict[str, Any], device: torch.device) -> list[Series]:
    """StyTr² per --peers name, random weights; mixer `attention`, so the guards expect quadratic cost."""
    from stytr2 import StyTr2

    out = []
    for name in names:

        def build(attention=PEERS[name]) -> nn.Module:
            return StyTr2(**kwargs, attention=attention).to(device).eval()

        out.append(Series(name, "attention", PEERS[name], build, peer=True))
    return out


def forward_fn(series: Series, net: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if series.batched:
        return net
    quiet = io.StringIO()

    def per_sample(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        with contextlib.redirect_stdout(quiet):
            out = torch.cat([net(c, s) for c, s in zip(content.split(1), style.split(1))])
        quiet.seek(0)
        quiet.truncate()
        return out

    return per_sample


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class _TotalLoss(nn.Module):
    """StyleTransferLoss → its total; a module, so run_case can keep it on the device only for
    training cases (inference rows' peak memory must not include the loss network)."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, *t: torch.Tensor) -> torch.Tensor:
        return self.loss(*t)["loss"]


def build_loss(kind: str) -> tuple[LossFn, str]:
    """The training objective: SaMam's VGG perceptual loss (built on the CPU), or MSE when it
    is unavailable."""

    def mse(ics, icc, iss, c, s):
        return F.mse_loss(torch.cat([ics, icc, iss]), torch.cat([c, c, s]))

    if kind == "mse":
        return mse, "mse on output (--loss mse)"
    try:
        from samam.losses import StyleTransferLoss
    except ImportError as e:
        if kind == "vgg":
            raise
        return mse, f"mse on output (samam.losses not importable: {e})"
    losses_log = logging.getLogger("samam.losses")
    level = losses_log.level
    losses_log.setLevel(logging.ERROR)  # its random-weights warning is meant for training runs
    try:
        loss = _TotalLoss(StyleTransferLoss(vgg="random"))
    finally:
        losses_log.setLevel(level)
    return loss, "VGG-19 perceptual (samam.losses; random weights, same FLOPs)"


# ---- cases ----------------------------------------------------------------------------


def inference_case(series: Series, net: nn.Module, device, precision: str, batch: int, size: int, style: int):
    g = torch.Generator(device="cpu").manual_seed(size)
    content = torch.rand(batch, 3, size, size, generator=g).to(device)
    styles = torch.rand(batch, 3, style, style, generator=g).to(device)
    fwd = forward_fn(series, net)
    if series.graph:
        from samam.cuda_graph import GraphedSaMam

        fwd = GraphedSaMam(net, precision, max_graphs=1)  # captured in the first (warm-up) call

    def call() -> None:
        # no_grad, not inference_mode: tensors the network caches on first use (scan
        # indices) would become inference tensors, which a later training step cannot save.
        with torch.no_grad(), autocast(device, precision):
            fwd(content, styles)

    return call


def train_case(
    series: Series, net: nn.Module, device, precision: str, batch: int, size: int, loss_fn: LossFn
):
    """Adam step on c+s, c+c, s+s: ours as one forward of 3B, the release per sample."""
    g = torch.Generator(device="cpu").manual_seed(size)
    c = torch.rand(batch, 3, size, size, generator=g).to(device)
    s = torch.rand(batch, 3, size, size, generator=g).to(device)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    fwd = forward_fn(series, net)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if series.batched:
            with autocast(device, precision):
                ics, icc, iss = fwd(torch.cat([c, c, s]), torch.cat([s, c, s])).split(batch)  # 3 × (B,3,H,W)
                loss = loss_fn(ics, icc, iss, c, s)
            loss.backward()
        else:
            # Gradient accumulation over samples: the same gradient as one batched loss.
            for ci, si in zip(c.split(1), s.split(1)):
                with autocast(device, precision):
                    ics, icc, iss = fwd(ci, si), fwd(ci, ci), fwd(si, si)
                    loss = loss_fn(ics, icc, iss, ci, si) / batch
                loss.backward()
        opt.step()

    return step


def failure_status(err: BaseException) -> str:
    """A row's status for a failed case: ``oom`` or ``error: <type>: <first line>``."""
    if is_oom(err):
        return "oom"
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"error: {type(err).__name__}: {first}"[:200].rstrip(": ")


def release_memory(device: torch.device) -> None:
    """Free what the last case held; after a sticky CUDA error this can raise too, and is logged.
    The scan-index cache goes too: the next case's peak must not include the last case's indices
    (its first, untimed warm-up call rebuilds its own; captured graphs hold theirs)."""
    from samam.ops.scan_orders import clear_scan_cache

    clear_scan_cache()
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except RuntimeError as err:
            log.warning("torch.cuda.empty_cache failed (the CUDA context may be broken): %s", err)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(err).lower()


def _extrapolate(
    points: list[tuple[int, float]], pixels: int, default_slope: float, min_slope: float = 1.0
) -> float | None:
    """Log-log extrapolation from the last two (pixels, value) points, slope clamped to [min_slope, 2]."""
    if not points:
        return None
    (p1, v1) = points[-1]
    slope = default_slope
    if len(points) >= 2:
        (p0, v0) = points[-2]
        if p1 != p0 and v0 > 0 and v1 > 0:
            slope = min(2.0, max(min_slope, math.log(v1 / v0) / math.log(p1 / p0)))
    return v1 * (pixels / p1) ** slope


def available_mib() -> float | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclasses.dataclass
class History:
    """Seconds per call and peak MiB of earlier sizes of one (series, precision, task): predicts the next."""

    points: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    mem_points: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    failed: str | None = None

    def predict(self, pixels: int, default_slope: float) -> float | None:
        return _extrapolate(self.points, pixels, default_slope)

    def predict_mib(self, pixels: int, default_slope: float) -> float | None:
        # Conservative: small sizes understate attention's quadratic memory (fixed costs dominate).
        return _extrapolate(self.mem_points, pixels, default_slope, min_slope=default_slope)


def _summary(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return row["status"]
    return f"median {row['median_ms']:.1f} ms, min {row['min_ms']:.1f} ms, peak {row['peak_mib']:.0f} MiB"


@dataclasses.dataclass
class Context:
    """What every case needs besides its own coordinates."""

    args: argparse.Namespace
    device: torch.device
    memory: PeakMemory
    loss_fn: LossFn | None
    loss_desc: str
    time_limit: float
    t_start: float


def new_row(ctx: Context, s: Series, precision: str, task: str, batch: int, size: int) -> dict[str, Any]:
    """A case's row before it runs: its coordinates, memory kind and notes; no status yet."""
    args = ctx.args
    row: dict[str, Any] = dict.fromkeys(FIELDS, "")
    row.update(
        impl=s.impl,
        mixer=s.mixer,
        backend=s.backend,
        precision=precision,
        task=task,
        batch=batch,
        content=size,
        style=size if task == "train" or (s.peer and args.peer_style == "content") else args.style_size,
        pixels=size * size,
        mem_kind=ctx.memory.kind,
    )
    notes = []
    if not s.batched and batch > 1:
        notes.append("per-sample loop")
    if task == "train" and not s.peer:
        notes.append("loss: " + ctx.loss_desc.split(" ", 1)[0])
    row["notes"] = "; ".join(notes)
    return row


def run_case(
    ctx: Context, s: Series, net: nn.Module, precision: str, task: str, batch: int, size: int, h: History
):
    """One row: skipped (budget, earlier failure, predicted too slow), failed, or timed."""
    args, device, memory = ctx.args, ctx.device, ctx.memory
    row = new_row(ctx, s, precision, task, batch, size)

    if args.budget and time.monotonic() - ctx.t_start > args.budget:
        row["status"] = f"skipped: --budget {args.budget:g} s spent"
        return row
    if h.failed:
        row["status"] = f"skipped: a smaller size failed ({h.failed})"
        return row
    if task == "train" and s.impl == "release" and device.type == "cpu" and not args.release_train:
        row["status"] = "skipped: release training on CPU (--release-train)"
        return row
    if task == "train" and (s.peer or s.graph):
        row["status"] = f"skipped: {'peers' if s.peer else 'CUDA-graph series'} are timed for inference only"
        return row
    slope = 2.0 if s.mixer == "attention" else 1.0  # expected growth of time and memory in pixels
    predicted = h.predict(size * size, slope)
    if ctx.time_limit and predicted is not None and predicted > ctx.time_limit:
        row["status"] = f"skipped: ~{predicted:.0f} s per call predicted > --time-limit {ctx.time_limit:g}"
        return row

    # On CPU an out-of-memory case does not raise: the kernel kills the process (or the box).
    free = available_mib() if device.type == "cpu" else None
    predicted_mib = h.predict_mib(size * size, slope)
    if free is not None and predicted_mib is not None and predicted_mib > 0.7 * free:
        row["status"] = f"skipped: ~{predicted_mib:.0f} MiB predicted > 70% of {free:.0f} MiB available"
        return row

    checked = getattr(net, "check_finite", None)  # ours: the input check reads values on the host
    try:
        if task == "train":
            net.train()
            if checked is not None:  # as StyleTransferModule trains it: no wait for the device per step
                net.check_finite = False
            if isinstance(ctx.loss_fn, nn.Module):
                ctx.loss_fn.to(device)
            call = train_case(s, net, device, precision, batch, size, ctx.loss_fn)
        else:
            net.eval()
            call = inference_case(s, net, device, precision, batch, size, row["style"])
        if not memory.extra_call:
            memory.reset()
        times = time_calls(call, device, args.warmup, args.repeats, args.case_seconds)
        peak = memory.measure(call) if memory.extra_call else memory.peak_mib()
        row["peak_mib"] = round(peak, 1)
    except Exception as err:  # any failure is this case's row; the next series still runs
        row["status"] = failure_status(err)
        # A refused input (ValueError: a side below the network's minimum) says nothing of larger
        # sizes; what else fails (out of memory, index limits) would only fail again bigger, and so
        # would a ValueError after a smaller size ran (the 32-bit limit of a block that cannot split).
        if not isinstance(err, ValueError) or h.points:
            h.failed = row["status"]
        log.warning("%s %s %s %s²: %s", s.label, precision, task, size, row["status"])
        return row
    finally:
        net.eval()
        if checked is not None:
            net.check_finite = checked
        call = None
        if isinstance(ctx.loss_fn, nn.Module):
            ctx.loss_fn.to("cpu")  # off the device for the inference cases' peak memory
        release_memory(device)
    med = statistics.median(times)
    h.points.append((size * size, med))
    h.mem_points.append((size * size, peak))
    row.update(
        median_ms=round(med * 1e3, 3),
        min_ms=round(min(times) * 1e3, 3),
        repeats=len(times),
        img_per_s=round(batch / med, 3),
        status="ok",
    )
    return row


def cases(args: argparse.Namespace) -> Iterator[tuple[str, int, int]]:
    """(task, batch, content side) in run order: sizes ascending within a task."""
    for task in TASKS:
        if task not in args.tasks:
            continue
        if task == "latency":
            sizes, batch = args.sizes, 1
        elif task == "throughput":
            sizes, batch = args.throughput_sizes, args.throughput_batch
        else:
            sizes, batch = args.train_sizes, args.train_batch
        for size in sorted(set(sizes)):
            yield task, batch, size


def run_series(
    ctx: Context, s: Series, precision: str, rows: list[dict[str, Any]], on_row: Callable[[], None]
):
    """Build one network and run every case on it, sizes ascending per task. A network that
    fails to build gives an error row for each of its cases."""
    torch.manual_seed(ctx.args.seed)
    try:
        net = s.build()
    except Exception as err:
        status = failure_status(err)
        log.warning("%s %s: building failed: %s", s.label, precision, status)
        for task, batch, size in cases(ctx.args):
            row = new_row(ctx, s, precision, task, batch, size)
            row["status"] = f"{status} (building the network)"
            rows.append(row)
        on_row()
        return
    if s.impl == "samam" and s.mixer == "ssm":
        resolved = getattr(getattr(net, "_orig_mod", net), "scan_backend", None)
        s.backend = backend_name(resolved, ctx.device) if resolved is not None else s.requested
        s.backend += "+compile" if hasattr(net, "_orig_mod") else ""
    if s.graph and not s.backend.endswith("+graph"):  # built once per precision
        s.backend += "+graph"
    history: dict[str, History] = {}
    for task, batch, size in cases(ctx.args):
        row = run_case(ctx, s, net, precision, task, batch, size, history.setdefault(task, History()))
        rows.append(row)
        print(f"benchmark: {s.label} {precision} {task} b{batch} {size}²: {_summary(row)}", flush=True)
        on_row()
    del net
    release_memory(ctx.device)


# ---- outputs --------------------------------------------------------------------------


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Fill every SPEEDUPS column: reference median / row median; > 1 = faster than the reference.
    Only rows with equal inputs are compared (task, batch, content and style sides, precision)."""
    key = ("task", "batch", "content", "style", "precision")
    for impl, (column, _) in SPEEDUPS.items():
        ref = {tuple(r[k] for k in key): r for r in rows if r["impl"] == impl and r["status"] == "ok"}
        for r in rows:
            base = ref.get(tuple(r[k] for k in key))
            ok = r["impl"] != impl and r["status"] == "ok" and base is not None
            # 4 significant digits: rounded to 3 decimals, a 0.0038× came out as 0.004 (5 % off)
            r[column] = float(f"{base['median_ms'] / r['median_ms']:.4g}") if ok else ""


def _times(ratio: float) -> str:
    """A speed-up for the table: 2 decimals, or 2 significant digits below 0.1 (not 0.00×)."""
    return f"{ratio:.2f}×" if ratio >= 0.1 else f"{ratio:.2g}×"


def read_csv(path: Path) -> list[dict[str, Any]]:
    """results.csv back into rows with numbers where numbers were written (for --replot)."""
    ints, floats = (
        {"batch", "content", "style", "pixels", "repeats"},
        {"median_ms", "min_ms", "img_per_s", "peak_mib"},
    )
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ints | floats:
            if r.get(k, "") != "":
                r[k] = int(r[k]) if k in ints else float(r[k])
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def series_key(r: dict[str, Any]) -> str:
    return f"{r['impl']} {r['mixer']}/{r['backend']} {r['precision']}"


def fit_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log10 y on log10 x (None with fewer than 2 distinct x)."""
    pts = [(math.log10(x), math.log10(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def scaling(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Batch-1 latency and memory per series vs pixels, with fitted log-log slopes."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["task"] == "latency" and r["status"] == "ok":
            s = out.setdefault(series_key(r), {"pixels": [], "ms": [], "mib": []})
            s["pixels"].append(r["pixels"])
            s["ms"].append(r["median_ms"])
            s["mib"].append(r["peak_mib"])
    for s in out.values():
        s["time_slope"] = fit_slope(s["pixels"], s["ms"])
        s["mem_slope"] = fit_slope(s["pixels"], s["mib"])
        # Fixed costs (launches, the style branch) flatten the small sizes: the large ones show
        # how the work itself grows.
        top = sorted(zip(s["pixels"], s["ms"]))[-3:]
        s["time_slope_top3"] = (
            fit_slope([p for p, _ in top], [t for _, t in top]) if len(s["pixels"]) > 3 else None
        )
    return out


def fmt(x: Any, digits: int = 1) -> str:
    if x == "" or x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def write_markdown(rows: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    dev = meta.get("gpu") or meta["cpu"]
    lines = [
        f"# Benchmark {meta['date']} — {dev}",
        "",
        f"- device: {meta['device']} ({dev}); torch {meta['torch']}; threads {meta['threads']}; "
        f"commit {meta['commit']}",
        f"- load average (1/5/15 min) at start {meta['loadavg_start']}, at end {meta.get('loadavg_end', '–')}",
        f"- model: {meta['model']}; style {meta['style']}²; warm-up {meta['warmup']}, up to {meta['repeats']} "
        "timed calls per case",
        f"- peak memory: {meta['mem_kind']} ({MEM_KINDS[meta['mem_kind']]})",
        f"- fp32 math: matmul precision {meta.get('float32_matmul_precision', '?')}; cuDNN TF32 convolutions "
        # records from before the key was kept: unknown, not off (torch's default is on)
        f"{'?' if 'cudnn_allow_tf32' not in meta else 'on' if meta['cudnn_allow_tf32'] else 'off'}",
        f"- training step: {meta['loss']}",
        "- optional kernels imported: "
        + (", ".join(f"{m} {meta[m]}" for m in ("numba", "mamba_ssm") if m in meta) or "none"),
        f"- command: `{meta['command']}`",
    ]
    if meta.get("peers"):
        lines.append(
            f"- peers: {', '.join(meta['peers'])} (experiments/stytr2.py, random weights; {meta['peer_model']}); "
            + (
                "content and style both n² (--peer-style content), ours keep style "
                f"{meta['style']}²: ratios only where the sides are equal"
                if meta.get("peer_style") == "content"
                else f"style {meta['style']}² as ours (--peer-style same)"
            )
            + "; inference only (train rows skipped)"
        )
    lines.append("")
    impls = {r["impl"] for r in rows}
    speedups = [(column, header) for impl, (column, header) in SPEEDUPS.items() if impl in impls]
    head = ["series", "task", "batch", "content", "median ms", "min ms", "img/s", "peak MiB"]
    head += [header for _, header in speedups]
    head += ["status"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            series_key(r),
            r["task"],
            str(r["batch"]),
            f"{r['content']}²",
            fmt(r["median_ms"]),
            fmt(r["min_ms"]),
            fmt(r["img_per_s"], 2),
            fmt(r["peak_mib"]),
        ]
        cells += [_times(r[column]) if r[column] != "" else "–" for column, _ in speedups]
        cells.append(r["status"] + (f" ({r['notes']})" if r["notes"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    fits = scaling(rows)
    if fits:
        lines += ["", "Log-log slope vs pixels, batch-1 latency (1 = linear, 2 = quadratic):", ""]
        lines += [
            "| series | sizes | time slope | time slope, 3 largest sizes | memory slope |",
            "|---|---|---|---|---|",
        ]
        for name, s in fits.items():
            sizes = ", ".join(f"{round(math.sqrt(p))}²" for p in s["pixels"])
            slopes = (fmt(s[k], 2) for k in ("time_slope", "time_slope_top3", "mem_slope"))
            lines.append(f"| {name} | {sizes} | " + " | ".join(slopes) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_plot(rows: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s", path.name)
        return False
    fits = scaling(rows)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, s in fits.items():
        for ax, ys, slope in ((ax_t, s["ms"], s["time_slope"]), (ax_m, s["mib"], s["mem_slope"])):
            label = name if slope is None else f"{name} (slope {slope:.2f})"
            ax.plot(s["pixels"], ys, "s--" if name.split()[0] in PEERS else "o-", label=label)
    sides = sorted({round(math.sqrt(p)) for s in fits.values() for p in s["pixels"]})
    for ax, ylabel in (
        (ax_t, "median latency, batch 1 [ms]"),
        (ax_m, f"peak memory [MiB] ({meta['mem_kind']})"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([n * n for n in sides], [f"{n}²" for n in sides])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("content pixels (H·W, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    peer_style = "style = content" if meta.get("peer_style") == "content" else f"style {meta['style']}²"
    peers = f"; peers (dashed): {peer_style}, {', '.join(meta['peers'])}" if meta.get("peers") else ""
    fig.suptitle(
        f"SaMam, {meta.get('gpu') or meta['cpu']}, style {meta['style']}²{peers}, {meta['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_outputs(rows, meta, out: Path, plot: bool) -> None:
    add_speedups(rows)
    write_csv(rows, out / "results.csv")
    write_markdown(rows, meta, out / "results.md")
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if plot:
        write_plot(rows, meta, out / "scaling.png")


# ---- main -----------------------------------------------------------------------------


def free_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, … where an earlier run's results are: a second run on
    the same day replaced the first one's files without a word (an explicit --out still does)."""
    out, n = base, 1
    while (out / "results.csv").exists() or (out / "meta.json").exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replot is not None:
        meta = json.loads((args.replot / "meta.json").read_text())
        rows = read_csv(args.replot / "results.csv")
        if meta.get("peers") and "peer_style" not in meta:  # a record from before --peer-style: its rows say
            peer_rows = [r for r in rows if r["impl"] in PEERS]
            meta["peer_style"] = "content" if any(r["style"] != meta["style"] for r in peer_rows) else "same"
        write_outputs(rows, meta, args.replot, plot=True)
        print(f"benchmark: rewrote {args.replot / 'results.md'} and {args.replot / 'scaling.png'}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    gpu = device.type == "cuda"
    if args.threads:
        os.environ["NUMBA_NUM_THREADS"] = str(args.threads)  # read when numba is first imported
        torch.set_num_threads(args.threads)
    args.sizes = args.sizes or ([256, 512, 1024, 2048, 4096] if gpu else [256, 512, 1024])
    args.throughput_sizes = args.throughput_sizes or ([512] if gpu else [256])
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.repeats = max(1, args.repeats if args.repeats is not None else (10 if gpu else 3))
    time_limit = args.time_limit if args.time_limit is not None else (60.0 if gpu else 300.0)
    torch.set_float32_matmul_precision(args.matmul_precision)  # recorded in meta.json
    torch.manual_seed(args.seed)

    kwargs = model_kwargs(args.preset, args.model)
    if args.cuda_graph and (device.type != "cuda" or args.compile):
        raise SystemExit("--cuda-graph needs --device cuda and no --compile (it replays the eager kernels)")
    series = samam_series(kwargs, args.mixers, args.backend, device, args.compile, args.cuda_graph)
    if args.release_path is not None:
        series.append(release_series(args.release_path, kwargs, args.release_scan, device))
    peer_kw: dict[str, Any] = {}
    if args.peers:
        peer_kw = peer_kwargs(args.peer_model)
        series += peer_series(args.peers, peer_kw, device)
    elif args.peer_model:
        raise SystemExit("--peer-model: no --peers to apply it to")
    peer_desc = "StyTr2(" + ", ".join(f"{k}={v}" for k, v in peer_kw.items()) + ")"
    memory = PeakMemory(device)
    loss_fn, loss_desc = build_loss(args.loss) if "train" in args.tasks else (None, "not timed")

    meta = machine_info(device)
    name = meta.get("gpu", "cpu") if gpu else "cpu"
    out = args.out or free_folder(REPO / "experiments" / "results" / f"{meta['date'][:10]}-{slug(name)}")
    out.mkdir(parents=True, exist_ok=True)
    model_desc = (f"preset {args.preset} " if args.preset else "SaMam() ") + (
        " ".join(args.model) if args.model else "(released p=8)"
    )
    meta.update(
        device=args.device,
        model=model_desc.strip(),
        model_kwargs=kwargs,
        style=args.style_size,
        warmup=args.warmup,
        repeats=args.repeats,
        mem_kind=memory.kind,
        loss=loss_desc,
        compile=args.compile,
        cuda_graph=args.cuda_graph,
        peers=args.peers,
        peer_style=args.peer_style,
        peer_model=peer_desc if peer_kw else "StyTr2() (published sizes)",
        peer_model_kwargs=peer_kw,
    )
    print(
        "benchmark:",
        json.dumps({k: meta[k] for k in ("cpu", "gpu", "torch", "threads", "commit") if k in meta}),
    )
    print(f"benchmark: load average {meta['loadavg_start']} (1/5/15 min); peak memory = {memory.kind}")
    print(f"benchmark: training step loss = {loss_desc}")
    print(f"benchmark: writing to {out}")

    # `timeout` sends SIGTERM: finish like Ctrl-C, so the plot and tables are still written.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    rows: list[dict[str, Any]] = []
    t_start = time.monotonic()
    ctx = Context(args, device, memory, loss_fn, loss_desc, time_limit, t_start)
    interrupted = False
    try:
        # Precision outermost: with a --budget, every network's fp32 figures come first.
        for precision in args.precision:
            for s in series:
                run_series(ctx, s, precision, rows, on_row=lambda: write_outputs(rows, meta, out, plot=False))
    except KeyboardInterrupt:
        interrupted = True
        print("benchmark: interrupted; writing what was measured", file=sys.stderr)
    finally:
        meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
        meta.update(loaded_versions())
        try:
            write_outputs(rows, meta, out, plot=True)
        finally:
            signal.signal(signal.SIGTERM, previous)  # main() is also called in-process (tests, notebooks)
    print(f"benchmark: load average at end {meta['loadavg_end']}; {meta['elapsed_s']} s")
    print((out / "results.md").read_text())
    return 130 if interrupted else 0  # interrupted: the files hold what was measured, not every case


if __name__ == "__main__":
    sys.exit(main())
