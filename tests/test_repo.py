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


# Placeholders a reader fills in (ckpt_path=…, partition=<gpu>); hydra/ options need their plugins
_PLACEHOLDER = re.compile(r"…|<|\.\.\.")
# Config files the docs' recipes ask the reader to write first
_RECIPE_ONLY = {"scan=diagonal"}


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    """(doc, script, arguments) of every `python train.py|eval.py|stylize.py …` in README.md and
    experiments/*.md, fenced or inline."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "experiments").glob("*.md"))]:
        text = doc.read_text()
        fenced = re.findall(r"```bash\n(.*?)```", text, re.S)
        lines = [ln.split(" #")[0] for b in fenced for ln in b.replace("\\\n", " ").splitlines()]
        lines += re.findall(
            r"`([^`\n]*?python (?:train|eval|stylize)\.py[^`\n]*)`",
            re.sub(r"```.*?```", "", text, flags=re.S),
        )
        for line in lines:
            m = re.search(r"python (train|eval|stylize)\.py((?: \S+)*)", line)
            if m:
                found.append((doc.relative_to(ROOT).as_posix(), m[1], m[2].split()))
    return found


def test_documented_commands_compose():
    """Each command the docs give composes with the configs as they are (a renamed key, group or
    option fails here, not on the reader's cluster); a sweep's values are composed one by one."""
    import itertools

    from hydra import compose, initialize_config_dir

    commands = _documented_commands()
    assert len(commands) > 20  # the parser still finds them
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for doc, script, args in commands:
            sweep = "-m" in args
            kept = [a for a in args if a != "-m" and not _PLACEHOLDER.search(a) and not a.startswith("hydra")]
            kept = [a for a in kept if a not in _RECIPE_ONLY]
            if sweep:  # key=a,b: one composition per value
                choices = [
                    [a.split("=", 1)[0] + "=" + v for v in a.split("=", 1)[1].split(",")] for a in kept
                ]
            else:
                choices = [[a] for a in kept]
            for overrides in itertools.product(*choices):
                try:
                    compose(script, overrides=list(overrides))
                except Exception as err:
                    raise AssertionError(f"{doc}: python {script}.py {' '.join(args)}: {err}") from err


def test_repository_map_paths_exist():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Repository map\s+```\n(.*?)```", readme, re.S)[1]
    for line in block.splitlines():
        first = line.split("  ")[0].strip()
        if not first:
            continue
        for part in first.split(", "):
            m = re.fullmatch(r"(.*)\{(.*)\}(.*)", part)
            names = [m[1] + n + m[3] for n in m[2].split(",")] if m else [part]
            for name in names:
                assert (ROOT / name).exists(), f"README's repository map names {name}, which does not exist"
