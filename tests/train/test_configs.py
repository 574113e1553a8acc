"""Every experiment composes, instantiates and trains a step (shrunk to a tiny CPU network)."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from samam.train import check_launch, main, world_size

CONF = Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
ABLATED = {
    "ablation_zigzag": ("scan", "cross"),
    "ablation_s7": ("style_ssm", False),
    "ablation_sain": ("out_norm", "layernorm"),
    "ablation_sconv": ("sconv", False),
    "ablation_scm": ("scm", False),
    "ablation_loe": ("loe", False),
    "ablation_patch": ("patch_size", 4),
    "ablation_mixer": ("mixer", "attention"),
}


def test_all_studies_present():
    assert {"paper", "demo", *ABLATED} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, compose, tiny):
    full = compose([f"experiment={experiment}"])
    assert full.experiment_name == experiment
    if experiment in ABLATED:
        key, value = ABLATED[experiment]
        assert full.model[key] == value
        assert full.logger.wandb.group == experiment
    cfg = compose([f"experiment={experiment}", *tiny()])
    net = instantiate(cfg.model)
    assert net.config["embed_dim"] == 32
    if experiment in ABLATED:
        key, value = ABLATED[experiment]
        assert net.config[key] == value
    module = instantiate(cfg.module, net=net, loss=instantiate(cfg.loss))
    assert module.net is net
    instantiate(cfg.data)
    instantiate(cfg.trainer, logger=False)
    # debug=cpu_tiny, as its file promises, shrinks any experiment and keeps its switch
    small = compose([f"experiment={experiment}", "debug=cpu_tiny"])
    assert small.model.embed_dim == 32 and small.trainer.accelerator == "cpu"
    assert small.trainer.max_steps == 4 and small.data.crop == 64
    if experiment in ABLATED:
        key, value = ABLATED[experiment]
        assert small.model[key] == value


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_trains_a_step(experiment, compose, tiny):
    """Composing and building is not training: each experiment, shrunk, runs a training and a
    validation step (fast_dev_run) with finite losses, its switch kept."""
    metrics = main(compose([f"experiment={experiment}", *tiny(), "debug=fdr"]))
    assert {"train/loss", "val/loss"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())


def test_a_loss_term_of_ones_own_trains_and_is_logged(compose, tiny):
    """experiments/README.md's recipe: a StyleTransferLoss subclass as loss._target_, its weight
    from the config; every term it returns is logged."""
    overrides = ["debug=fdr", "loss._target_=user_losses.WithTV", "+loss.tv_weight=0.5"]
    cfg = compose([*tiny(), *overrides])
    assert instantiate(cfg.loss).tv_weight == 0.5
    metrics = main(cfg)
    assert {"train/loss_tv", "val/loss_tv"} <= set(metrics) and metrics["train/loss_tv"] > 0


def test_a_norm_of_ones_own_trains_from_the_command_line(compose, tiny):
    """model.out_norm=<module>:<DecoderNorm subclass> (tests/user_norms.py), no edit of the package."""
    cfg = compose([*tiny(), "debug=fdr", "model.out_norm=user_norms:StyleGroupNorm"])
    net = instantiate(cfg.model)
    assert net.config["out_norm"] == "user_norms:StyleGroupNorm"
    assert type(net.decoder[0].blocks[0].out_norm).__name__ == "StyleGroupNorm"
    metrics = main(cfg)
    assert {"train/loss", "val/loss"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())


def test_ablation_mixer_with_another_scan_refuses_its_attention_arm(compose, tiny):
    """`-m experiment=ablation_mixer scan=cross`: the attention arm would be the zigzag one under
    another name; it is refused before training, the scan arm builds with the cross scan."""
    cfg = compose(["experiment=ablation_mixer", "scan=cross", *tiny()])
    with pytest.raises(Exception, match="scan='cross' has no effect with mixer='attention'"):
        instantiate(cfg.model)
    ssm = compose(["experiment=ablation_mixer", "scan=cross", "model.mixer=ssm", *tiny()])
    assert instantiate(ssm.model).config["scan"] == "cross"


def test_a_scan_order_of_ones_own_trains_from_the_command_line(compose, tiny, scan_module):
    """model.scan=<module>:<function>, no edit of the package; the run's network keeps the path."""
    cfg = compose([*tiny(), "debug=fdr", f"model.scan={scan_module}:diagonal"])
    assert instantiate(cfg.model).config["scan"] == f"{scan_module}:diagonal"
    metrics = main(cfg)
    assert {"train/loss", "val/loss"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())


def test_model_presets_compose(compose):
    for preset in ("samam", "small", "tiny"):
        cfg = compose([f"model={preset}", "scan=cross", "norm=instancenorm"])
        assert cfg.model._target_ == "samam.SaMam"
        assert cfg.model.scan == "cross" and cfg.model.out_norm == "instancenorm"


def test_run_name_leaves_out_the_checkpoint_path(monkeypatch):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from samam import train

    hc = SimpleNamespace(
        overrides=SimpleNamespace(task=["experiment=demo", "seed=1", "ckpt_path=/a/b/last.ckpt"])
    )
    monkeypatch.setattr(train.HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(train.HydraConfig, "get", staticmethod(lambda: hc))
    assert train.default_run_name(OmegaConf.create({"experiment_name": "demo"})) == "demo,seed=1"


def test_world_size():
    assert world_size(2, 3) == 6
    assert world_size([0, 1], 1) == 2
    assert world_size("auto", 1) is None


def test_multirun_with_in_process_ddp_is_refused(monkeypatch, compose):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    cfg = compose(["trainer=ddp_sim"])
    fake = OmegaConf.create(
        {"mode": RunMode.MULTIRUN, "runtime": {"choices": {"hydra/launcher": "basic", "trainer": "ddp_sim"}}}
    )
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: fake))
    with pytest.raises(RuntimeError, match="one run must be one process group"):
        check_launch(cfg)
    fake.runtime.choices["hydra/launcher"] = "slurm"
    check_launch(cfg)  # a cluster launcher gives each arm its own job
    check_launch(compose(["trainer=cpu"]))
    fake.runtime.choices["hydra/launcher"] = "basic"
    with pytest.raises(RuntimeError, match="2 processes"):  # strategy=auto: Lightning would pick DDP
        check_launch(compose(["trainer=cpu", "trainer.devices=2"]))


def test_conf_files_have_no_stray_names():
    """Each file is an entry config or an option of a group train.yaml reads: Hydra never finds
    one in a misspelt or unread group folder (conf/models/, conf/experiments/)."""
    from hydra import compose, initialize_config_dir

    names = {p.relative_to(CONF).as_posix() for p in Path(CONF).rglob("*.yaml")}
    assert {n for n in names if "/" not in n} == {"train.yaml", "eval.yaml", "stylize.yaml"}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        choices = compose("train", return_hydra_config=True).hydra.runtime.choices
    read = {group.split("@")[0] for group in choices}  # local@_global_: the group local
    stray = sorted(n for n in names if "/" in n and n.rsplit("/", 1)[0] not in read)
    assert stray == []


def test_paper_experiment_holds_the_release_recipe(compose):
    """SPEC §5, value by value: a wrong number here trains a different recipe without an error."""
    cfg = compose(["experiment=paper"])
    assert (cfg.loss.content_weight, cfg.loss.style_weight) == (7.0, 7.0)
    assert (cfg.loss.identity1_weight, cfg.loss.identity2_weight) == (70.0, 1.0)
    assert cfg.loss.vgg.endswith("models/vgg_normalised.pth")
    assert cfg.module.optimizer._target_ == "torch.optim.Adam" and cfg.module.optimizer.lr == 1e-4
    assert set(cfg.module.optimizer) == {"_target_", "_partial_", "lr"}  # Adam's default betas, eps, no decay
    assert cfg.module.scheduler.decay == 2e-5
    assert (cfg.data.batch_size, cfg.data.crop, cfg.data.resize) == (8, 256, 512)
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval, cfg.trainer.precision) == (
        200_000,
        1000,
        "32-true",
    )
    assert (cfg.model.patch_size, cfg.model.embed_dim, cfg.model.scan) == (8, 256, "zigzag")


def test_runs_launched_together_get_their_own_folders(monkeypatch):
    """`for s in 0 1; do python train.py seed=$s & done` (or two sweeps started together): run and
    sweep folders named by the second were shared, and one run's checkpoints replaced the other's."""
    import re
    from datetime import datetime, timedelta

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
    folders = [hydra["run"]["dir"], hydra["sweep"]["dir"]]
    for name in ("eval", "stylize"):  # their default output_dir, e.g. two eval.py runs in a loop with &
        folders.append(OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))["output_dir"])
    started = datetime(2026, 11, 27, 20, 25, 17, 1000)
    for folder in folders:
        pattern = re.search(r"\$\{now:([^}]*)\}", folder).group(1)
        assert started.strftime(pattern) != (started + timedelta(milliseconds=1)).strftime(pattern), folder


def test_multirun_ddp_on_a_launcher_file_of_your_own_built_on_submitit(monkeypatch):
    """conf/hydra/launcher/<yours>.yaml with `defaults: [submitit_slurm]` (another partition or
    account) is a cluster launcher like ours: it was refused, as the check went by the file's name."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", ["trainer=ddp_sim", "hydra/launcher=slurm"], return_hydra_config=True)
    hc = cfg.hydra
    with open_dict(hc):
        hc.mode = RunMode.MULTIRUN
        hc.runtime.choices["hydra/launcher"] = "cluster_a100"
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hc))
    check_launch(cfg)
    hc.launcher._target_ = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"  # in-process: refused
    with pytest.raises(RuntimeError, match="one run must be one process group"):
        check_launch(cfg)


def test_multirun_ddp_on_submitit_local_is_refused(monkeypatch):
    """submitit_local runs a job as a local process: Lightning's relaunch of rank 1 re-ran
    submitit's _submit.py with Hydra arguments ("unrecognized arguments"), after everything was built."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", ["trainer=ddp_sim", "hydra/launcher=submitit_local"], return_hydra_config=True)
    hc = cfg.hydra
    with open_dict(hc):
        hc.mode = RunMode.MULTIRUN
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hc))
    with pytest.raises(
        RuntimeError, match="on the 'submitit_local' launcher: one run must be one process group"
    ):
        check_launch(cfg)


@pytest.mark.parametrize(
    "override",
    [
        "validate_before_training=yes",
        "trainer.enable_progress_bar=off",
        "trainer.deterministic=1",
        "data.pin_memory=no",
        "callbacks.checkpoint.save_last=off",
        "+module.optimizer.amsgrad=yes",
        "logger=wandb",
    ],
)
def test_a_switch_given_as_a_string_is_refused_before_anything_is_built(compose, tiny, tmp_path, override):
    """Hydra reads `yes`, `off` as strings (and `1` as an int): truthy, so the run silently did
    the other thing (validated first, kept last.ckpt, pinned memory)."""
    from samam.train import main

    extra = ["logger.wandb.log_model=no"] if override == "logger=wandb" else []
    name = (extra or [override])[0].split("=")[0].lstrip("+")
    with pytest.raises(TypeError, match=rf"{re.escape(name)}=.* must be true or false"):
        main(compose([*tiny(), "debug=fdr", override, *extra]))
    assert not any(tmp_path.iterdir())  # refused before the run folder was touched


def test_switches_keep_the_non_bool_values_their_targets_accept(compose, tiny):
    from samam.train import check_switch_settings

    check_switch_settings(
        compose([*tiny(), "callbacks.checkpoint.save_last=link", "trainer.deterministic=warn"])
    )
    check_switch_settings(compose(["callbacks=none", "logger=none"]))
    check_switch_settings(compose(["logger=wandb", "logger.wandb.log_model=all"]))  # WandbLogger's "all"


@pytest.mark.parametrize(
    "trainer, gpus", [("cpu", None), ("ddp_sim", None), ("gpu", 1), ("ddp", 4), ("default", 1)]
)
def test_slurm_asks_for_gpus_only_for_a_gpu_trainer(trainer, gpus):
    """gpus_per_node was ${trainer.devices} whatever the accelerator: trainer=cpu asked SLURM for
    a GPU (and ddp_sim for 2), waiting in a GPU queue for cards the run never touches."""
    from hydra import compose, initialize_config_dir

    import samam.resolvers  # noqa: F401 (train.py imports it: registers ${samam.slurm_gpus:...})

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", [f"trainer={trainer}", "hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher.gpus_per_node == gpus
    assert cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices  # one process per device, CPU or GPU


def test_the_training_code_registers_the_config_resolvers():
    """A SLURM job's process runs the task function pickled from train.py without train.py's
    imports: samam.train itself must register ${samam.slurm_gpus:...} for the job's config."""
    code = "import samam.train; from omegaconf import OmegaConf; print(OmegaConf.create({'g': '${samam.slurm_gpus:cpu,2}'}).g)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "None", res.stderr[-2000:]


def test_a_sweep_of_no_study_gets_a_wandb_group_of_its_own(monkeypatch):
    """Every sweep of no study (python train.py -m scan=zigzag,cross: experiment_name 'default')
    went to the one W&B group "default", whatever day it ran; each now has default-<its folder's
    name>, its start time. A study's sweep keeps the study's name, a single run 'default'."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import samam.resolvers  # noqa: F401 (train.py imports it: registers ${samam.wandb_group:...})

    def group(overrides: list[str]) -> str:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides, return_hydra_config=True)
        monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: cfg.hydra))
        return cfg.logger.wandb.group

    sweep = ["hydra.mode=MULTIRUN", "scan=cross"]
    assert group([*sweep, "hydra.sweep.dir=multirun/default/2026-11-28_10-00-00-000001"]) == (
        "default-2026-11-28_10-00-00-000001"
    )
    assert re.fullmatch(r"default-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}", group(sweep))  # train.yaml's folder
    assert group(["hydra.mode=MULTIRUN", "experiment=ablation_zigzag"]) == "ablation_zigzag"
    assert group(["hydra.mode=RUN", "scan=cross"]) == "default"
    assert group([*sweep, "logger.wandb.group=mine"]) == "mine"


def test_a_new_top_level_key_is_refused(monkeypatch, compose, tiny, tmp_path):
    """Hydra answers a mistyped `validate_before_trainig=true` with "To append to your config use
    +validate_before_trainig=true"; that ran, ignoring it. Group appends stay allowed."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from samam.train import check_appended_keys, main

    typo = "+validate_before_trainig=true"
    fake = OmegaConf.create(
        {
            "mode": RunMode.RUN,
            "runtime": {"choices": {"hydra/launcher": "basic", "debug": "fdr", "callbacks": "default"}},
            "overrides": {"task": ["debug=fdr", typo]},
        }
    )
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: fake))
    with pytest.raises(
        ValueError, match=rf"{re.escape(typo)}: train.py has no setting 'validate_before_trainig'"
    ):
        main(compose([*tiny(), "debug=fdr", typo]))
    assert not any(tmp_path.iterdir())
    fake.overrides.task = [
        "+debug=fdr",
        "+callbacks@callbacks.eval_metrics=eval_metrics",
        "++seed=3",
        "+paths.x=1",
    ]
    check_appended_keys()


def test_a_misspelt_key_in_an_experiment_file_is_refused(tiny, train_subprocess, tmp_path):
    """An experiment file of one's own (`# @package _global_`) with `experiment_nmae: my_study`
    and `sead: 3` trained as the experiment it extended, W&B group and seed included. A group of
    one's own (+notes=mine, its key `notes`) and a value of one's own that an interpolation reads
    (`my_lr`) are still allowed."""
    mine = tmp_path / "mine"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "my_study.yaml").write_text(
        "# @package _global_\ndefaults:\n  - demo\n  - _self_\nexperiment_nmae: my_study\nsead: 3\n"
        "my_lr: 0.002\nmodule:\n  optimizer:\n    lr: ${my_lr}\n"
    )
    (mine / "notes").mkdir()
    (mine / "notes" / "mine.yaml").write_text("text: why this run\n")
    run = tmp_path / "run"
    overrides = [o for o in tiny(Path("IGNORED")) if not o.startswith("paths.output_dir")]
    res = train_subprocess(
        [
            f"hydra.searchpath=[file://{mine}]",
            "experiment=my_study",
            "+notes=mine",
            *overrides,
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode != 0
    refused = "ValueError: experiment_nmae, sead: train.py has no such settings"
    assert refused in res.stderr, res.stderr[-3000:]
    assert not (run / "checkpoints").exists()


def test_a_config_that_asks_for_a_choice_is_not_refused(monkeypatch, tmp_path, caplog):
    """A config of one's own (--config-dir, --config-name study) whose defaults ask for a choice
    (`override experiment: ???`) composes with the command line's experiment=demo, but the key
    check composed it without the command line and failed there ("You must specify
    'experiment'"): the run never started. Now it goes on unchecked, with a warning."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from samam.train import check_file_keys

    (tmp_path / "study.yaml").write_text(
        f"defaults:\n  - train\n  - override experiment: ???\n  - _self_\nhydra:\n  searchpath: [file://{CONF}]\n"
    )
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("study", ["experiment=demo"], return_hydra_config=True)
        hc = cfg.hydra
        assert hc.job.config_name == "study"
        monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hc))
        with open_dict(cfg):
            del cfg["hydra"]
        check_file_keys(cfg)
    assert "top-level keys not checked" in caplog.text


def test_a_key_of_ones_own_that_hydra_reads_is_not_refused(monkeypatch, tmp_path):
    """An experiment file of one's own naming its run folder from a key of its own
    (`study: lr_study`, `hydra.run.dir: runs/${study}`) was refused as "nothing reads a new
    top-level one", though Hydra reads it; only the run config's interpolations were looked at.
    A key read through ${oc.select:key,default} counts too (the pattern took "oc" for the key)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from samam.train import check_file_keys

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - demo\n  - _self_\nstudy: lr_study\nmy_note: x\n"
        "hydra:\n  run:\n    dir: runs/${study}/${oc.select:my_note,none}\n"
    )
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", [f"hydra.searchpath=[file://{tmp_path}]", "experiment=mine"], return_hydra_config=True
        )
        hc = cfg.hydra
        monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hc))
        with open_dict(cfg):
            del cfg["hydra"]
        check_file_keys(cfg)
        with open_dict(cfg):
            cfg.sead = 3  # a typo is still refused
        with pytest.raises(ValueError, match="sead: train.py has no such setting"):
            check_file_keys(cfg)


def test_machine_paths_in_conf_local_apply(tmp_path):
    """conf/local/default.yaml, which train.yaml offers for machine paths, was merged under a
    `local:` key: `paths: {data_dir: /big/data}` written there changed nothing."""
    import shutil

    from hydra import compose, initialize_config_dir

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf, ignore=shutil.ignore_patterns("local"))
    (conf / "local").mkdir()
    (conf / "local" / "default.yaml").write_text("paths:\n  data_dir: /big/data\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", ["experiment=paper"])
        assert cfg.paths.data_dir == "/big/data" and "local" not in cfg
        assert cfg.data.content_dir == "/big/data/coco/train2017"
        assert "local" not in compose("train", [])  # no local file: nothing added


@pytest.mark.parametrize("override", ["callbacks.progress=false", "logger.csv=false"])
def test_an_entry_switched_off_with_false_is_refused_with_the_fix(compose, tiny, tmp_path, override):
    """`callbacks.progress=false` failed after the network was built: "argument of type 'bool' is
    not iterable". The way to switch an entry off is null."""
    from samam.train import main

    key = override.split("=")[0]
    with pytest.raises(
        ValueError, match=rf"{re.escape(key)}=False: an entry is a config; switch it off with {key}=null"
    ):
        main(compose([*tiny(), override]))
    assert not any(tmp_path.iterdir())


def test_debug_cpu_tiny_needs_no_dataset_or_loss_network_file(compose, tmp_path):
    """debug=cpu_tiny promised any experiment as a seconds-long CPU run, but kept the experiment's
    data and loss network: the paper-based ones stopped at once without COCO, WikiArt and
    vgg_normalised.pth (and with them spent minutes checking 200k files)."""
    from samam.train import check_inputs_exist

    for experiment in ("paper", "ablation_s7", "demo"):
        cfg = compose([f"experiment={experiment}", "debug=cpu_tiny", f"paths.root={tmp_path}"])
        assert cfg.data._target_ == "samam.demo_data.DemoDataModule" and cfg.data.crop == 64
        check_inputs_exist(cfg)
    own = compose(
        ["experiment=paper", "debug=cpu_tiny", "data=folders", "data.content_dir=c", "data.style_dir=s"]
    )
    assert own.data.content_dir == "c" and own.data.crop == 64  # your own data, still shrunk


HIDE_SUBMITIT = """
import pkgutil, sys
_walk = pkgutil.walk_packages
pkgutil.walk_packages = lambda *a, **k: (m for m in _walk(*a, **k) if "submitit" not in m.name)
sys.modules["hydra_plugins.hydra_submitit_launcher"] = None
"""


def test_the_slurm_launcher_without_its_plugin_names_the_package(tmp_path):
    """Without hydra-submitit-launcher Hydra said only "Could not load 'hydra/launcher/submitit_slurm'"."""
    import os

    (tmp_path / "sitecustomize.py").write_text(HIDE_SUBMITIT)  # as if the plugin were not installed
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, str(CONF.parent / "train.py"), "-m", "experiment=demo", "hydra/launcher=slurm"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "hydra/launcher=slurm needs Hydra's submitit launcher" in proc.stderr
    assert "pip install hydra-submitit-launcher" in proc.stderr
    assert not (tmp_path / "multirun").exists()
