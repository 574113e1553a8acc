"""An output norm of one's own, given by import path (``model.out_norm=module:Class``): the
DecoderNorm interface, channel parts, checkpoints and the errors of a wrong path."""

import re

import pytest
import torch
from tiny import TINY, listening
from user_norms import StyleGroupNorm

from samam import SaMam, load_model
from samam.checkpoint import CheckpointError, infer_config
from samam.nn import blocks

GROUP = "user_norms:StyleGroupNorm"
SCALED = "user_norms:ScaledInstanceNorm"


def test_a_norm_of_ones_own_builds_forwards_and_trains():
    torch.manual_seed(0)
    net = listening(SaMam(**TINY, out_norm=GROUP, backend="torch")).train()
    c, s = torch.rand(2, 3, 40, 48), torch.rand(2, 3, 64, 64)
    assert net.config["out_norm"] == GROUP  # checkpoints keep the path
    assert all(isinstance(b.out_norm, StyleGroupNorm) for g in net.decoder for b in g.blocks)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in net.named_parameters() if ".out_norm." in n}
    for _ in range(2):
        opt.zero_grad()
        net(c, s).square().mean().backward()
        opt.step()
    assert before and all(not torch.equal(p, before[n]) for n, p in net.named_parameters() if n in before)
    with torch.no_grad():
        other = net(c, s.flip(0))
        assert torch.isfinite(other).all() and not torch.allclose(other, net(c, s))  # the style reaches it


@torch.no_grad()
def test_a_subclass_of_a_built_in_norm_is_built_as_every_norm_is():
    """Each block builds its norm as cls(channels, style_dim); layernorm and instancenorm took
    channels only, so a subclass of one named by path failed with a TypeError."""
    from samam.nn.norms import OUT_NORMS, norm_class

    for name in OUT_NORMS:
        assert norm_class(name)(8, 16)(torch.rand(2, 8, 3, 3), torch.rand(2, 16)).shape == (2, 8, 3, 3)
    net = SaMam(**TINY, out_norm="user_norms:AffineFreeInstanceNorm", backend="torch")
    assert net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 64, 64)).shape == (1, 3, 32, 32)


def test_zero_init_starts_a_norm_of_ones_own_neutral():
    """model.zero_init=true calls each norm's neutral_init_: here plain GroupNorm for every style."""
    x = torch.randn(2, 64, 5, 6)
    for zero_init in (False, True):
        norm = SaMam(**TINY, out_norm=GROUP, zero_init=zero_init).decoder[0].blocks[0].out_norm
        neutral = torch.allclose(norm(x, torch.randn(2, 16)), torch.nn.functional.group_norm(x, 4))
        assert neutral is zero_init


def test_a_network_with_a_norm_of_ones_own_is_rebuilt_from_its_checkpoint(tmp_path):
    net = SaMam(**TINY, out_norm=GROUP, backend="torch").eval()
    path = tmp_path / "ours.ckpt"
    sd = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": sd, "samam": {"model": net.config, "config": None, "version": 1}}, path)
    c, s = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        back = load_model(path, backend="torch")
        assert isinstance(back.decoder[0].blocks[0].out_norm, StyleGroupNorm)
        torch.testing.assert_close(back(c, s), net(c, s), rtol=0, atol=0)
    # a bare state dict cannot say which norm its tensors belong to
    with pytest.raises(CheckpointError, match="out-norm is not SAIN"):
        infer_config(net.state_dict())
    # nor that a norm without tensors was there: SAIN was assumed, its tensors then "missing"
    plain = SaMam(**TINY, out_norm="user_norms:ParameterFreeNorm", backend="torch")
    with pytest.raises(CheckpointError, match="out-norm is not SAIN"):
        infer_config(plain.state_dict())


def test_a_per_channel_norm_runs_in_channel_parts_and_one_across_channels_runs_whole(monkeypatch):
    torch.manual_seed(0)
    c, s = torch.rand(1, 3, 40, 48), torch.rand(1, 3, 64, 64)
    for out_norm, splits in ((SCALED, True), (GROUP, False)):
        net = SaMam(embed_dim=16, style_dim=16, out_norm=out_norm, backend="torch")
        net._check_image = lambda *args, **kwargs: None  # its checks read values
        calls = []
        net.decoder[0].blocks[0].out_norm.register_forward_hook(
            lambda m, args, out, calls=calls: calls.append(args[0].shape[1])
        )
        with torch.no_grad(), monkeypatch.context() as m:
            ref = net(c, s)
            m.setattr(blocks, "MAX_BLOCK_ELEMENTS", 2 * 7 * 8)  # every block's maps pass it
            torch.testing.assert_close(net(c, s), ref, rtol=1e-5, atol=1e-6)
            assert (calls[1] < calls[0]) is splits  # parts of the channels, or all of them
            if not splits:  # off the CPU (meta stands for CUDA) it is refused, naming the switch
                net.to("meta")
                with pytest.raises(ValueError, match=rf"^{re.escape(f'out_norm={out_norm!r}')} mixes "):
                    net(c.to("meta"), s.to("meta"))


@pytest.mark.parametrize(
    "out_norm, msg",
    [
        ("groupnorm", r"out_norm='groupnorm' is not one of \(.*'package.module:Class'\)"),
        (
            "no_such_norms:GroupNorm",
            r"out_norm 'no_such_norms:GroupNorm' does not import \(ModuleNotFoundError",
        ),
        ("user_norms:NotANorm", "not a subclass of samam.nn.norms.DecoderNorm"),
        ("user_norms:F", "not a subclass of samam.nn.norms.DecoderNorm"),  # a module
    ],
)
def test_a_wrong_norm_fails_at_construction(out_norm, msg):
    with pytest.raises(ValueError, match=msg):
        SaMam(**{**TINY, "out_norm": out_norm})
