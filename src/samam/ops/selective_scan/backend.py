"""Choose the selective-scan backend once, at model construction.

`resolve_scan_backend("auto" | "torch" | "numba" | "mamba")` returns a ScanBackend: a
callable with selective_scan's signature that dispatches on the tensors' device. An explicit
request that cannot be met fails here, with the install command, not at the first forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, get_args

import torch

from samam.ops.selective_scan import mamba_scan, numba_scan
from samam.ops.selective_scan.reference import check_scan_shapes
from samam.ops.selective_scan.torch_scan import selective_scan_torch
from samam.ranks import first_process

log = logging.getLogger("samam")

BackendName = Literal["auto", "torch", "numba", "mamba"]
BACKENDS: tuple[str, ...] = get_args(BackendName)

ScanFn = Callable[..., torch.Tensor]


class ScanBackend:
    """Selective scan with a fixed backend per device type; see selective_scan_ref for shapes.

    cpu / cuda: the implementation for tensors on that device (None: refused with `why`);
    other devices (e.g. mps) use the pure-torch scan.
    """

    def __init__(self, name: str, cpu: tuple[str, ScanFn | None], cuda: tuple[str, ScanFn | None]):
        self.name = name
        self._impl = {"cpu": cpu, "cuda": cuda}

    def describe(self) -> str:
        (cpu_name, _), (cuda_name, _) = self._impl["cpu"], self._impl["cuda"]
        return f"{self.name} (cpu: {cpu_name}, cuda: {cuda_name})"

    def __repr__(self) -> str:
        return f"ScanBackend({self.describe()})"

    # Pickled by name and resolved again where it is unpickled (torch.save(net), DataLoader
    # workers, multiprocessing): the compiler-disabled mamba kernel cannot be pickled by reference.
    # It holds no state, so a deep copy shares it.
    def __reduce__(self):
        return resolve_scan_backend, (self.name,)

    def __deepcopy__(self, memo: dict) -> ScanBackend:
        return self

    def __call__(
        self,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None = None,
        delta_bias: torch.Tensor | None = None,
        delta_softplus: bool = True,
    ) -> torch.Tensor:
        """Shapes and semantics as :func:`selective_scan_ref`; dispatches on ``u.device``."""
        check_scan_shapes(u, delta, A, B, C, D, delta_bias)
        label, fn = self._impl.get(u.device.type, ("torch", selective_scan_torch))
        if fn is None:
            raise RuntimeError(f"scan backend {self.name!r} cannot run on {u.device.type} tensors: {label}")
        return fn(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=delta_softplus)


def _numba_or_none() -> ScanFn | None:
    # its kernels are custom ops, which torch.compile keeps in its graph
    return numba_scan.selective_scan_numba if numba_scan.numba_available() else None


# torch.compile cannot trace into mamba-ssm's CUDA extension: the compiled graph breaks at the
# scan and calls the kernel eagerly, and everything around it still compiles.
def _mamba_or_none() -> ScanFn | None:
    return torch.compiler.disable(mamba_scan.selective_scan_mamba) if mamba_scan.mamba_available() else None


def resolve_scan_backend(name: BackendName = "auto") -> ScanBackend:
    """Build the ScanBackend for `name` and log the choice (on the first process only).

    auto: CUDA → mamba if importable else torch; CPU → numba if importable else torch.
    torch: pure PyTorch everywhere. numba: numba on CPU (CUDA tensors raise).
    mamba: mamba-ssm on CUDA (CPU tensors raise); RuntimeError here if it cannot work.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; valid names: {', '.join(BACKENDS)}")
    torch_impl = ("torch", selective_scan_torch)
    if name == "torch":
        backend = ScanBackend(name, cpu=torch_impl, cuda=torch_impl)
    elif name == "numba":
        fn = _numba_or_none()
        if fn is None:
            raise RuntimeError(
                f"scan backend 'numba' requested but numba does not import; {numba_scan.INSTALL_HINT}"
            )
        backend = ScanBackend(
            name, cpu=("numba", fn), cuda=("numba runs on CPU only; use 'mamba' or 'torch'", None)
        )
    elif name == "mamba":
        fn = _mamba_or_none()
        problem = mamba_scan.mamba_unavailable_reason()
        if problem is None and not torch.cuda.is_available():
            problem = "CUDA is not available"
        if fn is None or problem is not None:
            raise RuntimeError(
                f"scan backend 'mamba' requested but {problem}. "
                f"Install mamba-ssm on a CUDA machine with: {mamba_scan.INSTALL_HINT}; "
                "or use scan backend 'auto' / 'torch'."
            )
        backend = ScanBackend(
            name, cpu=("mamba runs on CUDA only; use 'numba' or 'torch'", None), cuda=("mamba", fn)
        )
    else:
        cpu_fn = _numba_or_none()
        cuda_fn = _mamba_or_none() if torch.cuda.is_available() else None
        backend = ScanBackend(
            name,
            cpu=("numba", cpu_fn) if cpu_fn is not None else torch_impl,
            cuda=("mamba", cuda_fn) if cuda_fn is not None else torch_impl,
        )
    if first_process():  # every DDP rank builds the network alike: said once
        log.info("selective-scan backend: %s", backend.describe())
    return backend
