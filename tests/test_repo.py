"""The repository's own promises: README commands exist, CI runs the README's test command,
environment.yml is a usable conda file (conda itself is not available here)."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_readme_commands_are_makefile_targets_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Two commands\s+```bash\n(.*?)```", readme, re.S)[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for cmd in commands:
        assert re.search(rf"^{cmd.split()[1]}:", makefile, re.M)
    ci = [
        ln.strip()
        for ln in (ROOT / ".ci/run").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert "make test" in ci


def test_environment_yml_is_a_gpu_conda_env():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    names = {re.split(r"[=<>]", d)[0] for d in deps if isinstance(d, str)}
    assert {"python", "cuda-nvcc", "cuda-toolkit", "setuptools", "wheel", "pip"} <= names
    assert "pytorch" not in env["channels"]  # stopped at torch 2.5; its MKL clashes with conda-forge's
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    pip_names = {re.split(r"[=<>\[ ]", p)[0] for p in pip}
    needed = {"lightning", "hydra-core", "omegaconf", "wandb", "torchmetrics", "torch-fidelity", "lpips"}
    assert needed <= pip_names
    # the GPU env runs the torch the tests run: the same pins as the CPU machines
    cpu_pins = {ln.strip() for ln in (ROOT / "requirements-cpu.txt").read_text().splitlines() if "==" in ln}
    assert cpu_pins == {p for p in pip if p.startswith(("torch==", "torchvision=="))}
    assert not any(p.startswith("triton") for p in pip)  # torch pins its own triton
    text = (ROOT / "environment.yml").read_text()
    assert "MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation" in text


def test_cpu_pins_match_env_md():
    req = (ROOT / "requirements-cpu.txt").read_text()
    assert "torch==2.14.1" in req and "torchvision==0.29.1" in req
