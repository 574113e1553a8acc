"""Fixed-shape inference replayed from captured CUDA graphs.

At 256²–512² one SaMam forward is a few hundred small kernels, and launching them one by one
from Python takes longer than running them. A CUDA graph records the launches once per input
shape and replays them with a single call: same kernels, same order, so the outputs equal the
eager forward's.

    graphed = GraphedSaMam(net.cuda().eval())
    y = graphed(content, style)                     # first call per shape: warm up + capture
    y = graphed(content2, style2)                   # same shapes: one replay
    y = graphed(content, style_embedding=e_s)       # the embedding path is its own graph
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Literal

import torch
from torch import nn

from samam.ops.scan_orders import record_indices

Precision = Literal["fp32", "bf16"]


@dataclasses.dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, torch.Tensor]  # static content and style (or style embedding)
    output: torch.Tensor
    kept: list[torch.Tensor]  # the scan indices the graph reads: alive as long as the graph


class GraphedSaMam:
    """Callable like ``SaMam.forward``; one captured graph per (input kind, shapes, dtypes).

    The network must be on a CUDA device and in eval mode, and its weights must not be
    replaced afterwards (graphs hold their addresses; in-place updates are seen). Inputs are
    validated exactly as the eager forward does, before they are copied into the graph's
    static tensors. Each graph keeps its activation memory, so at most ``max_graphs`` are
    kept (least recently used dropped). ``bf16`` captures under autocast; the selective scan
    keeps its fp32 state as in the eager path. ``fp32`` captures with autocast off, even
    inside a caller's autocast, so it takes inputs of the weights' dtype only.
    """

    def __init__(self, net: nn.Module, precision: Precision = "fp32", max_graphs: int = 4, warmup: int = 2):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if max_graphs < 1 or warmup < 1:
            raise ValueError(f"max_graphs and warmup must be ≥ 1, got {max_graphs} and {warmup}")
        device = next(net.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the network on a CUDA device; it is on {device}")
        if net.training:
            raise ValueError("call net.eval() first: a captured graph replays one fixed mode")
        self.net, self.device, self.precision = net, device, precision
        self.max_graphs, self.warmup = max_graphs, warmup
        self._graphs: collections.OrderedDict[tuple, _Graph] = collections.OrderedDict()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":  # also inside a caller's autocast: the graph is fp32
            return torch.autocast("cuda", enabled=False)
        # A graph replays the casts it captured, so autocast's cache of cast weights is off.
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def __call__(
        self,
        content: torch.Tensor,
        style: torch.Tensor | None = None,
        *,
        style_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kind, other = ("style", style) if style is not None else ("style_embedding", style_embedding)
        if self.precision == "fp32":
            weights = next(self.net.parameters()).dtype
            for name, x in (("content", content), (kind, other)):
                if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != weights:
                    raise TypeError(
                        f"{name} is {x.dtype} but GraphedSaMam(precision='fp32') runs the network in "
                        f"{weights} whatever autocast the caller runs: convert it, or use precision='bf16'"
                    )
        # Checked as the graph will run them: the caller's autocast plays no part in the graph.
        with self._autocast():
            self.net.check_inputs(content, style, style_embedding)
        if content.device != self.device or other.device != self.device:
            raise ValueError(f"inputs must be on the network's device {self.device}")
        key = (kind, tuple(content.shape), tuple(other.shape), content.dtype, other.dtype)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(kind, content, other)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        # Copied with autograd on, an input that requires grad (an upstream network's output)
        # would hang its graph on the static tensors, and every call would add one more.
        with torch.no_grad():
            entry.inputs[0].copy_(content)
            entry.inputs[1].copy_(other)
        entry.graph.replay()
        return entry.output.clone()  # the static output is overwritten by the next replay

    def _capture(self, kind: str, content: torch.Tensor, other: torch.Tensor) -> _Graph:
        static = (content.detach().clone(), other.detach().clone())

        def run() -> torch.Tensor:
            return self.net(static[0], **{kind: static[1]})

        # New streams, torch.cuda.graph's synchronize and the streams made current all follow the
        # current device, which need not be the network's (device=cuda:1): its kernels would run
        # outside the capture. torch.cuda.graph's own capture stream is made once per process,
        # on whichever device was current then, so the capture gets this device's side stream.
        with torch.cuda.device(self.device):
            # Warm-up on a side stream, as torch.cuda.graphs asks: lazy inits, cuDNN/cuBLAS
            # algorithm choice and the scan-order cache all happen before capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad(), self._autocast():
                for _ in range(self.warmup):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            capture = torch.cuda.graph(graph, stream=side)
            with torch.no_grad(), capture, self._autocast(), record_indices() as kept:
                output = run()
        return _Graph(graph, static, output, kept)
