import importlib

import pytest
import torch
from tiny import TINY

from samam import SaMam
from samam.ops.scan_orders import SCAN_NAMES, merge, scan, scan_builder, scan_indices

SIZES = [(1, 1), (1, 6), (5, 1), (2, 2), (3, 4), (4, 4), (5, 7), (8, 6), (9, 9)]


def _steps(order: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    r, c = order // w, order % w
    return r.diff().abs(), c.diff().abs()


@pytest.mark.parametrize("name", SCAN_NAMES)
@pytest.mark.parametrize("hw", SIZES)
def test_orders_are_permutations_and_inverse_inverts(name, hw):
    h, w = hw
    order, inverse = scan_indices(name, h, w)
    assert order.shape == (4, h * w)
    for k in range(4):
        assert sorted(order[k].tolist()) == list(range(h * w))
        assert torch.equal(order[k][inverse[k]], torch.arange(h * w))
    x = torch.randn(2, 3, h, w)
    # merge ∘ scan sums the K identical copies: K·x
    assert torch.allclose(merge(scan(x, order), order, inverse, h, w), 4 * x)


@pytest.mark.parametrize("name", SCAN_NAMES)
def test_four_different_directions(name):
    """Two equal rows would still be permutations with inverses; the scan would lose a direction.
    Zigzag, spiral and Hilbert start one direction at each corner; cross starts two at top-left
    (rows, columns) and two at bottom-right (their reverses)."""
    for h, w in [(3, 4), (5, 5), (4, 7)]:
        order, _ = scan_indices(name, h, w)
        assert len({tuple(o.tolist()) for o in order}) == 4
        starts = sorted((int(o[0]) // w, int(o[0]) % w) for o in order)
        corners = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
        assert starts == ([(0, 0), (0, 0), (h - 1, w - 1), (h - 1, w - 1)] if name == "cross" else corners)


@pytest.mark.parametrize("name", SCAN_NAMES)
def test_merge_is_adjoint_of_scan(name):
    h, w = 5, 6
    order, inverse = scan_indices(name, h, w)
    x, y = torch.randn(2, 3, h, w), torch.randn(2, 4, 3, h * w)
    assert torch.allclose((scan(x, order) * y).sum(), (x * merge(y, order, inverse, h, w)).sum(), atol=1e-4)


@pytest.mark.parametrize("hw", SIZES + [(6, 11), (10, 3)])
@pytest.mark.parametrize("name", ["zigzag", "spiral"])
def test_continuous_orders_move_to_a_4_neighbour(name, hw):
    h, w = hw
    order, _ = scan_indices(name, h, w)
    for k in range(4):
        dr, dc = _steps(order[k], w)
        assert torch.all(dr + dc == 1), f"{name} direction {k} jumps on {h}x{w}"


@pytest.mark.parametrize("hw", [(4, 4), (8, 8), (4, 5), (6, 11), (9, 7), (12, 5)])
def test_hilbert_is_local(hw):
    h, w = hw
    order, _ = scan_indices("hilbert", h, w)
    for k in range(4):
        dr, dc = _steps(order[k], w)
        assert torch.all(torch.maximum(dr, dc) == 1)  # 8-adjacent everywhere
        assert int((dr + dc == 2).sum()) <= 1  # at most one diagonal step (generalised curve)


def test_zigzag_matches_the_spec_table():
    h, w = 4, 5
    order, _ = scan_indices("zigzag", h, w)
    idx = lambda i, j: i * w + j  # noqa: E731
    # (start, second token) per slot: 0 TL→right, 1 BR→left, 2 TR→down, 3 BL→up
    assert order[0, :2].tolist() == [idx(0, 0), idx(0, 1)]
    assert order[1, :2].tolist() == [idx(3, 4), idx(3, 3)]
    assert order[2, :2].tolist() == [idx(0, 4), idx(1, 4)]
    assert order[3, :2].tolist() == [idx(3, 0), idx(2, 0)]
    # snake: after the first row the path comes back right-to-left
    assert order[0, w : w + 2].tolist() == [idx(1, 4), idx(1, 3)]
    # even H: slot 1 is not the reverse of slot 0
    assert not torch.equal(order[1], order[0].flip(0))
    # the whole table, token by token: rows (slots 0, 1) or columns (2, 3) as snakes
    assert order.tolist() == [
        [0, 1, 2, 3, 4, 9, 8, 7, 6, 5, 10, 11, 12, 13, 14, 19, 18, 17, 16, 15],
        [19, 18, 17, 16, 15, 10, 11, 12, 13, 14, 9, 8, 7, 6, 5, 0, 1, 2, 3, 4],
        [4, 9, 14, 19, 18, 13, 8, 3, 2, 7, 12, 17, 16, 11, 6, 1, 0, 5, 10, 15],
        [15, 10, 5, 0, 1, 6, 11, 16, 17, 12, 7, 2, 3, 8, 13, 18, 19, 14, 9, 4],
    ]


def test_cross_is_raster_column_and_reverses():
    h, w = 3, 4
    order, _ = scan_indices("cross", h, w)
    rows = torch.arange(h * w)
    cols = torch.arange(h * w).view(h, w).t().reshape(-1)
    assert torch.equal(order, torch.stack([rows, cols, rows.flip(0), cols.flip(0)]))
    dr, dc = _steps(order[0], w)
    assert torch.any(dr + dc != 1)  # jumps at line ends


def test_indices_are_cached_per_size_and_device():
    a = scan_indices("zigzag", 7, 9, "cpu")
    assert scan_indices("zigzag", 7, 9, "cpu") is a
    assert scan_indices("zigzag", 9, 7, "cpu") is not a


def test_unknown_scan_name():
    with pytest.raises(ValueError, match="unknown scan order 'diagonal'"):
        scan_indices("diagonal", 4, 4)


def test_an_order_of_ones_own_by_its_import_path(scan_module):
    for h, w in SIZES:
        order, inverse = scan_indices(f"{scan_module}:diagonal", h, w)
        assert order.shape == (4, h * w)
        assert all(torch.equal(row.sort().values, torch.arange(h * w)) for row in order)
        assert torch.equal(inverse.gather(1, order), torch.arange(h * w).expand(4, -1))
        zigzag = scan_indices(f"{scan_module}:zigzag_again", h, w)
        assert all(torch.equal(a, b) for a, b in zip(zigzag, scan_indices("zigzag", h, w), strict=True))
    assert scan_indices(f"{scan_module}:diagonal", 7, 9) is scan_indices(f"{scan_module}:diagonal", 7, 9)


@pytest.mark.parametrize(
    "function, msg",
    [
        ("three", r"gave torch.int64 \(3, 1\) for a 1x1 grid; expected a \(4, 1\) int64 tensor"),
        ("int32", r"gave torch.int32 \(4, 1\)"),
        ("listed", "gave list for a 1x1 grid"),
        ("square_only", r"gave torch.int64 \(4, 9\) for a 3x5 grid; expected a \(4, 15\)"),
        ("repeated", "for a 3x5 grid is not a permutation"),
        ("shifted", "for a 1x1 grid is not a permutation"),
        ("NOT_A_FUNCTION", "is a int, not a function"),
        ("missing", r"does not import \(AttributeError: .*'missing'"),
    ],
)
def test_a_malformed_order_of_ones_own_is_refused_naming_it(scan_module, function, msg):
    """A wrong direction count failed only in the first forward; a non-permutation ran, scanning
    one token twice and another never."""
    with pytest.raises(ValueError, match=f"scan order '{scan_module}:{function}' {msg}"):
        scan_builder(f"{scan_module}:{function}")


def test_an_order_of_ones_own_that_raises_is_named_with_its_error_chained(scan_module):
    """An error inside the builder came out bare, naming neither the order nor the grid."""
    with pytest.raises(ValueError, match=f"scan order '{scan_module}:failing' failed for a 1x1 grid") as err:
        scan_builder(f"{scan_module}:failing")
    assert isinstance(err.value.__cause__, KeyError)
    scan_builder(f"{scan_module}:up_to_20_tokens")
    with pytest.raises(
        ValueError,
        match=rf"'{scan_module}:up_to_20_tokens' failed for a 7x9 grid \(RuntimeError: my table stops at 20",
    ) as err:
        scan_indices(f"{scan_module}:up_to_20_tokens", 7, 9)
    assert isinstance(err.value.__cause__, RuntimeError)


def test_an_order_that_does_not_import_or_a_typo_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"'no_such_orders:diagonal' does not import \(ModuleNotFoundError"):
        scan_builder("no_such_orders:diagonal")
    with pytest.raises(
        ValueError, match=r"unknown scan order 'zigzg'; expected one of .* or 'package.module:function'"
    ):
        scan_indices("zigzg", 4, 4)


def test_indices_built_under_inference_mode_serve_training():
    with torch.inference_mode():
        order, inverse = scan_indices("zigzag", 13, 3)
    x = torch.randn(1, 2, 13, 3, requires_grad=True)
    merge(scan(x, order), order, inverse, 13, 3).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 4.0))


def test_cpu_scatter_merge_equals_the_gather_merge():
    h, w = 6, 7
    order, inverse = scan_indices("hilbert", h, w)
    y = torch.randn(2, 4, 3, h * w, requires_grad=True)
    gathered = torch.gather(y, 3, inverse.view(1, 4, 1, h * w).expand_as(y)).sum(1).view(2, 3, h, w)
    merged = merge(y, order, inverse, h, w)
    torch.testing.assert_close(merged, gathered)
    g = torch.randn_like(merged)
    (ga,) = torch.autograd.grad(gathered, y, g)
    (gb,) = torch.autograd.grad(merged, y, g)
    torch.testing.assert_close(ga, gb)


def test_torch_compile_takes_cached_indices_as_constants():
    """The compiled graph must not rebuild the orders (arange, flip, scatter) on every call."""

    def roundtrip(x):
        h, w = x.shape[-2:]
        order, inverse = scan_indices("zigzag", h, w, x.device)
        return merge(scan(x, order) * 2, order, inverse, h, w)

    x = torch.randn(2, 3, 5, 7)
    explained = torch._dynamo.explain(roundtrip)(x)
    code = "\n".join(g.code for g in explained.graphs)
    assert explained.graph_break_count == 0
    assert not any(op in code for op in ("arange", "flip", "scatter")), code
    compiled = torch.compile(roundtrip, backend="eager")
    for shape in ((2, 3, 5, 7), (1, 3, 4, 9)):  # a new grid gets its own constants
        x = torch.randn(shape)
        torch.testing.assert_close(compiled(x), roundtrip(x))


@pytest.mark.parametrize("name", SCAN_NAMES)
def test_dynamic_compile_serves_every_grid_with_one_graph(name):
    """Under torch.compile(dynamic=True) the grid's sizes stay symbolic: the indices were
    constants of the graph, their sizes guards on h and w, so each new grid recompiled (and
    past Dynamo's recompile limit of 8 the network ran eagerly)."""
    from torch._dynamo.testing import CompileCounter

    def roundtrip(x):
        h, w = x.shape[-2:]
        order, inverse = scan_indices(name, h, w, x.device)
        return merge(scan(x, order) * 2, order, inverse, h, w)

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(roundtrip, backend=counter, dynamic=True, fullgraph=True)
    for hw in ((5, 7), (4, 9), (6, 6)):  # sizes 0 and 1 would be specialised (Dynamo's rule)
        x = torch.randn(2, 3, *hw)
        torch.testing.assert_close(compiled(x), roundtrip(x), rtol=0, atol=0)
    assert counter.frame_count == 1


def test_an_order_of_ones_own_compiles_with_dynamic_shapes_in_one_graph(scan_module):
    """The custom op's fake kernel took K from the built-in builders' table: KeyError for a path."""
    from torch._dynamo.testing import CompileCounter

    def roundtrip(x):
        h, w = x.shape[-2:]
        order, inverse = scan_indices(f"{scan_module}:diagonal", h, w, x.device)
        return merge(scan(x, order) * 2, order, inverse, h, w)

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(roundtrip, backend=counter, dynamic=True, fullgraph=True)
    for hw in ((5, 7), (4, 9), (6, 6)):
        x = torch.randn(2, 3, *hw)
        torch.testing.assert_close(compiled(x), roundtrip(x), rtol=0, atol=0)
    assert counter.frame_count == 1


def test_cache_is_capped_by_memory_not_by_count(monkeypatch):
    """Many grid sizes (photos at their own sizes) must not pile up index tensors."""
    from samam.ops import scan_orders

    scan_orders.clear_scan_cache()
    monkeypatch.setattr(scan_orders, "MAX_CACHE_BYTES", 200_000)
    for side in range(20, 60):  # 2 · 4 · L · 8 bytes each: 25.6 kB at 20², 115 kB at 59²
        newest = scan_indices("zigzag", side, side)
        assert scan_orders.cache_bytes() <= 200_000 or len(scan_orders._CACHE) == 1
    assert scan_indices("zigzag", 59, 59) is newest  # the newest stays
    big = scan_indices("zigzag", 100, 100)  # alone over the budget: kept, the rest dropped
    assert [entry for entry, _ in scan_orders._CACHE.values()] == [big]
    scan_orders.clear_scan_cache()


def test_cache_under_dynamic_compile_and_threads(monkeypatch):
    """The cache's bookkeeping reads no tensors (fake tensors under dynamic=True compile) and
    holds a lock (threads: a DataLoader or a server calling the network)."""
    import threading

    from samam.ops import scan_orders

    def roundtrip(x):
        h, w = x.shape[-2:]
        order, inverse = scan_indices("zigzag", h, w, x.device)
        return merge(scan(x, order), order, inverse, h, w)

    compiled = torch.compile(roundtrip, backend="eager", dynamic=True)
    for shape in ((2, 3, 5, 7), (1, 3, 4, 9)):
        x = torch.randn(shape)
        torch.testing.assert_close(compiled(x), roundtrip(x))

    monkeypatch.setattr(scan_orders, "MAX_CACHE_BYTES", 50_000)
    errors = []

    def hammer(offset):
        try:
            for side in range(8 + offset, 48, 4):
                scan_indices("cross", side, side + 1)
        except Exception as err:  # pragma: no cover - the failure being tested for
            errors.append(err)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert scan_orders.cache_bytes() <= 50_000 or len(scan_orders._CACHE) == 1
    scan_orders.clear_scan_cache()


def test_an_order_of_ones_own_edited_and_reloaded_is_used_and_tried_again(scan_module, tmp_path):
    """A notebook's importlib.reload of an edited orders module kept the first function's
    indices (cached under the path), and a new network used them, silently."""
    path = f"{scan_module}:zigzag_again"
    assert torch.equal(scan_indices(path, 3, 4)[0], scan_indices("zigzag", 3, 4)[0])
    module = importlib.import_module(scan_module)
    source = tmp_path / "orders" / f"{scan_module}.py"
    source.write_text(source.read_text().replace("def zigzag_again(h, w):\n    return zigzag_orders", "def zigzag_again(h, w):\n    return cross_orders").replace("import zigzag_orders", "import cross_orders, zigzag_orders"))  # fmt: skip
    importlib.reload(module)
    assert torch.equal(scan_indices(path, 3, 4)[0], scan_indices("cross", 3, 4)[0])
    source.write_text(
        source.read_text().replace("return cross_orders(h, w)", "return cross_orders(h, w)[:3]")
    )
    importlib.reload(module)
    with pytest.raises(ValueError, match=r"zigzag_again' gave torch.int64 \(3, 1\)"):
        SaMam(**TINY, scan=path)
