"""GraphedSaMam: replayed CUDA graphs give the eager forward's outputs (GPU tests skip
without CUDA); bad set-ups fail at construction with the reason."""

import collections
import contextlib

import pytest
import torch
from tiny import TINY, listening

from samam import SaMam
from samam.cuda_graph import GraphedSaMam


def test_cpu_network_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedSaMam(SaMam(**TINY, backend="torch").eval())


@pytest.mark.parametrize("kw, msg", [({"precision": "fp16"}, "precision"), ({"max_graphs": 0}, "max_graphs")])
def test_bad_arguments_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GraphedSaMam(SaMam(**TINY, backend="torch").eval(), **kw)


def _gpu_net(backend: str, **kw) -> SaMam:
    from samam.ops.selective_scan import mamba_available

    if backend == "mamba" and not mamba_available():
        pytest.skip("mamba_ssm not importable")
    torch.manual_seed(0)
    # listening: a graph replaying a stale style would otherwise stay within the tolerances
    return listening(SaMam(**{**TINY, **kw}, backend=backend)).cuda().eval()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "mamba"])
def test_gpu_replays_equal_the_eager_forward(backend):
    net = _gpu_net(backend)
    graphed = GraphedSaMam(net, max_graphs=2)
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [((2, 3, 48, 72), (2, 3, 64, 64)), ((1, 3, 40, 40), (1, 3, 64, 80))]
    for _ in range(2):  # the second round replays graphs captured in the first
        for cs, ss in shapes:
            c = torch.rand(cs, device="cuda", generator=gen)
            s = torch.rand(ss, device="cuda", generator=gen)
            with torch.no_grad():
                ref = net(c, s)
            torch.testing.assert_close(graphed(c, s), ref, rtol=1e-5, atol=1e-6)
    assert graphed.num_graphs == 2
    with torch.no_grad():
        e = net.embed_style(s)
        ref = net(c, style_embedding=e)
    torch.testing.assert_close(graphed(c, style_embedding=e), ref, rtol=1e-5, atol=1e-6)
    assert graphed.num_graphs == 2  # least recently used dropped
    bad = c.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        graphed(bad, s)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "mamba"])  # mamba + graph + bf16: what the benchmark times
def test_gpu_bf16_replay_equals_eager_bf16(backend):
    net = _gpu_net(backend)
    c, s = torch.rand(1, 3, 64, 64, device="cuda"), torch.rand(1, 3, 64, 64, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = net(c, s)
    out = GraphedSaMam(net, precision="bf16")(c, s)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
def test_gpu_fp32_graph_ignores_a_callers_autocast():
    net = _gpu_net("torch")
    c, s = torch.rand(1, 3, 64, 64, device="cuda"), torch.rand(1, 3, 64, 64, device="cuda")
    with torch.no_grad():
        ref = net(c, s)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = GraphedSaMam(net, precision="fp32")(c, s)  # captured inside the caller's autocast
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["style", "style_embedding"])
def test_fp32_graph_refuses_other_input_dtypes_up_front_even_under_a_callers_autocast(kind):
    """precision='fp32' captures with autocast off. The input check used to run under the
    caller's autocast, so it let bf16 inputs through, and the capture's forward (autocast off)
    then refused them, telling the caller to run under autocast. Stand-ins, no CUDA here: the
    CPU autocast plays the caller's (the check reads the inputs' device type), and capture
    must not be reached."""
    net = SaMam(**TINY, backend="torch").eval()
    graphed = GraphedSaMam.__new__(GraphedSaMam)  # __init__ refuses a CPU network
    vars(graphed).update(net=net, device=torch.device("cpu"), precision="fp32", warmup=1)
    vars(graphed).update(max_graphs=4, _graphs=collections.OrderedDict())

    def capture(*args):
        raise AssertionError("bf16 inputs reached the fp32 capture")

    graphed._capture = capture
    c = torch.rand(1, 3, 64, 64)
    other = (
        torch.rand(1, 3, 64, 64) if kind == "style" else net.embed_style(torch.rand(1, 3, 64, 64)).detach()
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for content, o, name in ((c.bfloat16(), other, "content"), (c, other.bfloat16(), kind)):
            with pytest.raises(
                TypeError, match=rf"{name} is torch.bfloat16 but GraphedSaMam\(precision='fp32'\)"
            ):
                graphed(content, **{kind: o})


def test_each_call_replays_on_its_own_inputs_with_a_stand_in_graph():
    """The replay bookkeeping of the GPU tests above, on CPU: each call's content and style reach
    the graph's static tensors, one graph per input kind and shapes, the output a copy. The
    stand-in graph replays by running the network on its static tensors, as a CUDA graph
    replays its kernels on their addresses."""
    from samam.cuda_graph import _Graph

    net = listening(SaMam(**TINY, backend="torch")).eval()
    graphed = GraphedSaMam.__new__(GraphedSaMam)  # __init__ refuses a CPU network
    vars(graphed).update(net=net, device=torch.device("cpu"), precision="fp32", warmup=1)
    vars(graphed).update(max_graphs=2, _graphs=collections.OrderedDict())

    def capture(kind, content, other):
        static = (content.clone(), other.clone())

        class Replay:
            def replay(self):
                output.copy_(net(static[0], **{kind: static[1]}))

        output = torch.empty_like(content)
        return _Graph(Replay(), static, output, [])

    graphed._capture = capture
    shapes = [((2, 3, 48, 72), (2, 3, 64, 64)), ((1, 3, 40, 40), (1, 3, 64, 80))]
    with torch.no_grad():
        for _ in range(2):  # the second round replays the graphs of the first
            for cs, ss in shapes:
                c, s = torch.rand(cs), torch.rand(ss)
                torch.testing.assert_close(graphed(c, s), net(c, s), rtol=1e-5, atol=1e-6)
        assert graphed.num_graphs == 2
        first = graphed(c, s)
        graphed(c, torch.rand(ss))
        assert not torch.equal(first, graphed._graphs[("style", cs, ss, c.dtype, s.dtype)].output)
        e = net.embed_style(torch.rand(ss))
        torch.testing.assert_close(
            graphed(c, style_embedding=e), net(c, style_embedding=e), rtol=1e-5, atol=1e-6
        )


def test_capture_runs_on_the_networks_device_when_another_is_current(monkeypatch):
    """A network on cuda:1 while cuda:0 is current (stylize.py device=cuda:1): the warm-up and
    the capture must run on cuda:1's streams. Before, the side stream was made on the current
    device and torch.cuda.graph captured on its per-process stream (made on cuda:0), so the
    network's kernels ran outside the capture. Simulated on CPU: stand-ins for torch.cuda's
    stream and graph calls track the current device as torch does."""
    current = [0]  # the current CUDA device's index
    streams, captures = [], []

    class Stream:
        def __init__(self, device=None):
            self.device = torch.device("cuda", current[0] if device is None else torch.device(device).index)
            streams.append(self)

        def wait_stream(self, other):
            pass

    @contextlib.contextmanager
    def make_current(index):
        previous, current[0] = current[0], index
        try:
            yield
        finally:
            current[0] = previous

    per_process_stream = Stream()  # torch.cuda.graph's default, made while cuda:0 was current

    @contextlib.contextmanager
    def graph(cuda_graph, pool=None, stream=None, **kwargs):
        stream = stream or per_process_stream
        with make_current(stream.device.index):  # torch.cuda.stream(s) makes s's device current
            captures.append((stream.device, current[0]))
            yield

    streams.clear()
    monkeypatch.setattr(torch.cuda, "device", lambda d: make_current(torch.device(d).index))
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device))
    monkeypatch.setattr(torch.cuda, "stream", lambda s: make_current(s.device.index))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")
    monkeypatch.setattr(torch.cuda, "graph", graph)
    net = SaMam(**TINY, backend="torch").eval()
    graphed = GraphedSaMam.__new__(GraphedSaMam)  # __init__ refuses a CPU network
    vars(graphed).update(net=net, device=torch.device("cuda", 1), precision="fp32", warmup=1)
    c, s = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 64, 64)
    entry = graphed._capture("style", c, s)
    assert {st.device for st in streams} == {torch.device("cuda", 1)}
    assert captures == [(torch.device("cuda", 1), 1)]
    assert current == [0]  # the caller's current device is restored
    with torch.no_grad():
        torch.testing.assert_close(entry.output, net(c, s))


@pytest.mark.gpu
def test_gpu_the_graphs_precision_decides_the_input_dtypes_not_the_callers_autocast():
    net = _gpu_net("torch")
    c, s = (torch.rand(1, 3, 64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    with torch.autocast("cuda", dtype=torch.bfloat16), pytest.raises(TypeError, match="precision='fp32'"):
        GraphedSaMam(net, precision="fp32")(c, s)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = net(c, s)
    out = GraphedSaMam(net, precision="bf16")(c, s)  # bf16 inputs, no autocast of the caller's
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
def test_gpu_inputs_that_require_grad_leave_no_history_on_the_static_inputs():
    """Inputs are copied into the graph's static tensors; with autograd on, an upstream output
    would keep its whole graph alive there, one more per call."""
    graphed = GraphedSaMam(_gpu_net("torch"))
    upstream = torch.rand(1, 3, 48, 72, device="cuda", requires_grad=True)
    s = torch.rand(1, 3, 64, 64, device="cuda")
    for _ in range(2):  # capture, then replay
        graphed(upstream * 1.0, s)
    (entry,) = graphed._graphs.values()
    assert not any(t.requires_grad for t in entry.inputs)


@pytest.mark.gpu
def test_gpu_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        GraphedSaMam(_gpu_net("torch").train())


def test_scan_indices_handed_out_in_a_block_are_recorded():
    from samam.ops.scan_orders import record_indices, scan_indices

    with record_indices() as kept:
        order, inverse = scan_indices("zigzag", 3, 5)
    scan_indices("zigzag", 4, 4)  # outside the block: not recorded
    assert len(kept) == 2 and kept[0] is order and kept[1] is inverse


def test_scan_indices_a_compiled_graph_copies_from_are_recorded():
    """GraphedSaMam around a torch.compile'd network: the compiled graph copies the cached
    indices through the samam::scan_indices op, so the captured CUDA graph reads the cached
    tensors at every replay; unrecorded, an LRU eviction freed memory the graph still read."""
    from samam.ops.scan_orders import record_indices, scan_indices

    def indices(x):
        order, inverse = scan_indices("zigzag", x.shape[-2], x.shape[-1], x.device)
        return order + inverse

    compiled = torch.compile(indices, backend="aot_eager", fullgraph=True)
    x = torch.zeros(3, 5)
    compiled(x)  # compiled outside the block, as GraphedSaMam warms up before capturing
    with record_indices() as kept:
        compiled(x)
    order, inverse = scan_indices("zigzag", 3, 5)
    assert len(kept) == 2 and kept[0] is order and kept[1] is inverse


@pytest.mark.gpu
def test_gpu_graph_keeps_its_scan_indices_alive_past_cache_eviction():
    """The LRU cache of scan indices may drop what a captured graph reads; the graph's own
    references keep that memory from being freed and reused."""
    from samam.ops import scan_orders

    net = _gpu_net("torch")
    graphed = GraphedSaMam(net)
    c, s = torch.rand(1, 3, 48, 72, device="cuda"), torch.rand(1, 3, 64, 64, device="cuda")
    with torch.no_grad():
        expected = net(c, s)
        graphed(c, s)  # captured
        (entry,) = graphed._graphs.values()
        assert entry.kept, "the graph holds no scan indices"
        scan_orders.clear_scan_cache()  # evicted from the cache
        # Same-size blocks are what the caching allocator would hand out in the freed ones' place.
        junk = [torch.full_like(t, -1) for t in entry.kept for _ in range(16)]
        torch.testing.assert_close(graphed(c, s), expected)
    del junk
