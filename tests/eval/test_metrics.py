"""Metric formulas on known values, the blocked CFSD, LPIPS plumbing and weight-file errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from samam import metrics as M


def scipy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """The classic float64 reference (pytorch-fid / ArtFID): scipy sqrtm of Σ1Σ2."""
    mu1, mu2 = fake.mean(0), real.mean(0)
    s1, s2 = np.cov(fake, rowvar=False), np.cov(real, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def feed(metric: M.FrechetDistance, real: np.ndarray, fake: np.ndarray) -> float:
    for chunk in np.array_split(real, 3):  # several updates, as batches would arrive
        metric.update(torch.from_numpy(chunk), real=True)
    for chunk in np.array_split(fake, 2):
        metric.update(torch.from_numpy(chunk), real=False)
    return float(metric.compute())


@pytest.mark.parametrize(
    "n_real, n_fake, d", [(60, 50, 16), (40, 30, 24), (20, 80, 64)]
)  # last: rank-deficient
def test_fid_matches_scipy_float64_reference(n_real, n_fake, d):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(n_real, d))
    fake = rng.normal(loc=0.3, scale=1.5, size=(n_fake, d)) @ rng.normal(size=(d, d)) * 0.5
    metric = M.FrechetDistance(nn.Identity(), num_features=d)
    value = feed(metric, real, fake)
    assert metric.compute().dtype == torch.float64
    assert value == pytest.approx(scipy_fid(real, fake), rel=1e-8)


def test_fid_zero_for_identical_sets_and_style_stats_kept():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(30, 8))
    metric = M.FrechetDistance(nn.Identity(), num_features=8, reset_real_features=False)
    assert abs(feed(metric, feats, feats)) < 1e-8
    metric.reset()  # the callback's pattern: style statistics survive, stylised ones go
    assert int(metric.real_features_num_samples) == 30 and int(metric.fake_features_num_samples) == 0


def test_fid_needs_feature_count():
    with pytest.raises(ValueError, match="num_features"):
        M.FrechetDistance(nn.Identity())


def test_artfid_formula_and_suite():
    # SaMam's paper row: LPIPS 0.388, FID 17.95 → ArtFID 26.31.
    assert M.artfid(0.388, 17.95) == pytest.approx(26.31, abs=0.01)

    class Const(nn.Module):
        def forward(self, x, y):
            return torch.full((x.shape[0], 1, 1, 1), 0.25)

    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(20, 4)), rng.normal(loc=1.0, size=(20, 4))
    fid_tf = M.FrechetDistance(nn.Flatten(), num_features=4)
    suite = M.StyleTransferMetrics(fid_art=fid_tf, lpips=M.LPIPSDistance(Const()))
    suite.update_style(torch.from_numpy(real).view(20, 4, 1, 1))
    suite.update(torch.from_numpy(fake).view(20, 4, 1, 1), torch.zeros(20, 4, 1, 1))
    res = suite.compute()
    assert res["lpips"] == pytest.approx(0.25)
    assert res["fid_art"] == pytest.approx(scipy_fid(real, fake), rel=1e-8)
    assert res["artfid"] == pytest.approx((1 + 0.25) * (1 + res["fid_art"]), rel=1e-12)
    assert res["fid_tf"] is None and res["cfsd"] is None
    assert "disabled" in suite.reasons["fid_tf"] and "artfid" not in suite.reasons


def test_a_metric_of_ones_own_is_fed_each_output_with_its_content():
    """metrics.extra: a torchmetrics Metric (or its _target_ config) beside the protocol's."""
    from torchmetrics.regression import MeanAbsoluteError

    suite = M.build_metrics(
        fid_art={"enabled": False},
        fid_tf={"enabled": False},
        cfsd={"enabled": False},
        test_extractors=True,
        extra={"mae": {"_target_": "torchmetrics.regression.MeanAbsoluteError"}, "mae2": MeanAbsoluteError()},
    )
    assert suite.enabled == ["lpips", "mae", "mae2"]
    assert suite.networks["mae"] == "torchmetrics.regression.mae.MeanAbsoluteError"
    out, content = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    suite.update(out[:2], content[:2])
    suite.update(out[2:], content[2:])
    res = suite.compute()
    assert res["mae"] == res["mae2"] == pytest.approx((out - content).abs().mean().item(), rel=1e-6)
    assert res["lpips"] is not None and res["fid_art"] is None
    suite.reset()
    suite.update(content, content)
    assert suite.compute()["mae"] == 0.0


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (
            {"lpips": {"_target_": "torchmetrics.regression.MeanAbsoluteError"}},
            ValueError,
            "a name of its own",
        ),
        ({"mae": {"reduction": "mean"}}, ValueError, r"metrics.extra.mae._target_="),
        (
            {"mae": {"_target_": "torch.nn.L1Loss"}},
            TypeError,
            "metrics.extra.mae is L1Loss, not a torchmetrics.Metric",
        ),
    ],
)
def test_a_wrong_metric_of_ones_own_is_refused_when_built(extra, error, message):
    with pytest.raises(error, match=message):
        M.build_metrics(test_extractors=True, extra=extra)


class _PerChannelError(Metric):
    """Mean |output − content| per colour channel: three numbers, not one."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.zeros(3), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(()), dist_reduce_fx="sum")

    def update(self, output: torch.Tensor, content: torch.Tensor) -> None:
        self.total += (output - content).abs().mean((2, 3)).sum(0)
        self.count += output.shape[0]

    def compute(self) -> torch.Tensor:
        return self.total / self.count


def test_a_metric_of_ones_own_that_is_not_one_number_is_null_with_reason_and_the_rest_computes():
    """float() of its three values raised in compute(), after the whole stylisation, and every
    other value (ArtFID's included) was lost with it."""
    off = {"enabled": False}
    suite = M.build_metrics(
        test_extractors=True, fid_art=off, fid_tf=off, cfsd=off, extra={"per_channel": _PerChannelError()}
    )
    suite.update(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    res = suite.compute()
    assert res["per_channel"] is None and res["lpips"] is not None
    assert suite.null_reasons["per_channel"] == "_PerChannelError.compute() gave a Tensor(3,), not one number"


@pytest.mark.parametrize(
    "name", ["params", "protocol_deviations", "checkpoint_step", "eval_seconds", "loss_style"]
)
def test_a_metric_of_ones_own_named_like_another_result_or_logged_key_is_refused(name):
    """metrics.extra.params would have overwritten results.json's parameter count (or been
    overwritten by it); eval_seconds and loss_style are logged as val/<name> in training."""
    mae = {"_target_": "torchmetrics.regression.MeanAbsoluteError"}
    with pytest.raises(ValueError, match=f"a name of its own: '{name}' is already a key of results.json"):
        M.build_metrics(test_extractors=True, extra={name: mae})


def test_fid_short_of_images_is_null_with_reason_and_the_rest_still_computes():
    """One stylised image (a 1 × 1 eval, or a callback with max_pairs=1) has no covariance: the
    FIDs and ArtFID are null with the reason, LPIPS still computes, nothing raises, and the
    next compute with enough images gives values again."""

    class Const(nn.Module):
        def forward(self, x, y):
            return torch.full((x.shape[0], 1, 1, 1), 0.25)

    fid = M.FrechetDistance(nn.Flatten(), num_features=4, reset_real_features=False)
    suite = M.StyleTransferMetrics(fid_art=fid, lpips=M.LPIPSDistance(Const()))
    suite.update_style(torch.rand(1, 4, 1, 1))
    suite.update(torch.rand(1, 4, 1, 1), torch.zeros(1, 4, 1, 1))
    res = suite.compute()
    assert res["lpips"] == pytest.approx(0.25) and res["fid_art"] is None and res["artfid"] is None
    assert (
        suite.null_reasons["fid_art"] == "FID needs at least 2 reference and 2 stylised images, got 1 and 1"
    )
    assert "fid_art" in suite.null_reasons["artfid"] and "disabled" in suite.null_reasons["fid_tf"]
    suite.update_style(torch.rand(5, 4, 1, 1), weight=2)
    suite.update(torch.rand(2, 4, 1, 1), torch.zeros(2, 4, 1, 1))  # 3 stylised now
    res = suite.compute()
    assert res["fid_art"] is not None and res["artfid"] is not None
    assert "fid_art" not in suite.null_reasons and "artfid" not in suite.null_reasons


def test_artfid_is_null_with_reason_when_lpips_disabled():
    suite = M.build_metrics(lpips={"enabled": False}, test_extractors=True)
    assert suite.lpips is None
    assert "lpips.enabled=false" in suite.reasons["lpips"]
    assert "lpips" in suite.reasons["artfid"]


def test_cfsd_zero_positive_and_blocked_equals_full():
    g = torch.Generator().manual_seed(0)
    fc = torch.randn(2, 8, 6, 5, generator=g)
    fo = fc + 0.5 * torch.randn(2, 8, 6, 5, generator=g)
    assert torch.all(M.cfsd_per_image(fc, fc, block_rows=4).abs() < 1e-12)
    full = M.cfsd_per_image(fc, fo, block_rows=None)
    assert full.dtype == torch.float64 and torch.all(full > 0)
    for rows in (1, 7, 30, 100):  # L = 30 tokens: blocks that divide it, do not, and exceed it
        torch.testing.assert_close(M.cfsd_per_image(fc, fo, block_rows=rows), full, rtol=1e-12, atol=1e-14)
    # StyleID's definition: kl_div(log softmax S_out, softmax S_content, batchmean) with F/C tokens.
    for i in range(2):
        tc, to = (f[i].flatten(1).t().double() / 8 for f in (fc, fo))
        ref = F.kl_div(
            torch.log_softmax(to @ to.t(), -1).reshape(1, -1),
            torch.softmax(tc @ tc.t(), -1).reshape(1, -1),
            reduction="batchmean",
        )
        assert float(full[i]) == pytest.approx(float(ref), rel=1e-10)


@pytest.mark.parametrize("rows", [0, -1])
def test_cfsd_block_rows_below_one_is_refused_when_built(rows):
    """metrics.cfsd.block_rows=-1 summed no rows: CFSD 0.0 for any pair, silently; 0 failed in
    range() at the first stylised batch (in training: at the first evaluation)."""
    fc, fo = torch.randn(1, 8, 6, 5), torch.randn(1, 8, 6, 5)
    with pytest.raises(ValueError, match=f"metrics.cfsd.block_rows must be ≥ 1 or null .* got {rows}"):
        M.cfsd_per_image(fc, fo, block_rows=rows)
    with pytest.raises(ValueError, match="metrics.cfsd.block_rows"):
        M.build_metrics(cfsd={"block_rows": rows}, test_extractors=True)


def test_a_short_side_no_image_can_take_is_refused_when_built():
    """metrics.lpips.short_side=0 (or fid_art's below the art Inception's 75 px) failed only at
    the first stylised batch, in PIL ("height and width must be > 0") or in the network."""
    with pytest.raises(ValueError, match="metrics.lpips.short_side must be ≥ 1 px or null"):
        M.build_metrics(lpips={"short_side": 0}, test_extractors=True)
    with pytest.raises(ValueError, match="short_side=50 is below its 75-px minimum"):
        M.ArtInceptionFeatures(short_side=50)


def test_cfsd_metric_on_images():
    metric = M.CFSD(M.RandomFeatures(8, spatial=True, seed=0), block_rows=5)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 24, 20, generator=g), torch.rand(2, 3, 24, 20, generator=g)
    metric.update(x, x)
    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-12)
    metric.reset()
    metric.update(y, x)
    assert float(metric.compute()) > 0


def test_lpips_plumbing_random_backbone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    net = M.lpips_alexnet(pnet_rand=True)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    again = M.lpips_alexnet(pnet_rand=True)  # the random test backbone is the same every time
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    metric = M.LPIPSDistance(net)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    metric.update(x, x)
    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-7)
    metric.reset()
    metric.update(y[:2], x[:2])
    metric.update(y[2:], x[2:])
    with torch.no_grad():
        direct = net(2 * y - 1, 2 * x - 1).flatten()  # lpips expects [-1, 1]
    assert float(metric.compute()) == pytest.approx(float(direct.double().mean()), rel=1e-6)
    assert float(metric.compute()) > 0
    assert metric.total.dtype == torch.float64


def test_lpips_sees_both_images_at_the_512_shorter_side_as_the_reference():
    """StyleID's eval_artfid.py: Compose([Resize(512), ToTensor()]) on the stylised and on the
    content file, then lpips.LPIPS(net="alex")(2x - 1, 2y - 1). LPIPS depends on the resolution,
    so outputs made at another size (content_size=null, the callback's 256²) are resized alike."""
    from PIL import Image
    from torchvision.transforms import Resize, ToTensor

    off = {"enabled": False}
    suite = M.build_metrics(fid_art=off, fid_tf=off, cfsd=off, test_extractors=True)
    assert suite.lpips.short_side == 512
    g = torch.Generator().manual_seed(0)
    out8, content8 = (torch.randint(0, 256, (2, 3, 96, 72), dtype=torch.uint8, generator=g) for _ in range(2))
    suite.update(out8.float() / 255, content8.float() / 255)

    def reference(x8):  # (B, 3, H, W) uint8, as the files hold them
        return torch.stack(
            [ToTensor()(Resize(512)(Image.fromarray(im.permute(1, 2, 0).numpy()))) for im in x8]
        )

    net = suite.lpips.net
    with torch.no_grad():
        ref = net(2 * reference(out8) - 1, 2 * reference(content8) - 1).flatten().double().mean()
        native = net(2 * out8.float() / 255 - 1, 2 * content8.float() / 255 - 1).flatten().double().mean()
    assert suite.compute()["lpips"] == pytest.approx(float(ref), rel=1e-6)
    assert abs(float(native) - float(ref)) > 1e-3  # the resize matters at this size


def test_metric_states_are_float64_sums():
    metric = M.CFSD(M.RandomFeatures(4, spatial=True))
    assert metric.total.dtype == torch.float64
    fid_tf = M.FrechetDistance(nn.Identity(), num_features=3)
    assert fid_tf.real_features_cov_sum.dtype == torch.float64
    for m in (metric, fid_tf):
        assert all(fn is not None for fn in m._reductions.values())  # every state all-reduced


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: M.art_inception(), "art_inception.pth"),
        (lambda: M.tf_inception(), "weights-inception-2015-12-05-6726825d.pth"),
        (lambda: M.lpips_alexnet(), "alexnet-owt-7be5be79.pth"),
        (lambda: M.vgg19_relu31(), "vgg19-dcbb9e9d.pth"),
    ],
)
def test_missing_weights_name_size_and_folder(build, name):
    with pytest.raises(M.MissingWeightsError) as info:
        build()
    msg = str(info.value)
    assert name in msg and "MB" in msg
    assert str(M.hub_checkpoint_dir()) in msg and "enabled: false" in msg


@pytest.mark.parametrize("name", ["art_inception", "tf_inception", "lpips_alexnet", "vgg19_relu31"])
@pytest.mark.parametrize("content", ["truncated", "web page"])
def test_an_unreadable_weight_file_is_named_with_its_source(tmp_path, name, content):
    """A truncated download (or a web page saved under the file's name) failed inside torch.load
    with "PytorchStreamReader failed reading zip archive" or an unpickling error, naming neither
    the file nor the metric: with four files in one folder, which one to fetch again?"""
    spec = {"art_inception": M.ART_INCEPTION, "tf_inception": M.TF_INCEPTION}.get(name)
    spec = spec or {"lpips_alexnet": M.ALEXNET, "vgg19_relu31": M.VGG19}[name]
    path = tmp_path / spec.name
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, path)
    data = path.read_bytes()
    path.write_bytes(
        data[: len(data) // 2] if content == "truncated" else b"<!DOCTYPE html><html>Sign in</html>"
    )
    with pytest.raises(ValueError) as info:
        getattr(M, name)(weights=path)
    msg = str(info.value)
    assert str(path) in msg and spec.url in msg and "truncated or failed download" in msg


def test_missing_explicit_weights_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="art_inception.pth"):
        M.art_inception(weights=tmp_path / "nope.pth")
    with pytest.raises(M.MissingWeightsError, match="vgg19-dcbb9e9d.pth"):
        M.build_metrics(fid_art={"enabled": False}, fid_tf={"enabled": False}, lpips={"enabled": False})


def test_art_inception_tolerant_loader_and_mismatch_report():
    model = M.ArtInceptionFeatures(short_side=None)
    own = model.net.state_dict()
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in own.items()}
    wrapped = {"state_dict": {"module." + k: v for k, v in state.items() if "num_batches" not in k}}
    wrapped["state_dict"]["module.fc.weight"] = torch.zeros(7, 2048)  # any classifier is ignored
    ignored = M.load_art_inception_state(model, wrapped)
    assert ignored == ["fc.weight"]
    torch.testing.assert_close(
        model.net.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"]
    )

    bad = dict(state)
    del bad["Mixed_6b.branch1x1.conv.weight"]
    bad["Conv2d_1a_3x3.conv.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(ValueError) as info:
        M.load_art_inception_state(model, bad)
    msg = str(info.value)
    assert "missing: Mixed_6b.branch1x1.conv.weight" in msg
    assert "Conv2d_1a_3x3.conv.weight: file (32, 3, 5, 5) vs model (32, 3, 3, 3)" in msg


def test_art_inception_ignores_the_reference_files_two_classifiers_and_aux_heads():
    """ArtFID's Inception3 has fc1, fc2, AuxLogits1, AuxLogits2 beside the torchvision backbone."""
    model = M.ArtInceptionFeatures(short_side=None)
    state = dict(model.net.state_dict())
    heads = ["fc1.weight", "fc1.bias", "fc2.weight", "AuxLogits1.conv0.conv.weight", "AuxLogits2.fc.bias"]
    state.update({k: torch.zeros(3) for k in heads})
    assert M.load_art_inception_state(model, state) == sorted(heads)


def test_art_inception_sees_pixels_in_0_1_at_their_size():
    """As ArtFID (ToTensor only, transform_input=False) after StyleID's Resize(512): no resize
    to 299 and no rescaling to [-1, 1]; only the shorter side is set (torchvision truncation)."""
    from PIL import Image
    from torchvision.models import inception_v3
    from torchvision.transforms import Resize, ToTensor

    torch.manual_seed(0)
    ref = inception_v3(weights=None, aux_logits=False, init_weights=True, transform_input=False).eval()
    ref.fc, ref.dropout = nn.Identity(), nn.Identity()  # ref(x) = pooled 2048-d features
    ours = M.ArtInceptionFeatures(short_side=None)
    ours.net.load_state_dict(ref.state_dict(), strict=False)
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (2, 3, 100, 134), dtype=torch.uint8, generator=g)
    x = x8.float() / 255  # pixels as read from a file
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
        ours.short_side = 90
        # StyleID's Compose([Resize(512), ToTensor()]) on the decoded file (here Resize(90)).
        files = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in x8]
        resized = torch.stack([ToTensor()(Resize(90)(im)) for im in files])
        assert resized.shape[-2:] == (90, 120)  # 134·0.9 = 120.6 → 120
        torch.testing.assert_close(ours(x), ref(resized))
        ours.short_side = None
        with pytest.raises(ValueError, match="below its 75-px minimum"):
            ours(torch.rand(1, 3, 60, 90))


@pytest.mark.parametrize("h, w, n", [(300, 451, 128), (97, 64, 128), (200, 200, 128), (64, 300, 75)])
def test_fid_resize_is_torchvision_resize_of_the_file(h, w, n):
    """The reference resizes the decoded 8-bit file (PIL bilinear, rounded after each pass); a
    float resize, antialiased or not, is off by a grey level in most pixels."""
    from PIL import Image
    from torchvision.transforms import Resize, ToTensor

    g = torch.Generator().manual_seed(h + w)
    x8 = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=g)
    ref = torch.stack([ToTensor()(Resize(n)(Image.fromarray(im.permute(1, 2, 0).numpy()))) for im in x8])
    ours = M.resize_as_pil(x8.float() / 255, M.short_side_size(h, w, n))
    assert torch.equal(ours, ref)


def test_weighted_reference_set_equals_repeated_images():
    """Style statistics weighted by the number of contents = StyleID's copied reference folder."""
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(12, 8)), rng.normal(loc=0.2, size=(30, 8))
    weighted = M.FrechetDistance(nn.Identity(), num_features=8)
    weighted.update(torch.from_numpy(real), real=True, weight=3)
    weighted.update(torch.from_numpy(fake), real=False)
    assert int(weighted.real_features_num_samples) == 36
    assert float(weighted.compute()) == pytest.approx(scipy_fid(np.repeat(real, 3, axis=0), fake), rel=1e-6)
    with pytest.raises(ValueError, match="weight must be"):
        weighted.update(torch.from_numpy(real), real=True, weight=0)


def test_vgg19_relu31_matches_torchvision_layout(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    ref = make_layers(cfgs["E"])[:12].eval()  # torchvision's VGG-19 features up to relu3_1
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    state = {f"features.{k}": v for k, v in ref.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, path)
    model = M.vgg19_relu31(weights=path)
    x = torch.rand(1, 3, 20, 24)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref((x - mean) / std))
    assert model(x).shape == (1, 256, 5, 6)


def test_results_name_the_weight_files_read_and_a_stand_in_under_a_published_name(tmp_path, caplog):
    """metric_networks said "(vgg19-dcbb9e9d.pth)" whatever file was read: a random stand-in
    under that name, or another path in `weights:`, gave a CFSD that looked like the real one."""
    import hashlib
    import logging

    from samam.evaluation import protocol_deviations

    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in M.VGG19Relu31().features.state_dict().items()}, path)
    off = {"enabled": False}
    with caplog.at_level(logging.WARNING, logger="samam.metrics"):
        suite = M.build_metrics(fid_art=off, fid_tf=off, lpips=off, cfsd={"weights": str(path)})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert suite.networks["cfsd"] == (
        f"VGG-19 ImageNet relu3_1 (vgg19-dcbb9e9d.pth); weights {path} (sha256 {digest[:16]}), "
        "NOT the published vgg19-dcbb9e9d.pth (sha256 dcbb9e9d…)"
    )
    assert any("NOT the published vgg19-dcbb9e9d.pth" in r.getMessage() for r in caplog.records)
    assert protocol_deviations(20, 40, 512, suite) == ["cfsd read weights that are not the published file"]


def test_every_missing_weight_file_is_named_in_one_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty $TORCH_HOME/hub
    with pytest.raises(M.MissingWeightsError) as info:
        M.build_metrics()
    msg = str(info.value)
    assert msg.startswith("4 metric weight files are missing")
    for name in (
        "art_inception.pth",
        "weights-inception-2015-12-05",
        "alexnet-owt-7be5be79.pth",
        "vgg19-dcbb9e9d",
    ):
        assert name in msg


def test_uint8_pixels_are_those_torchvision_save_image_writes(tmp_path):
    """The release saves with torchvision.utils.save_image (halves round up): our PNGs and the
    metrics' uint8 inputs must hold the same pixels, ties and out-of-range values included."""
    from PIL import Image
    from torchvision.utils import save_image

    ties = (torch.arange(256.0) + 0.5) / 255  # k + 0.5 exactly, for every k
    x = torch.cat([ties, torch.rand(1000), torch.tensor([-0.3, 1.7, 0.0, 1.0])]).clamp(max=1.5)
    img = x[: 3 * 420].reshape(3, 20, 21)
    save_image(img, tmp_path / "tv.png")
    theirs = torch.from_numpy(np.array(Image.open(tmp_path / "tv.png"))).permute(2, 0, 1)
    assert torch.equal(M.to_uint8(img), theirs)


def test_fid_art_short_side_reaches_the_art_inception_and_both_configs_say_512(monkeypatch):
    """ArtFID feeds the art Inception at a 512 shorter side (SPEC §6); a 299 anywhere on the way
    (config, default, a hard-coded size) silently changes every FID_art."""
    from pathlib import Path

    import yaml

    seen = []

    def recording(weights=None, download=False, short_side=512):
        seen.append(short_side)
        return M.ArtInceptionFeatures(short_side=short_side)  # random weights: only the size matters

    monkeypatch.setattr(M, "art_inception", recording)
    off = {"enabled": False}
    suite = M.build_metrics(fid_art={"enabled": True, "short_side": 300}, fid_tf=off, lpips=off, cfsd=off)
    assert seen == [300] and suite.fid_art is not None
    # null means "keep the size" (ArtInceptionFeatures' documented None), not the default 512;
    # an absent key is the default.
    M.build_metrics(fid_art={"enabled": True, "short_side": None}, fid_tf=off, lpips=off, cfsd=off)
    M.build_metrics(fid_art={"enabled": True}, fid_tf=off, lpips=off, cfsd=off)
    assert seen == [300, None, 512]
    rows = M.build_metrics(
        fid_art=off, fid_tf=off, lpips=off, cfsd={"block_rows": None}, test_extractors=True
    )
    assert rows.cfsd.block_rows is None  # all rows at once, as cfsd_per_image documents
    assert M.ArtInceptionFeatures().short_side == 512
    conf = Path(__file__).resolve().parents[2] / "conf"
    assert yaml.safe_load((conf / "eval.yaml").read_text())["metrics"]["fid_art"]["short_side"] == 512
    callback = yaml.safe_load((conf / "callbacks" / "eval_metrics.yaml").read_text())
    assert callback["metrics"]["fid_art"]["short_side"] == 512
    eval_cfg = yaml.safe_load((conf / "eval.yaml").read_text())
    assert eval_cfg["metrics"]["lpips"]["short_side"] == callback["metrics"]["lpips"]["short_side"] == 512


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"fid_tf": {"enabled": "off"}}, "metrics.fid_tf.enabled"),
        ({"lpips": {"enabled": "no", "weights": None}}, "metrics.lpips.enabled"),
        ({"download": "yes"}, "metrics.download"),
        ({"test_extractors": 1}, "metrics.test_extractors"),
    ],
)
def test_a_metric_switch_given_as_a_string_is_refused(kwargs, name):
    """`metrics.fid_tf.enabled=off` on the command line is the string 'off': truthy, so the metric
    was built and computed anyway (and its weight file demanded)."""
    kwargs = {"test_extractors": True, **kwargs}
    with pytest.raises(TypeError, match=rf"{re.escape(name)}=.* must be true or false"):
        M.build_metrics(**kwargs)
    M.build_metrics(fid_tf={"enabled": None}, test_extractors=True)  # null: the default (on)


def test_a_metric_setting_it_does_not_have_is_refused():
    """`+metrics.fid_tf.short_side=256` (fid_tf has no such setting) or a mistyped
    `+metrics.lpips.enabeld=false` was ignored: the metric ran as before."""
    with pytest.raises(
        ValueError, match=r"metrics.fid_tf: no setting short_side \(it has: enabled, weights\)"
    ):
        M.build_metrics(fid_tf={"short_side": 256}, test_extractors=True)
    with pytest.raises(ValueError, match="metrics.lpips: no setting enabeld"):
        M.build_metrics(lpips={"enabeld": False}, test_extractors=True)


def test_the_size_each_metric_network_sees_is_named_for_the_results(monkeypatch):
    """results.json/results.md name each metric's network; metrics.fid_art.short_side=299 or
    metrics.lpips.short_side=null (not the protocol's 512) changed every value and left no trace."""
    monkeypatch.setattr(
        M, "art_inception", lambda w=None, d=False, short_side=512: M.ArtInceptionFeatures(short_side)
    )
    random_alexnet = M.lpips_alexnet
    monkeypatch.setattr(
        M, "lpips_alexnet", lambda w=None, d=False, pnet_rand=False: random_alexnet(pnet_rand=True)
    )
    off = {"enabled": False}
    protocol = M.build_metrics(fid_tf=off, cfsd=off).networks
    assert protocol["fid_art"].endswith("images at a 512-px shorter side")
    assert protocol["lpips"].endswith("images at a 512-px shorter side")
    other = M.build_metrics(fid_art={"short_side": 299}, lpips={"short_side": None}, fid_tf=off, cfsd=off)
    assert other.networks["fid_art"].endswith("images at a 299-px shorter side")
    assert other.networks["lpips"].endswith("each image at its own size")


class _MedianError(Metric):
    """The median over images of each one's mean |output − content|: a state of per-image values,
    gathered across ranks (dist_reduce_fx="cat"), where one rank's median is another number."""

    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("errors", default=[], dist_reduce_fx="cat")

    def update(self, output: torch.Tensor, content: torch.Tensor) -> None:
        self.errors.append((output - content).abs().flatten(1).mean(1))

    def compute(self) -> torch.Tensor:
        return dim_zero_cat(self.errors).median()


def _extras() -> dict:
    """Metrics of one's own with a summed state (MAE) and a gathered one (the median)."""
    return {"mae": {"_target_": "torchmetrics.regression.MeanAbsoluteError"}, "median": _MedianError()}


def _ranked_suite(rank: int, world: int, port: int, images: dict, out: str, protocol: bool = True) -> None:
    """One DDP rank (gloo): its shard of the stylised images and of the style set, then compute()."""
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        off = {} if protocol else {n: {"enabled": False} for n in ("fid_art", "fid_tf", "lpips", "cfsd")}
        suite = M.build_metrics(test_extractors=True, extra=_extras(), **off)
        for j in range(rank, len(images["style"]), world):
            suite.update_style(images["style"][j : j + 1], weight=images["uses"][j])
        for i in range(rank, len(images["output"]), world):  # uneven: 3 and 2
            suite.update(images["output"][i : i + 1], images["content"][i : i + 1])
        values = suite.compute()
        if rank == 0:
            torch.save(values, out)
    finally:
        torch.distributed.destroy_process_group()


def test_under_ddp_every_metric_covers_every_ranks_images(tmp_path):
    """Each rank stylises a shard; the logged values must be those of all the images, not rank 0's."""
    import socket

    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(0)
    images = {
        "style": torch.rand(3, 3, 40, 48, generator=g),
        "uses": [2, 2, 1],
        "output": torch.rand(5, 3, 36, 36, generator=g),
        "content": torch.rand(5, 3, 36, 36, generator=g),
    }
    whole = M.build_metrics(test_extractors=True, extra=_extras())
    for j in range(3):
        whole.update_style(images["style"][j : j + 1], weight=images["uses"][j])
    whole.update(images["output"], images["content"])
    expected = whole.compute()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "values.pt"
    # fork: the ranks start in a second, with this process's imports (spawn re-imports for ~20 s).
    mp.start_processes(_ranked_suite, args=(2, port, images, str(out)), nprocs=2, start_method="fork")
    values = torch.load(out)
    assert values == pytest.approx(expected, rel=1e-6)  # batches of 1 vs 5: float32 features
    assert {"mae", "median"} <= set(values)  # metrics of one's own too (torchmetrics syncs their states)


def test_under_ddp_a_metric_of_ones_own_gets_every_ranks_images_also_where_a_rank_has_none(tmp_path):
    """One stylised image on two ranks (max_pairs below the world size): rank 1 computes with no
    update of its own, and the value is still the image's, on rank 0."""
    import socket

    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(1)
    images = {"style": [], "uses": [], "output": torch.rand(1, 3, 8, 8, generator=g)}
    images["content"] = torch.rand(1, 3, 8, 8, generator=g)
    expected = (images["output"] - images["content"]).abs().mean().item()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "values.pt"
    mp.start_processes(_ranked_suite, args=(2, port, images, str(out), False), nprocs=2, start_method="fork")
    values = torch.load(out)
    assert values["mae"] == pytest.approx(expected, rel=1e-6)
    assert values["median"] == pytest.approx(expected, rel=1e-6)
