"""The entry points refuse a run folder that cannot be made or written before Hydra makes it."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ["ckpt_path=never-read.ckpt", "content_dir=c", "style_dir=s"]


@pytest.mark.parametrize(
    ("script", "args", "key"),
    [("eval.py", INPUTS, "output_dir"), ("stylize.py", ["ckpt_path=x.ckpt", "content=c", "style=s"], "output_dir"),
     ("train.py", [], "hydra.run.dir"), ("train.py", ["-m", "seed=0,1"], "hydra.sweep.dir")],
)  # fmt: skip
def test_a_run_folder_below_a_file_is_refused_with_a_message(script, args, key, tmp_path):
    """Hydra made the folder (and .hydra/ in it) before any check of ours: a bare NotADirectoryError
    traceback from pathlib (FileNotFoundError for /proc/x, PermissionError on a read-only mount)."""
    (tmp_path / "notes.txt").write_text("")
    folder = tmp_path / "notes.txt" / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args, f"{key}={folder}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"{key} '{folder}' lies below the file '{tmp_path / 'notes.txt'}'; give a folder (it is created if missing)"
    )


@pytest.mark.parametrize("config", ["train", "eval", "stylize"])
def test_a_run_folder_on_a_read_only_mount_is_refused(config, tmp_path, refuse_files_in):
    """(Simulated: root writes anywhere.)"""
    from hydra.utils import instantiate

    import samam.resolvers  # noqa: F401 (the entry points import it: registers ${samam.expanduser:...})

    locked = tmp_path / "locked"
    locked.mkdir()
    refuse_files_in(locked, errno.EROFS)
    key = "hydra.run.dir" if config == "train" else "output_dir"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config, overrides=[f"{key}={locked / 'run'}"], return_hydra_config=True)
    (callback,) = (instantiate(c) for c in cfg.hydra.callbacks.values())
    with pytest.raises(
        SystemExit, match=f"^{key} '.*run': {locked} is on a read-only file system; give a folder"
    ):
        callback.on_run_start(cfg)


@pytest.mark.parametrize(
    ("script", "args"), [("eval.py", INPUTS), ("stylize.py", ["ckpt_path=x.ckpt", "content=c", "style=s"])]
)
def test_a_quoted_tilde_output_dir_is_one_folder_in_home(script, args, tmp_path):
    """Hydra made ./~/out (with .hydra/ in it) while evaluation expanded ~ for the images."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    subprocess.run(
        [sys.executable, str(ROOT / script), *args, "output_dir='~/out'"],
        capture_output=True, text=True, cwd=cwd, timeout=120, env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    assert (home / "out" / ".hydra" / "config.yaml").is_file()
    assert not (cwd / "~").exists()


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_quoted_tilde_run_folder_is_refused(key, tmp_path):
    """train.py's folder is Hydra's own setting, given as is: it was made as ./~/run."""
    args = ["-m", "seed=0,1"] if key == "hydra.sweep.dir" else []
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, f"{key}='~/run'"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"{key} '~/run': Hydra does not expand ~; give $HOME/... (unquoted) or an absolute path"
    )
    assert not (tmp_path / "~").exists()
