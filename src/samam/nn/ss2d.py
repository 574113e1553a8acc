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

from samam.ops.scan_orders import merge, scan, scan_builder, scan_indices
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
        scan_builder(scan_order)  # an unknown or malformed order fails here, not in forward
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
    # scanned in passes over samples, directions and, past one direction, ranges of channels,
    # so nothing reaches 2^31 elements (CUDA kernels index with 32 bits; at 8192² one sample's
    # four directions hold exactly 2^31) and peak memory stays low: one direction per pass at
    # 8192² with p=8 (16 GiB peak on a CPU), and a quarter of the channels with p=4. Up to
    # 4096² at batch 1 (p=8) the four directions still go in one pass.
    max_elements: int = 2**29

    def forward(
        self, x: torch.Tensor, A: torch.Tensor | None = None, D: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, D, H, W) → (B, D, H, W) float32. A (B, K·D, N), D (B, K·D) when not static."""
        b, d, h, w = x.shape
        per_direction = d * h * w
        # Only a direction past the cap needs forward_parts' ranges of channels. Other maps stay
        # out of its loops over ranges: torch.compile cannot resume after a graph break inside a
        # loop (the compiler-disabled mamba kernel breaks it), so all of the scan's ops around
        # the kernel ran eagerly there.
        if per_direction > self.max_elements:
            return self.forward_parts([x], A, D)[0]
        if b == 0:
            return x.new_zeros((0, d, h, w), dtype=torch.float32)
        A, D = self._ssm_params(A, D)
        order, inverse = scan_indices(self.scan_order, h, w, x.device)
        dirs, samples = self._pass_sizes(b, per_direction)
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

    def forward_parts(
        self, parts: list[torch.Tensor], A: torch.Tensor | None = None, D: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The scan of a map given as its channel parts (B, D_i, H, W), Σ D_i = D in channel
        order → the output's parts (B, D_i, H, W) float32, so a caller whose (B, D, H, W) maps
        would outgrow 32-bit indexing never builds one. Every channel's recurrence is its own;
        only x_proj reads all channels, and it sums over the parts."""
        b, _, h, w = parts[0].shape
        if b == 0:
            return [x.new_zeros(x.shape, dtype=torch.float32) for x in parts]
        A, D = self._ssm_params(A, D)
        order, inverse = scan_indices(self.scan_order, h, w, parts[0].device)
        ranges, first = [], 0  # (part, its channels c0..c1-1, c0's channel in the whole map)
        for i, x in enumerate(parts):
            d = x.shape[1]
            # a whole part per pass when it fits (a comparison: no symbolic step under torch.compile)
            width = d if d * h * w <= self.max_elements else max(1, self.max_elements // (h * w))
            ranges += [(i, c0, min(d, c0 + width), first + c0) for c0 in range(0, d, width)]
            first += d
        dirs, samples = self._pass_sizes(b, max(c1 - c0 for _, c0, c1, _ in ranges) * h * w)
        outs: list[list[torch.Tensor]] = [[] for _ in parts]  # one pass when everything fits under the cap
        for s in range(0, b, samples):
            e = min(b, s + samples)
            Ab = A[s:e] if A.dim() == 3 else A
            Db = D[s:e] if D.dim() == 2 else D
            xs = [parts[i][s:e, c0:c1] for i, c0, c1, _ in ranges]
            merged: list[torch.Tensor | None] = [None] * len(ranges)
            for k0 in range(0, self.k, dirs):
                k1 = min(self.k, k0 + dirs)
                ys = self._scan_parts(xs, [c for *_, c in ranges], Ab, Db, order, k0, k1)
                for r, y in enumerate(ys):
                    merged[r] = merge(y, order[k0:k1], inverse[k0:k1], h, w, out=merged[r])
            for i in range(len(parts)):
                mine = [m for (j, *_), m in zip(ranges, merged, strict=True) if j == i]
                outs[i].append(mine[0] if len(mine) == 1 else torch.cat(mine, dim=1))
        return [out[0] if len(out) == 1 else torch.cat(out) for out in outs]

    def _ssm_params(
        self, A: torch.Tensor | None, D: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The scan's A (K·D, N) and D (K·D) float32 when static (S6), else the given per-sample ones."""
        if self.A_log is None:
            return A, D
        return -torch.exp(self.A_log.float()), self.D.float()  # shared by every sample

    def _pass_sizes(self, b: int, per_direction: int) -> tuple[int, int]:
        """(directions, samples) per pass, keeping a pass's (samples, directions, d, L) under
        max_elements; per_direction = d·L of one sample's direction. Chosen by comparisons, which
        torch.compile turns into guards and plain ints: a division of symbolic sizes
        (cap // (d·h·w)) would stay symbolic, and its Min/Max would enter every index of the
        pass's slices of A, D (inductor's sympy then took minutes per kernel on a new content
        size with dynamic shapes). A loop, not a generator: that would be a frame of its own."""
        dirs = self.k
        while dirs > 1 and dirs * per_direction > self.max_elements:
            dirs -= 1
        if b * dirs * per_direction <= self.max_elements:
            return dirs, b
        return dirs, max(1, self.max_elements // (dirs * per_direction))

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

    def _scan_parts(
        self,
        xs: list[torch.Tensor],
        firsts: list[int],
        A: torch.Tensor,
        D: torch.Tensor,
        order: torch.Tensor,
        k0: int,
        k1: int,
    ) -> list[torch.Tensor]:
        """Directions k0..k1-1 of channel ranges xs (B, D_r, H, W), range r starting at channel
        firsts[r] of the map → their outputs (B, k1-k0, D_r, L) float32."""
        b, _, h, w = xs[0].shape
        kc, L = k1 - k0, h * w
        seqs = [scan(x, order[k0:k1]) for x in xs]  # (B, kc, D_r, L)
        x_proj = self.x_proj_weight[k0:k1]  # (kc, R+2N, D)
        x_dbl = None  # (B, kc, R+2N, L): x_proj sums over every channel, so over the ranges
        for seq, c in zip(seqs, firsts, strict=True):
            term = torch.matmul(x_proj[..., c : c + seq.shape[2]].to(seq.dtype), seq)
            x_dbl = term if x_dbl is None else x_dbl + term
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        Bs, Cs = Bs.contiguous(), Cs.contiguous()  # (B, kc, N, L)
        ys = []
        for seq, c in zip(seqs, firsts, strict=True):
            d = seq.shape[2]
            # this pass's rows of the direction-major A, D: k·D + c … k·D + c + d - 1 for each k
            dt_w, bias = self.dt_proj_weight[k0:k1, c : c + d], self.dt_proj_bias[k0:k1, c : c + d]
            Ar = A.unflatten(-2, (self.k, self.d_inner))[..., k0:k1, c : c + d, :].flatten(-3, -2)
            Dr = D.unflatten(-1, (self.k, self.d_inner))[..., k0:k1, c : c + d].flatten(-2)
            dt = torch.matmul(dt_w.to(dts.dtype), dts)  # (B, kc, d, L)
            y = self.backend(
                seq.reshape(b, kc * d, L),
                dt.reshape(b, kc * d, L),
                Ar.contiguous(),  # (B, kc·d, N) or (kc·d, N)
                Bs,
                Cs,
                Dr.contiguous(),
                delta_bias=bias.float().reshape(-1),
                delta_softplus=True,
            )  # (B, kc·d, L) float32
            ys.append(y.view(b, kc, d, L))
        return ys


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
