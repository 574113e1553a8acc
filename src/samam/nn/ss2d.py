"""2-D selective scan (SS2D): K scan directions batched as one axis.

Shared by the encoder's S6 (learned A, D) and the decoder's S7 (A, D generated from the
style). Per direction k: x_proj gives [Δ-rank | B | C]; Δ = softplus(dt_proj(Δ-rank) + bias);
h_t = exp(ΔA) h_{t-1} + ΔB x_t; y_t = C_t h_t + D x_t; outputs mapped back to raster order
and summed over directions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from samam.ops.scan_orders import merge, scan, scan_indices
from samam.ops.selective_scan import ScanBackend


def _dt_init(
    k: int, d_inner: int, dt_rank: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4
):
    """Mamba's Δ init: softplus(bias) log-uniform in [dt_min, dt_max], weight ±dt_rank^-0.5."""
    bound = dt_rank**-0.5
    weight = torch.empty(k, d_inner, dt_rank).uniform_(-bound, bound)
    dt = torch.exp(torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    return weight, bias


class SS2D(nn.Module):
    """Selective scan over K directions of a (B, D, H, W) map.

    ``static_params=True`` (S6) owns A_log (K·D, N) and D (K·D,); otherwise (S7) the caller
    passes A (B, K·D, N) and D (B, K·D) per sample.
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int,
        dt_rank: int,
        scan_order: str,
        backend: ScanBackend,
        static_params: bool,
        k: int = 4,
    ):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank, self.k = d_inner, d_state, dt_rank, k
        self.scan_order = scan_order
        self.backend = backend
        bound = d_inner**-0.5  # nn.Linear's default init, per direction
        self.x_proj_weight = nn.Parameter(
            torch.empty(k, dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound)
        )
        w, b = _dt_init(k, d_inner, dt_rank)
        self.dt_proj_weight = nn.Parameter(w)  # (K, D, R)
        self.dt_proj_bias = nn.Parameter(b)  # (K, D)
        if static_params:
            a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * d_inner, 1)
            self.A_log = nn.Parameter(torch.log(a))  # (K·D, N), S4D-real init
            self.D = nn.Parameter(torch.ones(k * d_inner))  # (K·D,)
        else:
            self.register_parameter("A_log", None)
            self.register_parameter("D", None)

    # Cap on the elements of one pass's (samples, directions, D, L) tensors. Large images are
    # scanned in passes over samples and directions, so nothing reaches 2^31 elements (CUDA
    # kernels index with 32 bits; at 8192² one sample's four directions hold exactly 2^31)
    # and peak memory stays low: one direction per pass at 8192² (16 GiB peak on a CPU).
    # Up to 4096² at batch 1 the four directions still go in one pass.
    max_elements: int = 2**29

    def forward(
        self, x: torch.Tensor, A: torch.Tensor | None = None, D: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, D, H, W) → (B, D, H, W) float32. A (B, K·D, N), D (B, K·D) when not static."""
        b, d, h, w = x.shape
        if b == 0:
            return x.new_zeros((0, d, h, w), dtype=torch.float32)
        if self.A_log is not None:
            A = -torch.exp(self.A_log.float())  # (K·D, N), shared by every sample
            D = self.D.float()
        order, inverse = scan_indices(self.scan_order, h, w, x.device)
        per_direction = d * h * w
        dirs = max(1, min(self.k, self.max_elements // per_direction))
        samples = max(1, min(b, self.max_elements // (dirs * per_direction)))
        outs = []  # one pass when everything fits under the cap
        for s in range(0, b, samples):
            e = min(b, s + samples)
            xb = x[s:e]
            Ab = A[s:e] if A.dim() == 3 else A
            Db = D[s:e] if D.dim() == 2 else D
            out = None
            for k0 in range(0, self.k, dirs):
                k1 = min(self.k, k0 + dirs)
                y = self._scan(xb, Ab, Db, order, k0, k1)
                out = merge(y, order[k0:k1], inverse[k0:k1], h, w, out=out)
            outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _scan(
        self, x: torch.Tensor, A: torch.Tensor, D: torch.Tensor, order: torch.Tensor, k0: int, k1: int
    ) -> torch.Tensor:
        """Directions k0..k1-1 of x (B, D, H, W) → their outputs (B, k1-k0, D, L) float32."""
        b, d, h, w = x.shape
        kc, L = k1 - k0, h * w
        xs = scan(x, order[k0:k1])  # (B, kc, D, L)
        x_dbl = torch.matmul(self.x_proj_weight[k0:k1].to(xs.dtype), xs)  # (B, kc, R+2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(self.dt_proj_weight[k0:k1].to(dts.dtype), dts)  # (B, kc, D, L)
        A = A[..., k0 * d : k1 * d, :].contiguous()  # this pass's channels of the direction-major A, D
        D = D[..., k0 * d : k1 * d].contiguous()
        y = self.backend(
            xs.reshape(b, kc * d, L),
            dts.reshape(b, kc * d, L),
            A,
            Bs.contiguous(),  # (B, kc, N, L)
            Cs.contiguous(),
            D,
            delta_bias=self.dt_proj_bias[k0:k1].float().reshape(-1),
            delta_softplus=True,
        )  # (B, kc·D, L) float32
        return y.view(b, kc, d, L)


class StyleSSMParams(nn.Module):
    """S7: A = −exp(Linear(GAP e_s)), D = Linear(GAP e_s), per sample.

    Output channel c of the A generator maps to (k, d, n) by c = (k·D + d)·N + n and D's
    channel is k·D + d (direction-major), matching the release's layout."""

    def __init__(self, style_dim: int, k: int, d_inner: int, d_state: int):
        super().__init__()
        self.k, self.d_inner, self.d_state = k, d_inner, d_state
        self.A_gen = nn.Linear(style_dim, k * d_inner * d_state)
        self.D_gen = nn.Linear(style_dim, k * d_inner)

    def forward(self, style_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = style_vec.shape[0]
        A = -torch.exp(self.A_gen(style_vec).float()).view(b, self.k * self.d_inner, self.d_state)
        D = self.D_gen(style_vec).float()
        return A, D  # (B, K·D, N), (B, K·D)
