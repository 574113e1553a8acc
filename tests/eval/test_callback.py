"""The eval-metrics callback inside a real (tiny, CPU) Lightning fit, and its W&B table."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from samam.evaluation import EvalMetricsCallback

METRICS = {"test_extractors": True, "fid_tf": {"enabled": False}}


@pytest.fixture(scope="module")
def tiny_net():
    """The plain random tiny net: these tests train it (at lr 0.5 in one), and conftest's
    scaled-up net, made for comparing pixels, diverges there."""
    from tiny import TINY

    import samam

    torch.manual_seed(0)
    return samam.SaMam(**TINY, backend="torch").eval()


class TinyModule(L.LightningModule):
    def __init__(self, net):
        super().__init__()
        self.net = net.train()

    def training_step(self, batch, _):
        (x,) = batch
        return (self.net(x, x) - x).abs().mean()

    def validation_step(self, batch, _):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-4)


def loader():
    return DataLoader(TensorDataset(torch.rand(2, 3, 64, 64)), batch_size=2)


def _trainer(tmp_path, callbacks, max_epochs=3, **kw):
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )


def _callback(image_dirs, every_n_val_rounds=1, **kw):
    content, style = image_dirs
    return EvalMetricsCallback(
        content,
        style,
        every_n_val_rounds=every_n_val_rounds,
        content_size=32,
        style_size=64,
        style_short_side=None,
        batch_size=4,
        **{"metrics": METRICS, **kw},
    )


def test_callback_logs_metrics_every_n_rounds(tiny_net, image_dirs, tmp_path):
    import copy

    cb = _callback(image_dirs, every_n_val_rounds=2)
    calls = []
    original = cb.evaluate
    cb.evaluate = lambda trainer, module: calls.append(trainer.current_epoch) or original(trainer, module)
    trainer = _trainer(tmp_path, [cb])
    trainer.fit(TinyModule(copy.deepcopy(tiny_net)), loader(), loader())
    assert calls == [0, 2]  # rounds 0 and 2 of 3; the sanity check is not a round
    assert cb.rounds == 3
    m = trainer.callback_metrics
    for key in ("val/artfid", "val/fid_art", "val/lpips", "val/cfsd", "val/eval_seconds"):
        assert key in m and torch.isfinite(m[key]), key
    assert "val/fid_tf" not in m  # disabled metrics are not logged
    assert torch.allclose(m["val/artfid"], (1 + m["val/lpips"]) * (1 + m["val/fid_art"]), rtol=1e-5)
    assert cb.state_dict() == {"rounds": 3}
    # FID's reference set counts each style once per pair that used it (as eval.py does)
    assert int(cb.suite.fid_art.real_features_num_samples) == len(cb.pairs) == 6


def test_callback_logs_a_metric_of_ones_own(tiny_net, image_dirs, tmp_path):
    """callbacks.eval_metrics.metrics.extra: logged as val/<name>, fresh at each evaluation."""
    import copy

    extra = {"mae": {"_target_": "torchmetrics.regression.MeanAbsoluteError"}}
    cb = _callback(image_dirs, metrics={**METRICS, "extra": extra})
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(TinyModule(copy.deepcopy(tiny_net)), loader(), loader())
    mae = trainer.callback_metrics["val/mae"]
    assert torch.isfinite(mae) and 0 < mae < 1
    assert int(cb.suite.extra["mae"].total) == 0  # reset after the evaluation


def test_a_metric_of_ones_own_named_like_a_value_the_module_logs_is_refused(tiny_net, image_dirs, tmp_path):
    """A loss term of one's own (val/loss_tv, say) and an extra metric of that name: one value
    overwrote the other in val/. Refused at the sanity check, before any training step."""
    import copy

    class LogsTV(TinyModule):
        def validation_step(self, batch, _):
            self.log("val/tv", batch[0].diff(dim=-1).abs().mean())

    extra = {"tv": {"_target_": "torchmetrics.regression.MeanAbsoluteError"}}
    cb = _callback(image_dirs, metrics={**METRICS, "extra": extra})
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    with pytest.raises(ValueError, match=r"already logs val/tv; rename .*metrics.extra.tv"):
        trainer.fit(LogsTV(copy.deepcopy(tiny_net)), loader(), loader())
    assert trainer.global_step == 0


def test_the_logged_names_check_passes_where_lightning_has_no_result_collection(image_dirs, caplog):
    """The check reads Lightning's private trainer._results: a release without it failed every
    training run at its first validation with an AttributeError; now the check is skipped, with a warning."""
    cb = _callback(image_dirs, metrics=METRICS)
    cb.suite = SimpleNamespace(extra={"tv": None})
    with caplog.at_level(logging.WARNING, logger="samam.evaluation"):
        cb._check_extra_names_free(SimpleNamespace(sanity_checking=True))
    assert "names not checked" in caplog.text


def test_only_the_first_rank_logs_the_synced_metrics(tiny_net, image_dirs, tmp_path, monkeypatch, caplog):
    """The values are all-reduced, the same on every rank: each DDP rank printed them."""
    import copy
    import logging

    monkeypatch.setattr(L.Trainer, "is_global_zero", property(lambda trainer: False))
    with caplog.at_level(logging.INFO, logger="samam.evaluation"):
        _trainer(tmp_path, [_callback(image_dirs)], max_epochs=1).fit(
            TinyModule(copy.deepcopy(tiny_net)), loader(), loader()
        )
    assert [r.message for r in caplog.records if r.name == "samam.evaluation"] == []


def test_values_of_stand_in_networks_are_said_to_mean_nothing(tiny_net, image_dirs, tmp_path, caplog):
    """metrics.test_extractors=true logged val/artfid etc. like real values, with no word of it."""
    import copy
    import logging

    with caplog.at_level(logging.INFO, logger="samam.evaluation"):
        _trainer(tmp_path, [_callback(image_dirs)], max_epochs=1).fit(
            TinyModule(copy.deepcopy(tiny_net)), loader(), loader()
        )
    records = [r for r in caplog.records if r.name == "samam.evaluation"]
    warned = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warned == [
        "eval metrics: fid_art, lpips, cfsd use random stand-in networks (TEST ONLY): their val/ values mean nothing"
    ]
    step_lines = [r.getMessage() for r in records if r.getMessage().startswith("eval metrics at step")]
    assert step_lines and all(
        line.endswith("; TEST ONLY random networks for fid_art, lpips, cfsd") for line in step_lines
    )


def test_outputs_that_are_not_finite_give_nan_metrics_not_black_images(
    tiny_net, image_dirs, tmp_path, caplog
):
    """to_uint8 turns NaN into 0: a diverged network was scored on black images, finite values
    that a best-ArtFID checkpoint could rank."""
    import copy
    import logging

    net = copy.deepcopy(tiny_net)
    with torch.no_grad():
        net.image_decoder.layers[28].bias.fill_(float("nan"))
    trainer = _trainer(tmp_path, [_callback(image_dirs)], max_epochs=1)
    with caplog.at_level(logging.WARNING, logger="samam.evaluation"):
        trainer.validate(TinyModule(net), loader(), verbose=False)
    for key in ("val/artfid", "val/fid_art", "val/lpips", "val/cfsd"):
        assert torch.isnan(trainer.callback_metrics[key]), key
    assert any("6 of 6 outputs hold NaN or inf" in r.getMessage() for r in caplog.records)


def test_the_callback_logs_the_values_eval_py_writes_for_the_same_weights_and_pairs(
    tiny_net, image_dirs, tmp_path
):
    """val/artfid during training and eval.py's results.json must be one measurement: same
    images, sizes, reference set and formulas (here at the callback's sizes)."""
    import copy

    from samam.evaluation import evaluate

    ckpt = tmp_path / "w.ckpt"
    state = {"net." + k: v for k, v in tiny_net.state_dict().items()}
    torch.save({"state_dict": state, "samam": {"model": tiny_net.config, "config": None, "version": 1}}, ckpt)
    res = evaluate(
        ckpt, *image_dirs, tmp_path / "eval", device="cpu", backend="torch", content_size=32, style_size=64,
        metrics=METRICS, bench={"enabled": False}, progress=False,
    )  # fmt: skip
    trainer = _trainer(tmp_path, [_callback(image_dirs)], max_epochs=1)
    trainer.validate(TinyModule(copy.deepcopy(tiny_net)), loader(), verbose=False)
    for name in ("artfid", "fid_art", "lpips", "cfsd"):
        assert float(trainer.callback_metrics[f"val/{name}"]) == pytest.approx(res[name], rel=1e-5), name


def test_an_evaluation_before_training_and_one_in_training(tiny_net, image_dirs, tmp_path):
    """validate_before_training=true: Lightning's validate runs in inference mode and fit's
    validation does not, so metric states made in the first (inference tensors) failed the
    next in-place update ("Inplace update to inference tensor outside InferenceMode")."""
    import copy

    cb = _callback(image_dirs, every_n_val_rounds=1)
    module = TinyModule(copy.deepcopy(tiny_net))
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.validate(module, loader(), verbose=False)
    before = float(trainer.callback_metrics["val/artfid"])
    trainer.fit(module, loader(), loader())
    assert cb.rounds == 2 and torch.isfinite(trainer.callback_metrics["val/artfid"])
    assert before != float(trainer.callback_metrics["val/artfid"])  # trained weights, a new score


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_a_run_whose_weights_are_not_float32_is_evaluated(tiny_net, image_dirs, tmp_path, precision):
    """trainer.precision=64-true (or bf16-true): the callback fed float32 images to the converted
    weights and the run failed at its first validation ("style is torch.float32 but the weights are ...")."""
    import copy

    cb = _callback(image_dirs, every_n_val_rounds=1)
    trainer = _trainer(tmp_path, [cb], max_epochs=1, precision=precision)
    trainer.fit(TinyModule(copy.deepcopy(tiny_net)), loader(), loader())
    assert torch.isfinite(trainer.callback_metrics["val/artfid"])


def _fit_recording(cb, best, metric, tiny_net, tmp_path, epochs):
    """Fit with the eval-metrics callback ``cb`` and the checkpoint callback ``best``, one
    evaluation per epoch; each step's own ``metric`` as the callback computed it."""
    import copy

    scores = {}
    original = cb.evaluate
    cb.evaluate = lambda trainer, module: scores.setdefault(
        trainer.global_step, original(trainer, module)[metric]
    )
    module = TinyModule(copy.deepcopy(tiny_net))
    module.configure_optimizers = lambda: torch.optim.SGD(module.parameters(), lr=0.5)  # scores must move
    _trainer(tmp_path, [cb, best], max_epochs=epochs).fit(module, loader(), loader())
    assert len(scores) == epochs and len(set(scores.values())) > 1
    return scores


def test_best_artfid_checkpoint_is_ranked_by_its_own_weights(tiny_net, image_dirs, tmp_path):
    """conf/callbacks/best_artfid.yaml with an evaluation at every validation: the kept file is
    the step whose own ArtFID was lowest, and its recorded score is that step's."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "callbacks" / "best_artfid.yaml")
    conf.dirpath = str(tmp_path / "ckpt")
    best = instantiate(conf)
    cb = _callback(image_dirs, every_n_val_rounds=1)
    scores = _fit_recording(cb, best, "artfid", tiny_net, tmp_path, epochs=4)
    step = min(scores, key=scores.get)
    assert Path(best.best_model_path).name == f"best-artfid-step{step:07d}.ckpt"
    assert float(best.best_model_score) == pytest.approx(scores[step], rel=1e-6)


def test_a_checkpoint_ranked_by_a_metric_that_is_never_logged_is_refused(tiny_net, image_dirs, tmp_path):
    import copy

    one = _callback(image_dirs, max_pairs=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/artfid", mode="min")
    with pytest.raises(ValueError, match="will never be logged .a FID needs at least 2 stylised images"):
        _trainer(tmp_path, [one, ckpt]).fit(TinyModule(copy.deepcopy(tiny_net)), loader(), loader())
    off = _callback(image_dirs, every_n_val_rounds=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt2", monitor="val/fid_tf", mode="min")
    with pytest.raises(ValueError, match="val/fid_tf will never be logged .disabled"):
        _trainer(tmp_path, [off, ckpt]).fit(TinyModule(copy.deepcopy(tiny_net)), loader(), loader())


@pytest.mark.parametrize("rounds, extra", [(2, {}), (1, {"every_n_train_steps": 5})])
def test_a_checkpoint_ranked_by_a_stale_score_is_refused(tiny_net, image_dirs, tmp_path, rounds, extra):
    import copy

    cb = _callback(image_dirs, every_n_val_rounds=rounds)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/artfid", mode="min", **extra)
    with pytest.raises(ValueError, match="measured on earlier weights"):
        _trainer(tmp_path, [cb, ckpt]).fit(TinyModule(copy.deepcopy(tiny_net)), loader(), loader())


SSIM = {"_target_": "torchmetrics.image.StructuralSimilarityIndexMeasure", "data_range": 1.0}


def test_a_checkpoint_ranked_by_a_metric_of_ones_own_keeps_its_best(tiny_net, image_dirs, tmp_path):
    """monitor=val/<extra> with the metric's direction (SSIM: higher is better): the kept file is
    the step whose own score was highest."""
    cb = _callback(image_dirs, metrics={**METRICS, "extra": {"ssim": SSIM}})
    best = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="best-{step}", monitor="val/ssim", mode="max", save_top_k=1
    )
    scores = _fit_recording(cb, best, "ssim", tiny_net, tmp_path, epochs=3)
    step = max(scores, key=scores.get)
    assert Path(best.best_model_path).name == f"best-step={step}.ckpt"


@pytest.mark.parametrize(
    "extra, monitor, mode, rounds, message",
    [
        ({"ssim": SSIM}, "val/ssim", "max", 2, "measured on earlier weights"),  # stale, as for val/artfid
        ({"ssim": SSIM}, "val/ssim", "min", 1, r"mode='min'\) would keep the worst .* higher ssim is better"),
        ({}, "val/artfid", "max", 1, r"mode='max'\) would keep the worst .* lower artfid is better"),
        (
            {"avg": {"_target_": "torchmetrics.aggregation.MeanMetric"}},
            "val/avg",
            "max",
            1,
            r"MeanMetric.higher_is_better is None.*metrics.extra.avg.higher_is_better=true\|false",
        ),
    ],
)
def test_a_checkpoint_ranked_the_wrong_way_or_stale_by_a_metric_of_ones_own_is_refused(
    tiny_net, image_dirs, tmp_path, extra, monitor, mode, rounds, message
):
    import copy

    cb = _callback(image_dirs, every_n_val_rounds=rounds, metrics={**METRICS, "extra": extra})
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=monitor, mode=mode)
    with pytest.raises(ValueError, match=message):
        _trainer(tmp_path, [cb, ckpt]).fit(TinyModule(copy.deepcopy(tiny_net)), loader(), loader())


def test_a_metric_of_ones_own_states_its_direction_in_its_config():
    """higher_is_better in metrics.extra.<name> ranks by a Metric whose class leaves it None."""
    from samam.metrics import build_metrics

    avg = {"_target_": "torchmetrics.aggregation.MeanMetric", "higher_is_better": True}
    assert build_metrics(test_extractors=True, extra={"avg": avg}).higher_is_better["avg"] is True
    with pytest.raises(
        ValueError,
        match="higher_is_better=False contradicts StructuralSimilarityIndexMeasure.higher_is_better=True",
    ):
        build_metrics(test_extractors=True, extra={"ssim": {**SSIM, "higher_is_better": False}})


def test_callback_with_one_pair_logs_lpips_and_skips_the_fids(tiny_net, image_dirs, tmp_path):
    """max_pairs=1: one stylised image has no FID; validation must go on with LPIPS/CFSD logged."""
    import copy

    cb = _callback(image_dirs, max_pairs=1)
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(TinyModule(copy.deepcopy(tiny_net)), loader(), loader())
    m = trainer.callback_metrics
    assert "val/lpips" in m and "val/cfsd" in m
    assert "val/fid_art" not in m and "val/artfid" not in m
    assert "at least 2" in cb.suite.null_reasons["fid_art"]


def test_callback_with_contents_at_their_own_sizes(tiny_net, image_dirs, tmp_path):
    """content_size=null keeps each file's size (40×52 and 64×48 here): a batch holds one size."""
    import copy

    content, style = image_dirs
    cb = EvalMetricsCallback(
        content, style, content_size=None, style_size=64, style_short_side=None, batch_size=4, metrics=METRICS
    )
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(TinyModule(copy.deepcopy(tiny_net)), loader(), loader())
    assert len({tuple(c.shape) for c in cb.contents}) == 2
    m = trainer.callback_metrics
    for key in ("val/artfid", "val/lpips", "val/cfsd"):
        assert key in m and torch.isfinite(m[key]), key
    assert int(cb.suite.fid_art.real_features_num_samples) == len(cb.pairs) == 6


@pytest.mark.parametrize("bad", ["truncated.jpg", "small.png"])
def test_an_unusable_eval_image_fails_at_setup_naming_the_file(
    tiny_net, image_dirs, folder_copy, make_image, tmp_path, bad
):
    """A truncated file, or one below the network's 16-px minimum as kept (content_size=null):
    refused before the first training step, with its name (PIL's truncation error has none)."""
    import copy
    import io

    from PIL import Image

    content, style = image_dirs
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
    extra = {"truncated.jpg": buf.getvalue()[:200]} if bad == "truncated.jpg" else {}
    folder = folder_copy(content, tmp_path / "content", extra)
    if bad == "small.png":
        make_image(folder / bad, 40, 12, seed=9)
    cb = EvalMetricsCallback(
        folder, style, content_size=None, style_size=64, style_short_side=None, metrics=METRICS
    )
    module = TinyModule(copy.deepcopy(tiny_net))
    steps = []
    module.on_train_batch_start = lambda *args: steps.append(1)
    with pytest.raises(ValueError, match=bad):
        _trainer(tmp_path, [cb], max_epochs=1).fit(module, loader(), loader())
    assert steps == []


def test_a_style_file_the_art_inception_cannot_take_fails_at_setup(
    tiny_net, image_dirs, make_image, tmp_path, monkeypatch
):
    """FID's reference set is the style files as decoded; with metrics.fid_art.short_side=null the
    art Inception needs 75 px of them, but setup checked the styles only as resized for the
    network: a 70-px file failed at the first evaluation, steps into training, unnamed."""
    import copy

    from samam import metrics as M

    monkeypatch.setattr(
        M, "art_inception", lambda weights, download, short_side: M.ArtInceptionFeatures(short_side)
    )
    content, _ = image_dirs
    folder = tmp_path / "style"
    folder.mkdir()
    for name, side in (("s0.png", 96), ("s1.png", 80), ("small.png", 70)):
        make_image(folder / name, side, side, seed=side)
    metrics = {"fid_art": {"short_side": None}, "fid_tf": {"enabled": False}, "cfsd": {"enabled": False}}
    cb = EvalMetricsCallback(
        content, folder, content_size=80, style_size=64, metrics={**metrics, "lpips": {"pnet_rand": True}}
    )
    module = TinyModule(copy.deepcopy(tiny_net))
    steps = []
    module.on_train_batch_start = lambda *args: steps.append(1)
    with pytest.raises(ValueError, match="small.png"):
        _trainer(tmp_path, [cb], max_epochs=1).fit(module, loader(), loader())
    assert steps == []


def test_callback_refuses_an_unknown_precision_when_built(image_dirs):
    """precision=bf16-mixed (Lightning's name) was refused only at the first evaluation, after
    training up to the first validation."""
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'bf16-mixed'"):
        _callback(image_dirs, precision="bf16-mixed")


def test_callback_config_composes_and_instantiates():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["+callbacks@callbacks.eval_metrics=eval_metrics"])
    cb = instantiate(cfg.callbacks.eval_metrics)
    assert isinstance(cb, EvalMetricsCallback) and cb.every_n_val_rounds >= 1
    assert str(cb.content).endswith("eval/content")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        over = [
            "+callbacks@callbacks.eval_metrics=eval_metrics",
            "callbacks.eval_metrics.every_n_val_rounds=1",
        ]
        cfg = compose("train", overrides=[*over, "+callbacks@callbacks.best_artfid=best_artfid"])
    cfg.callbacks.best_artfid.dirpath = "checkpoints"  # ${paths.output_dir} needs a Hydra run
    best = instantiate(cfg.callbacks.best_artfid)
    assert isinstance(best, ModelCheckpoint) and best.monitor == "val/artfid" and best.mode == "min"


class RecordingWandb(WandbLogger):
    def __init__(self):
        super().__init__(offline=True)
        self.tables = []

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables.append((key, columns, data, step))


def test_wandb_table_of_samples_is_uint8():
    rec = RecordingWandb()
    u8 = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    EvalMetricsCallback._log_table(
        SimpleNamespace(loggers=[rec], global_step=7), [("c_stylized_s", u8, u8, u8)]
    )
    key, columns, data, step = rec.tables[0]
    assert key == "val/samples" and columns == ["pair", "content", "style", "output"] and step == 7
    assert data[0][0] == "c_stylized_s" and len(data[0]) == 4


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"batch_size": 0}, "batch_size must be ≥ 1, got 0"),
        ({"max_pairs": 0}, "max_pairs must be ≥ 1 or null"),
        ({"max_pairs": -2}, "max_pairs must be ≥ 1 or null"),
    ],
    ids=["batch_size=0", "max_pairs=0", "max_pairs=-2"],
)
def test_callback_refuses_an_empty_batch_or_pair_set_when_built(image_dirs, kw, message):
    """batch_size=0 trained to the first validation, then failed in range(); max_pairs=0 raised
    ZeroDivisionError at setup, and max_pairs=-2 evaluated no pair and logged NaN LPIPS and CFSD."""
    content, style = image_dirs
    with pytest.raises(ValueError, match=message):
        EvalMetricsCallback(content, style, metrics=METRICS, **kw)
