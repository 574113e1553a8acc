"""Scan orders: K permutations of the H·W raster tokens, built once and cached.

A scan order is an index tensor ``order`` of shape (K, L): direction k visits raster token
``order[k, t]`` at step t. Its inverse ``inverse[k, order[k, t]] = t`` maps a direction's
output back to raster order. Scan (gather by ``order``) and merge (gather by ``inverse``)
are adjoint permutations, so the backward of one is the other.

The release rebuilt its orders in Python on every forward (2.5 ms at 64×64, 8 times per
forward); here they are built once per (name, H, W, device) and reused.

An order of one's own needs no edit here: ``model.scan=package.module:function`` names a
builder ``(h, w) -> (K=4, h·w) int64``, checked on small grids before it is first used, and
again if a reload of its module gives a new function (:func:`scan_builder`).
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Literal, get_args

import torch

from samam.user_code import resolve

ScanName = Literal["zigzag", "cross", "spiral", "hilbert"]
SCAN_NAMES: tuple[str, ...] = get_args(ScanName)
SCAN_PATH_FORM = "package.module:function"  # how model.scan names an order of one's own


def _raster(h: int, w: int) -> torch.Tensor:
    return torch.arange(h * w, dtype=torch.long).view(h, w)


def _snake_rows(grid: torch.Tensor) -> torch.Tensor:
    """Rows as a snake: row 0 left→right, row 1 right→left, …"""
    rows = grid.clone()
    rows[1::2] = rows[1::2].flip(-1)
    return rows.reshape(-1)


def zigzag_orders(h: int, w: int) -> torch.Tensor:
    """SaMam's four continuous boustrophedon paths (SPEC §3), slot order of the release.

    k=0 top-left, first move right, rows as a snake downwards;
    k=1 bottom-right, first move left, rows as a snake upwards;
    k=2 top-right, first move down, columns as a snake leftwards;
    k=3 bottom-left, first move up, columns as a snake rightwards.
    """
    g = _raster(h, w)
    k0 = _snake_rows(g)
    k1 = _snake_rows(g.flip(0, 1))
    k2 = _snake_rows(g.flip(1).t())
    k3 = _snake_rows(g.flip(0).t())
    return torch.stack([k0, k1, k2, k3])  # (K=4, L)


def cross_orders(h: int, w: int) -> torch.Tensor:
    """VMamba's cross scan: row-major, column-major, and the reverses of both."""
    g = _raster(h, w)
    rows, cols = g.reshape(-1), g.t().reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])  # (K=4, L)


def _spiral(h: int, w: int) -> torch.Tensor:
    """Clockwise spiral from the top-left corner inwards (continuous for any h, w)."""
    g = _raster(h, w)
    out: list[torch.Tensor] = []
    while g.numel():
        out.append(g[0])
        g = g[1:].t().flip(0)  # rotate the remainder counter-clockwise
    return torch.cat(out)


def spiral_orders(h: int, w: int) -> torch.Tensor:
    """Four continuous spirals: clockwise in from top-left, then the same path from the
    other three corners (by flipping the grid), so every corner starts one direction."""
    g = _raster(h, w)
    paths = []
    for flip in ((), (1,), (0, 1), (0,)):
        fg = g.flip(flip) if flip else g
        paths.append(fg.reshape(-1)[_spiral(h, w)])
    return torch.stack(paths)  # (K=4, L)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int, out: list[tuple[int, int]]) -> None:
    """Generalised Hilbert curve (Červený's gilbert2d) over any rectangle."""
    w, h = abs(ax + ay), abs(bx + by)
    dax, day = (ax > 0) - (ax < 0), (ay > 0) - (ay < 0)
    dbx, dby = (bx > 0) - (bx < 0), (by > 0) - (by < 0)
    if h == 1:
        for _ in range(w):
            out.append((x, y))
            x, y = x + dax, y + day
        return
    if w == 1:
        for _ in range(h):
            out.append((x, y))
            x, y = x + dbx, y + dby
        return
    ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
    w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
    if 2 * w > 3 * h:
        if w2 % 2 and w > 2:
            ax2, ay2 = ax2 + dax, ay2 + day
        _gilbert(x, y, ax2, ay2, bx, by, out)
        _gilbert(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by, out)
    else:
        if h2 % 2 and h > 2:
            bx2, by2 = bx2 + dbx, by2 + dby
        _gilbert(x, y, bx2, by2, ax2, ay2, out)
        _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2, out)
        _gilbert(
            x + (ax - dax) + (bx2 - dbx),
            y + (ay - day) + (by2 - dby),
            -bx2,
            -by2,
            -(ax - ax2),
            -(ay - ay2),
            out,
        )


def _hilbert(h: int, w: int) -> torch.Tensor:
    pts: list[tuple[int, int]] = []
    if w >= h:
        _gilbert(0, 0, w, 0, 0, h, pts)
    else:
        _gilbert(0, 0, 0, h, w, 0, pts)
    return torch.tensor([y * w + x for x, y in pts], dtype=torch.long)


def hilbert_orders(h: int, w: int) -> torch.Tensor:
    """Generalised Hilbert curve and its mirror images from the four corners.

    Keeps 2-D neighbourhoods closer along the sequence than boustrophedon paths. Every step
    is 4-adjacent except, on some odd-by-even rectangles, a single diagonal step (a known
    property of the generalised curve)."""
    g = _raster(h, w)
    base = _hilbert(h, w)
    paths = []
    for flip in ((), (0, 1), (1,), (0,)):
        fg = g.flip(flip) if flip else g
        paths.append(fg.reshape(-1)[base])
    return torch.stack(paths)  # (K=4, L)


_BUILDERS = {
    "zigzag": zigzag_orders,
    "cross": cross_orders,
    "spiral": spiral_orders,
    "hilbert": hilbert_orders,
}


def scan_builder(name: str) -> Callable[[int, int], torch.Tensor]:
    """The function that builds scan order ``name``: one of SCAN_NAMES, or an order of one's own
    given as ``"package.module:function"`` (its module importable), ``(h, w) -> (K=4, L)`` int64
    whose rows are permutations of range(L). Imported and tried on a few small grids once, so
    that a wrong builder fails at construction, not at the first forward (or silently). The path
    is looked up at each call: a module reloaded after an edit (``importlib.reload`` in a
    notebook) gives its new function, which is tried in turn and replaces the old one's indices."""
    if name in _BUILDERS:
        builder = _BUILDERS[name]
    elif isinstance(name, str) and ":" in name:
        builder = resolve(name, "scan order", SCAN_PATH_FORM)
        if not callable(builder):
            raise ValueError(
                f"scan order {name!r} is a {type(builder).__name__}, not a function (h, w) -> order"
            )
    else:
        raise ValueError(f"unknown scan order {name!r}; expected one of {SCAN_NAMES} or '{SCAN_PATH_FORM}'")
    if _TRIED.get(name) is builder:
        return builder
    # on the CPU whatever the default device: a network built under `with torch.device("meta")`
    # has no values to check
    with torch.device("cpu"), torch.inference_mode(False), torch.no_grad():
        for h, w in ((1, 1), (3, 5), (4, 4)):
            _inverse(name, _build(name, builder, h, w), h, w)
    with _LOCK:  # indices of the function this name gave before (cached under the name alone)
        for key in [key for key in _CACHE if key[0] == name]:
            del _CACHE[key]
        _TRIED[name] = builder
    return builder


# name → the builder last tried under it
_TRIED: dict[str, Callable[[int, int], torch.Tensor]] = {}


def _build(name: str, builder: Callable[[int, int], torch.Tensor], h: int, w: int) -> object:
    """``builder(h, w)``; an error inside it names the order (an import path: whose builder failed)."""
    try:
        return builder(h, w)
    except Exception as e:
        raise ValueError(f"scan order {name!r} failed for a {h}x{w} grid ({type(e).__name__}: {e})") from e


def _inverse(name: str, order: object, h: int, w: int) -> torch.Tensor:
    """``inverse[k, order[k, t]] = t`` of an order checked to be what SS2D needs: K=4 rows, each a
    permutation of the h·w tokens (else a token would be scanned twice and another never)."""
    L = h * w
    expected = f"a (4, {L}) int64 tensor: 4 directions, each a permutation of the {h}x{w} grid's tokens"
    if not isinstance(order, torch.Tensor) or order.dtype != torch.long or tuple(order.shape) != (4, L):
        got = (
            f"{order.dtype} {tuple(order.shape)}" if isinstance(order, torch.Tensor) else type(order).__name__
        )
        raise ValueError(f"scan order {name!r} gave {got} for a {h}x{w} grid; expected {expected}")
    inverse = torch.full((4, L), -1, dtype=torch.long, device=order.device)
    if order.min() >= 0 and order.max() < L:
        inverse.scatter_(1, order, torch.arange(L, device=order.device).expand_as(order).contiguous())
    if (inverse < 0).any():  # L entries per row: a token missing means another repeated or out of range
        raise ValueError(f"scan order {name!r} for a {h}x{w} grid is not a permutation; expected {expected}")
    return inverse


_RECORDERS: list[list[torch.Tensor]] = []


@contextlib.contextmanager
def record_indices() -> Iterator[list[torch.Tensor]]:
    """Collects every index tensor :func:`scan_indices` hands out inside the block (or copies
    from, in a compiled graph). A captured CUDA graph holds raw pointers to them: its owner keeps
    these references, so an LRU eviction cannot free (and reuse) memory the graph still reads."""
    kept: list[torch.Tensor] = []
    _RECORDERS.append(kept)
    try:
        yield kept
    finally:
        _RECORDERS.remove(kept)


def scan_indices(
    name: str, h: int, w: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached ``(order, inverse)``, each (K, L) int64 on ``device``, for an H×W token grid."""
    if torch.compiler.is_compiling():
        return _indices_op(name, h, w, torch.device(device))
    return _recorded_indices(name, h, w, device)


def _recorded_indices(
    name: str, h: int, w: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached indices, added to every open :func:`record_indices` block."""
    out = _indices(name, h, w, device)
    for kept in _RECORDERS:
        kept.extend(out)
    return out


# Under torch.compile the graph fetches the cached indices through a custom op, which takes h
# and w as (symbolic) sizes: one graph with dynamic shapes serves every grid. As constants of
# the graph they specialised it to one grid (their sizes became guards on the content size: a
# recompile per size, eagerly past Dynamo's recompile limit).
@torch.library.custom_op("samam::scan_indices", mutates_args=())
def _indices_op(name: str, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # copies: the compiled graph owns an op's outputs (inductor may reuse their memory); the
    # originals are recorded, as a CUDA graph captured around the compiled one copies from them
    order, inverse = _recorded_indices(name, h, w, device)
    return order.clone(), inverse.clone()


@_indices_op.register_fake
def _(name, h, w, device):
    # K=4 directions: scan_builder refuses any other count (and runs no builder on fake tensors)
    return tuple(torch.empty(4, h * w, dtype=torch.long, device=device) for _ in range(2))


# Index tensors per (order, H, W, device), least recently used dropped first once they hold
# more than MAX_CACHE_BYTES (the newest is always kept). A cap by count would not do:
# stylising photos of many sizes adds ~12 MB per 4000×3000 size (p=8), on the GPU.
MAX_CACHE_BYTES = 256 * 2**20
# key → ((order, inverse), bytes); the size is a plain int: no tensor is read (fake tensors
# under torch.compile(dynamic=True) cannot be).
_CACHE: collections.OrderedDict[tuple[str, int, int, str], tuple[tuple[torch.Tensor, torch.Tensor], int]] = (
    collections.OrderedDict()
)
_LOCK = threading.Lock()


def _cached_bytes() -> int:  # caller holds _LOCK
    return sum(size for _, size in _CACHE.values())


def cache_bytes() -> int:
    with _LOCK:
        return _cached_bytes()


def clear_scan_cache() -> None:
    """Drop every cached index tensor (captured CUDA graphs keep their own references)."""
    with _LOCK:
        _CACHE.clear()


def _indices(name: str, h: int, w: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    builder = scan_builder(name)  # first: a reloaded module's new function drops the old indices
    key = (name, h, w, str(torch.device(device)))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit[0]
    if h < 1 or w < 1:
        raise ValueError(f"scan grid must be at least 1x1, got {h}x{w}")
    # Cached tensors outlive the caller's mode: built under inference_mode they would be
    # inference tensors, which a later training step cannot save for backward. Built on the CPU
    # (then moved), so the default device cannot make them meta tensors.
    with torch.device("cpu"), torch.inference_mode(False), torch.no_grad():
        order = _build(name, builder, h, w)
        inverse = _inverse(name, order, h, w)
        entry = order.contiguous().to(device), inverse.to(device)
    with _LOCK:
        _CACHE[key] = entry, 2 * 8 * len(order) * h * w  # order and inverse, int64
        while len(_CACHE) > 1 and _cached_bytes() > MAX_CACHE_BYTES:
            _CACHE.popitem(last=False)
    return entry


def scan(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) → (B, K, D, L): each direction's token sequence."""
    b, d, h, w = x.shape
    # size(), not .shape: with dynamic shapes torch 2.14's Dynamo cannot unpack .shape of this
    # slice of a constant index tensor ("does not implement python_type()") and breaks the
    # graph here, inside SS2D's pass loops, so each SS2D call ran eagerly
    k, L = order.size()
    flat = x.reshape(b, 1, d, L).expand(b, k, d, L)
    return torch.gather(flat, 3, order.view(1, k, 1, L).expand(b, k, d, L))


def merge(
    y: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    h: int,
    w: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, K, D, L) → (B, D, H, W): each direction mapped back to raster order, summed.

    With ``out`` (B, D, H, W) the directions are added into it in place, so a caller that
    merges its directions in several calls gets the same sums as one call."""
    b, k, d, L = y.shape
    if y.device.type == "cpu":
        # Scatter-add by ``order``: 2.5× faster than a gather by ``inverse`` on CPU. On CUDA it
        # would add through atomics in no fixed order; the gather keeps GPU sums deterministic.
        if out is None:
            out = y.new_zeros(b, d, h, w)
        flat = out.view(b, d, L)
        for i in range(k):
            flat.index_add_(2, order[i], y[:, i])
        return out
    back = torch.gather(y, 3, inverse.view(1, k, 1, L).expand(b, k, d, L)).sum(1).view(b, d, h, w)
    return back if out is None else out.add_(back)
