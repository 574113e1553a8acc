import logging
import sys
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samam import losses
from samam.losses import StyleTransferLoss, VGGEncoder, build_vgg, mean_std, normalize_features


def test_mean_std_matches_adain_definition():
    f = torch.randn(2, 3, 5, 7)
    mu, sigma = mean_std(f)
    flat = f.view(2, 3, -1)
    assert torch.allclose(mu.view(2, 3), flat.mean(-1))
    assert torch.allclose(sigma.view(2, 3), (flat.var(-1, unbiased=True) + 1e-5).sqrt())
    n = normalize_features(f)
    assert torch.allclose(n.view(2, 3, -1).mean(-1), torch.zeros(2, 3), atol=1e-5)


def test_mean_std_in_float32_under_mixed_precision():
    """bf16 features (autocast): statistics in fp32; a nearly constant channel keeps its std."""
    feat = (1.0 + 1e-3 * torch.randn(2, 4, 16, 16)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, sigma = mean_std(feat)
    ref_mu, ref_sigma = mean_std(feat.float())
    assert mu.dtype == sigma.dtype == torch.float32
    torch.testing.assert_close(sigma, ref_sigma, rtol=0, atol=0)
    torch.testing.assert_close(mu, ref_mu, rtol=0, atol=0)


def test_mean_std_keeps_float64():
    """trainer.precision=64-true: the statistics of float64 features were computed in float32."""
    feat = (1.0 + 1e-3 * torch.randn(2, 4, 16, 16)).double()
    mu, sigma = mean_std(feat)
    flat = feat.view(2, 4, -1)
    assert mu.dtype == sigma.dtype == torch.float64
    torch.testing.assert_close(mu.view(2, 4), flat.mean(-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(sigma.view(2, 4), (flat.var(-1) + 1e-5).sqrt(), rtol=1e-12, atol=0)


def test_style_and_content_loss_known_values():
    feats = [torch.randn(2, c, 8, 8) for c in (4, 4, 4, 4, 4)]
    assert StyleTransferLoss.style_loss(feats, [f.clone() for f in feats]) == 0
    assert StyleTransferLoss.content_loss(feats, [f.clone() for f in feats]) == 0
    # Content loss ignores per-channel affine changes (it compares normalised features) ...
    shifted = [3.0 * f + 1.0 for f in feats]
    assert StyleTransferLoss.content_loss(shifted, feats) < 1e-6
    # ... and the style loss sees them: σ·3 and μ·3 + 1.
    mo, so = zip(*(mean_std(f) for f in shifted))
    ms, ss = zip(*(mean_std(f) for f in feats))
    expected = sum(((a - b) ** 2).mean() + ((c - d) ** 2).mean() for a, b, c, d in zip(mo, ms, so, ss))
    assert torch.allclose(StyleTransferLoss.style_loss(shifted, feats), expected)
    # content = MSE(norm φ4) + MSE(norm φ5) only: changing φ1..φ3 does not matter ...
    other = [torch.randn_like(f) for f in feats[:3]] + feats[3:]
    assert StyleTransferLoss.content_loss(other, feats) < 1e-6
    # ... and it is exactly that sum, φ4 included.
    new = feats[:3] + [torch.randn_like(f) for f in feats[3:]]

    def norm(f):
        m, sd = mean_std(f)
        return (f - m) / sd

    expected = sum(((norm(a) - norm(b)) ** 2).mean() for a, b in zip(new[3:], feats[3:]))
    assert torch.allclose(StyleTransferLoss.content_loss(new, feats), expected)
    only_relu4 = feats[:3] + [new[3], feats[4]]
    assert StyleTransferLoss.content_loss(only_relu4, feats) > 0.1


def test_random_vgg_loss_builds_without_lightning(monkeypatch, caplog):
    """The loss needs no Lightning (benchmark.py times the training step on the core install, whose
    dependencies have none): the rank check gating the random-weights warning imported
    samam.logging_utils, which imports Lightning, and the build failed with ModuleNotFoundError."""
    monkeypatch.setitem(sys.modules, "samam.logging_utils", None)  # its import fails, as without Lightning
    with caplog.at_level(logging.WARNING):
        loss = StyleTransferLoss(vgg="random")
    assert "RANDOM" in caplog.text  # the one process warns
    c = torch.rand(1, 3, 32, 32)
    assert torch.isfinite(loss(c, c, c, c, c)["loss"])


def test_total_loss_weights_and_identity_terms(caplog):
    with caplog.at_level(logging.WARNING):
        loss = StyleTransferLoss(
            vgg="random", content_weight=1, style_weight=2, identity1_weight=3, identity2_weight=4
        )
    assert "RANDOM" in caplog.text
    c, s = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = loss(c.clone(), c.clone(), s.clone(), c, s)  # Ics = c: id terms are zero
    assert out["loss_id1"] == 0 and out["loss_id2"] == 0
    expected = out["loss_content"] + 2 * out["loss_style"]
    assert torch.allclose(out["loss"], expected)
    icc = c + 0.1
    out = loss(c, icc, s, c, s)
    assert torch.allclose(out["loss_id1"], torch.tensor(0.01), atol=1e-6)
    ics, icc, iss = c + 0.05, c + 0.1, s - 0.1
    out = loss(ics, icc, iss, c, s)  # every term non-zero: each weight on its own term
    assert min(out[k] for k in ("loss_content", "loss_style", "loss_id1", "loss_id2")) > 0
    expected = out["loss_content"] + 2 * out["loss_style"] + 3 * out["loss_id1"] + 4 * out["loss_id2"]
    assert torch.allclose(out["loss"], expected)
    # each term from its own images (SPEC §5): Ics against c and s, Icc against c, Iss against s
    f_ics, f_icc, f_iss, f_c, f_s = (loss.vgg(x) for x in (ics, icc, iss, c, s))
    terms = {
        "loss_content": StyleTransferLoss.content_loss(f_ics, f_c),
        "loss_style": StyleTransferLoss.style_loss(f_ics, f_s),
        "loss_id1": F.mse_loss(icc, c) + F.mse_loss(iss, s),
        "loss_id2": sum(F.mse_loss(a, b) + F.mse_loss(x, y) for a, b, x, y in zip(f_icc, f_c, f_iss, f_s)),
    }
    for k, v in terms.items():
        torch.testing.assert_close(out[k], v, rtol=1e-4, atol=0, msg=k)


@pytest.mark.parametrize("weight", ["abc", None, True])
def test_a_loss_weight_that_is_not_a_number_is_refused_at_construction(weight):
    """`loss.style_weight=abc` (a typo in a weight sweep) was built and failed only at the first
    step, after the data and the networks: "only integer tensors of a single element can be
    converted to an index"."""
    with pytest.raises(TypeError, match=f"style_weight={weight!r} must be a number"):
        StyleTransferLoss(vgg="random", style_weight=weight)


def test_numpy_loss_weights_are_numbers():
    """A weight sweep written in Python (np.arange, np.float32) was refused as "must be a number"."""
    import numpy as np

    loss = StyleTransferLoss(vgg="random", content_weight=np.int64(7), style_weight=np.float32(2.0))
    c, s = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert torch.isfinite(loss(c, c, s, c, s)["loss"])


def test_vgg_is_frozen_and_stays_in_eval():
    loss = StyleTransferLoss(vgg="random")
    loss.train()
    assert not loss.vgg.training
    assert all(not p.requires_grad for p in loss.vgg.parameters())


def test_imagenet_offline_error_names_file_and_folder(monkeypatch):
    def fail(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    with pytest.raises(FileNotFoundError) as err:
        build_vgg("imagenet")
    assert "vgg19-dcbb9e9d.pth" in str(err.value)
    assert "hub/checkpoints" in str(err.value)


def _torchvision_features_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from torchvision.models import vgg19

    torch.manual_seed(seed)
    feats = vgg19(weights=None).features[:30]  # up to relu5_1 (index 29)
    return {f"features.{k}": v for k, v in feats.state_dict().items()}


def test_imagenet_loads_the_cached_file(monkeypatch):
    from torchvision.models import vgg19

    cache = losses.torch_hub_checkpoint_dir()
    cache.mkdir(parents=True, exist_ok=True)
    state = _torchvision_features_state()
    torch.save(state, cache / losses.VGG19_FILE)
    try:
        enc = build_vgg("imagenet")
        ref = vgg19(weights=None).features[:30]
        ref.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
        x = torch.rand(1, 3, 32, 32)
        mean = torch.tensor(losses._IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(losses._IMAGENET_STD).view(1, 3, 1, 1)
        assert torch.allclose(enc(x)[-1], ref((x - mean) / std), atol=1e-5)
        assert build_vgg("imagenet_if_cached").normalised is False
    finally:
        (cache / losses.VGG19_FILE).unlink()


def _adain_vgg_normalised() -> nn.Sequential:
    """The layout of AdaIN-pytorch's vgg_normalised (up to relu5_1), as the release ships it."""
    layers: list[nn.Module] = [nn.Conv2d(3, 3, 1)]
    c_in = 3
    for block in ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,)):
        for w in block:
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(c_in, w, 3), nn.ReLU()]
            c_in = w
        if w != 512 or len(block) == 4:
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    return nn.Sequential(*layers)


def test_vgg_normalised_file_maps_onto_the_taps(tmp_path):
    seq = _adain_vgg_normalised()
    assert isinstance(seq[2], nn.Conv2d) and isinstance(seq[42], nn.Conv2d)  # conv1_1, conv5_1 indices
    path = tmp_path / "vgg_normalised.pth"
    torch.save(seq.state_dict(), path)
    enc = build_vgg(str(path))
    assert isinstance(enc, VGGEncoder) and enc.normalised
    x = torch.rand(1, 3, 40, 36)  # odd sizes exercise ceil-mode pooling
    feats = enc(x)
    ends = (3, 10, 17, 30, 43)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in the Sequential
    h, start = x, 0
    for tap, end in zip(feats, ends):
        h = seq[start : end + 1](h)
        start = end + 1
        assert torch.allclose(tap, h, atol=1e-5)


def test_missing_path_fails_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vgg_normalised\.pth \(the release's copy: https://drive"):
        build_vgg(str(tmp_path / "nope.pth"))


def test_a_step_gives_the_loss_the_three_passes_of_spec_5():
    """Ics = f(c, s), Icc = f(c, c), Iss = f(s, s), batched as one forward: a stand-in network
    whose output says which pair made it (10·content + style) shows each image in its place."""
    from samam.module import StyleTransferModule

    class Pair(nn.Module):
        def forward(self, content, style):
            return 10 * content + style

    seen = {}

    class Record(nn.Module):
        def forward(self, ics, icc, iss, c, s):
            seen.update(ics=ics, icc=icc, iss=iss, c=c, s=s)
            return {"loss": ics.sum()}

    c, s = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    StyleTransferModule(Pair(), Record(), optimizer=None)._step({"content": c, "style": s})
    expected = {"ics": 10 * c + s, "icc": 10 * c + c, "iss": 10 * s + s, "c": c, "s": s}
    assert all(torch.equal(seen[k], v) for k, v in expected.items()), seen.keys()


def test_the_backward_runs_the_vgg_over_the_outputs_only():
    """The targets (content, style) need no gradient: one VGG pass over all 5B images made the
    backward compute every convolution's input gradient for the 2B targets too, and drop it
    (2/5 of the loss network's backward, the bulk of a CPU training step)."""
    loss = StyleTransferLoss(vgg="random")
    rows = []
    for conv in loss.vgg.convs():
        conv.register_full_backward_hook(lambda m, grad_in, grad_out: rows.append(grad_out[0].shape[0]))
    c, s = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    ics, icc, iss = (x.clone().requires_grad_() for x in (c + 0.05, c + 0.1, s - 0.1))
    loss(ics, icc, iss, c, s)["loss"].backward()
    assert rows and set(rows) == {3 * 2}
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in (ics, icc, iss))
