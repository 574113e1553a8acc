"""Loading networks from checkpoints: the authors' released Lightning ``.ckpt`` files and ours.

Both are read with ``torch.load(weights_only=True)``; a file that needs arbitrary
unpickling is refused unless the caller passes ``trust_pickle=True``. Files are read on the
CPU, wherever they were saved; ``map_location`` is the device the network is then moved to.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import os
import pickle
import re
import subprocess
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from samam.nn.samam import ATTENTION_UNUSED, SaMam

# Release sub-module names (SPEC §7) → ours. Applied to the part after the block prefix.
_BLOCK_SUBKEYS = [
    ("SAIN1.compress_gamma.1.", "in_norm.gamma.proj."),
    ("SAIN1.compress_beta.1.", "in_norm.beta.proj."),
    ("SSM.SAIN.compress_gamma.1.", "out_norm.gamma.proj."),
    ("SSM.SAIN.compress_beta.1.", "out_norm.beta.proj."),
    ("SSM.out_norm.", "out_norm.norm."),
    ("SSM.in_proj.", "in_proj."),
    ("SSM.out_proj.", "out_proj."),
    ("SSM.conv2d.", "conv.conv."),
    ("SSM.SConv.compress_key.0.", "conv.kernel_gen."),
    ("SSM.x_proj_weight", "ssm.x_proj_weight"),
    ("SSM.dt_projs_weight", "ssm.dt_proj_weight"),
    ("SSM.dt_projs_bias", "ssm.dt_proj_bias"),
    ("SSM.A_logs_generate.1.", "style_params.A_gen."),
    ("SSM.Ds_generate.1.", "style_params.D_gen."),
    ("SSM.A_logs", "ssm.A_log"),
    ("SSM.Ds", "ssm.D"),
    ("ca.conv_du.0.", "scm.down."),
    ("ca.conv_du.1.", "scm.act."),
    ("ca.conv_du.2.", "scm.up."),
]
_LOE_SUBKEYS = [
    ("cab.0.", "conv1."),
    ("cab.2.", "conv2."),
    ("cab.3.attention.1.", "ca_down."),
    ("cab.3.attention.3.", "ca_up."),
]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the network it claims to hold."""


GIT_TIMEOUT_S = 10.0


def code_version(package_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The code this process runs, for a run's records (checkpoint ``samam.code``, logged
    hyperparameters, results.json): samam's and torch's versions, the git commit of the checkout samam is
    imported from (``package_dir``, default samam's own folder), whether that checkout has
    changes or untracked files (``git_dirty``) and a digest of its changes to tracked files
    (``git_diff``: the first 12 hex digits of the SHA-256 of ``git diff-index -p --full-index HEAD``,
    None without any), so that runs of two different uncommitted states are told apart, and one state
    is one digest on every machine. Outside a checkout (an installed
    copy, even one in a repository's .venv), without git, or if git fails: all three None and
    ``git_error`` says why (only the ones not yet read None where a later call timed out). Up to
    four git calls: once per run, not per step."""
    import samam

    here = Path(package_dir if package_dir is not None else samam.__file__).resolve()
    here = here if here.is_dir() else here.parent
    # torch's version too: the random loss VGG's init and the kernels' numerics follow it
    out: dict[str, Any] = {
        "samam_version": samam.__version__,
        "torch_version": str(torch.__version__),  # a plain str: TorchVersion is no weights_only global
        "git_commit": None,
        "git_dirty": None,
        "git_diff": None,
    }

    # GIT_DIR / GIT_WORK_TREE in the caller's environment would point git -C at another repository;
    # GIT_DIFF_OPTS (--unified=N) would change the patch, so the digest, of the same state
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_DIFF_OPTS")}
    # core.quotePath as git ships it, after the user's settings: false writes a changed non-ASCII
    # path unquoted in the diff, another digest for the same state (plumbing reads core.* too)
    n = int(env["GIT_CONFIG_COUNT"]) if env.get("GIT_CONFIG_COUNT", "").isdigit() else 0
    env.update({"GIT_CONFIG_COUNT": str(n + 1), f"GIT_CONFIG_KEY_{n}": "core.quotePath"})
    env[f"GIT_CONFIG_VALUE_{n}"] = "true"

    def git(*args: str) -> bytes:  # bytes: a diff holds whatever encoding the files have
        return subprocess.run(
            ["git", "-C", str(here), *args],
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
            env=env,
        ).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "--", "__init__.py")  # tracked: a checkout, not an installed copy
        out["git_commit"] = git("rev-parse", "HEAD").decode()  # kept if a call below times out (a huge tree)
        # untracked files count whatever the user's status.showUntrackedFiles
        out["git_dirty"] = git("status", "--porcelain", "--untracked-files=normal") != b""
        # plumbing, full blob ids: one state gives one patch whatever the user's diff config (prefixes,
        # algorithm, external diff, textconv) and however many objects the clone holds (abbreviation)
        diff = git("diff-index", "-p", "--full-index", "HEAD") if out["git_dirty"] else b""
        out["git_diff"] = hashlib.sha256(diff).hexdigest()[:12] if diff else None
    except FileNotFoundError:
        return {**out, "git_error": "no git executable on PATH"}
    except subprocess.TimeoutExpired:
        return {**out, "git_error": f"git did not answer within {GIT_TIMEOUT_S:.0f} s in {here}"}
    except subprocess.CalledProcessError as err:
        stderr = (err.stderr or b"").decode(errors="replace")
        why = stderr.strip().splitlines() or [f"git exit status {err.returncode}"]
        if "safe.directory" in stderr:  # a checkout owned by another user (a container's root)
            return {
                **out,
                "git_error": f"git refuses the checkout samam at {here} is in, owned by another user ({why[0]}); "
                "git config --global --add safe.directory <that checkout> lets it read it",
            }
        return {**out, "git_error": f"samam at {here} is not part of a git checkout ({why[0]})"}
    return {**out, "git_error": None}


def _sub(rest: str, table: list[tuple[str, str]]) -> str | None:
    for old, new in table:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return None


def _map_release_key(key: str) -> str | None:
    """One release parameter name → ours, or None if it has no counterpart."""
    if m := re.fullmatch(r"(content|style)_encoder\.0\.proj\.(weight|bias)", key):
        return f"{m[1]}_encoder.patch_embed.{m[2]}"
    if m := re.fullmatch(r"(content|style)_encoder\.(\d+)\.(.+)", key):
        enc, idx, rest = m[1], int(m[2]), m[3]
        if rest.startswith("cab."):
            sub = _sub(rest, _LOE_SUBKEYS)
            return f"{enc}_encoder.loe.{sub}" if sub else None
        sub = _sub(rest, _BLOCK_SUBKEYS)
        return f"{enc}_encoder.blocks.{idx - 1}.{sub}" if sub else None
    if m := re.fullmatch(r"SAVSSGs\.(\d+)\.SAVSSMs\.(\d+)\.(.+)", key):
        sub = _sub(m[3], _BLOCK_SUBKEYS)
        return f"decoder.{m[1]}.blocks.{m[2]}.{sub}" if sub else None
    if m := re.fullmatch(r"SAVSSGs\.(\d+)\.LoE\.(.+)", key):
        sub = _sub(m[2], _LOE_SUBKEYS)
        return f"decoder.{m[1]}.loe.{sub}" if sub else None
    if m := re.fullmatch(r"global_embedder\.downscale\.(\d+)\.(weight|bias)", key):
        return f"style_embedder.stages.{int(m[1]) // 3}.{m[2]}"
    if m := re.fullmatch(r"global_embedder\.downscale2\.0\.(weight|bias)", key):
        return f"style_embedder.stages.3.{m[1]}"
    if m := re.fullmatch(r"global_embedder\.fc\.(weight|bias)", key):
        return f"style_embedder.fc.{m[1]}"
    if m := re.fullmatch(r"decoder\.decoder\.(\d+)\.(weight|bias)", key):
        return f"image_decoder.layers.{m[1]}.{m[2]}"
    return None


def _count(keys: list[str], pattern: str) -> int:
    return len({m[1] for k in keys if (m := re.match(pattern, k))})


_SAIN_KEYS = {f"out_norm.{a}.proj.{t}" for a in ("gamma", "beta") for t in ("weight", "bias")}


def infer_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """Every size of the network, from the shapes of a state dict in *our* key layout."""
    keys = list(sd)
    try:
        c, _, p, _ = sd["content_encoder.patch_embed.weight"].shape
        d_inner = sd["content_encoder.blocks.0.in_proj.weight"].shape[0]
        k, rn, _ = sd["content_encoder.blocks.0.ssm.x_proj_weight"].shape
        dt_rank = sd["content_encoder.blocks.0.ssm.dt_proj_weight"].shape[2]
        style_dim = sd["style_embedder.fc.weight"].shape[0] // 9
    except KeyError as e:
        raise CheckpointError(f"not a SaMam state dict: missing {e.args[0]!r}") from None
    if k != 4:
        raise CheckpointError(f"checkpoint has {k} scan directions; SaMam uses 4")
    # SaMam builds int(expand · C) inner channels; d_inner / C can round below the true ratio
    # (61 / 56 · 56 = 60.99…), so step it up until it gives d_inner back
    expand = d_inner / c
    while int(expand * c) < d_inner:
        expand = math.nextafter(expand, math.inf)
    blk = "decoder.0.blocks.0."
    cfg = dict(
        embed_dim=c,
        patch_size=p,
        encoder_depth=_count(keys, r"content_encoder\.blocks\.(\d+)\."),
        decoder_groups=_count(keys, r"decoder\.(\d+)\."),
        decoder_depth=_count(keys, r"decoder\.0\.blocks\.(\d+)\."),
        d_state=(rn - dt_rank) // 2,
        expand=expand,
        dt_rank=dt_rank,
        style_dim=style_dim,
        style_ssm=blk + "style_params.A_gen.weight" in sd,
        sconv=blk + "conv.kernel_gen.weight" in sd,
        scm=blk + "scm.down.weight" in sd,
        loe="content_encoder.loe.conv1.weight" in sd,
    )
    # out-norm tensors other than SAIN's (layernorm's, a norm of one's own), or none (a norm of
    # one's own without parameters), belong to a network that shapes cannot name
    norm_keys = {k.removeprefix(blk) for k in keys if k.startswith(blk + "out_norm.")}
    if norm_keys != _SAIN_KEYS:
        raise CheckpointError(
            "this checkpoint's decoder out-norm is not SAIN; load it with its config (load_checkpoint)"
        )
    if cfg["loe"]:
        cfg["loe_compress"] = c // sd["content_encoder.loe.conv1.weight"].shape[0]
        cfg["loe_squeeze"] = c // sd["content_encoder.loe.ca_down.weight"].shape[0]
    if cfg["scm"]:
        cfg["scm_reduction"] = style_dim // sd[blk + "scm.down.weight"].shape[0]
    if cfg["decoder_groups"] == 0 or cfg["decoder_depth"] == 0:
        raise CheckpointError("not a SaMam state dict: no style-aware decoder blocks found")
    return cfg


def _fit(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor | None:
    """``src`` shaped like ``dst``; Linear ↔ 1×1 conv weights differ only by trailing ones."""
    if src.shape == dst.shape:
        return src
    if src.numel() == dst.numel() and [s for s in src.shape if s != 1] == [s for s in dst.shape if s != 1]:
        return src.reshape(dst.shape)
    return None


def load_state_dict_strict(
    net: torch.nn.Module, sd: Mapping[str, torch.Tensor], origin: Mapping[str, str]
) -> None:
    """Fill every model tensor from ``sd`` and consume every ``sd`` tensor, else raise one
    error listing all mismatches (names as they appear in the checkpoint)."""
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(origin.get(k, k) for k in set(sd) - set(own))
    wrong, fitted = [], {}
    for k in set(own) & set(sd):
        t = _fit(sd[k], own[k])
        if t is None:
            wrong.append(
                f"{origin.get(k, k)}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
            )
        else:
            fitted[k] = t
    if missing or unexpected or wrong:
        lines = [f"checkpoint does not match the network ({len(own)} model tensors, {len(sd)} in the file):"]
        lines += [f"  missing in checkpoint: {k}" for k in missing]
        lines += [f"  not used by the model: {k}" for k in unexpected]
        lines += [f"  shape mismatch: {w}" for w in sorted(wrong)]
        raise CheckpointError("\n".join(lines))
    net.load_state_dict(fitted, strict=True)


# What torch.save wrote before the zip format (PyTorch < 1.6, or _use_new_zipfile_serialization=False):
# a pickle of the magic number 0x1950a86a20f9469cfc6c: the PROTO opcode, for protocol ≥ 4 a FRAME
# (9 bytes), then the number as LONG1. Protocol 2 is the default; pickle_protocol= picks another.
_LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


def _is_legacy(head: bytes) -> bool:
    """``head``: a file's first 11 + len(_LEGACY_MAGIC) bytes."""
    body = head[11:] if head[2:3] == b"\x95" else head[2:]  # after PROTO n, and FRAME if any
    return head[:1] == b"\x80" and body.startswith(_LEGACY_MAGIC)


def _torch_load(path: str | os.PathLike, trust_pickle: bool) -> dict:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(folder_given(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(11 + len(_LEGACY_MAGIC))
    legacy = _is_legacy(head)
    if not (legacy or zipfile.is_zipfile(path)):
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (torch.save writes a zip archive, or "
            "before PyTorch 1.6 a pickle stream)"
        )
    try:
        # Read on the CPU, whatever device the network goes to: the weights are copied into a
        # network built there anyway, and a device that cannot be had (map_location="cuda" without
        # CUDA) then fails as itself when the network moves, not as an unreadable file.
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        why = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), str(e).splitlines()[0])
        raise CheckpointError(
            f"{path} holds objects that torch.load(weights_only=True) refuses to unpickle ({why}).\n"
            "Unpickling can run arbitrary code. Only if you trust where the file came from, pass "
            "trust_pickle=True (CLI: trust_pickle=true)."
        ) from None
    # A damaged file fails in many ways (RuntimeError, EOFError, UnicodeDecodeError, ...).
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def load_mapped(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` to the CPU with the tensors memory-mapped, for reading what
    a checkpoint says of itself without reading its weights; read whole where the file system cannot
    map files (some FUSE and object-store mounts), which otherwise looked like a damaged checkpoint."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # also the pre-zip format, which cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def _wrapper_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"module."`` where every key has it (saved through nn.DataParallel or DistributedDataParallel,
    which hold the network as ``module``), else ``""``: a prefix on some keys only is no wrapper's."""
    return "module." if state_dict and all(k.startswith("module.") for k in state_dict) else ""


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """Release Lightning ``state_dict`` → (config kwargs, our state dict, our key → release key).

    Drops the frozen loss network (``loss_func.*``); keeps every other tensor."""
    sd, origin, unmapped = {}, {}, []
    wrapper = _wrapper_prefix(state_dict)
    for key, value in state_dict.items():
        bare = key.removeprefix(wrapper)
        if bare.startswith("loss_func."):
            continue
        bare = bare.removeprefix("model.")
        new = _map_release_key(bare)
        if new is None:
            unmapped.append(key)
            new = key
        sd[new], origin[new] = value, key
    if "content_encoder.patch_embed.weight" not in sd:
        example = ", ".join(map(str, list(state_dict)[:3])) or "no tensors at all"
        raise CheckpointError(
            "this is not a SaMam release checkpoint: expected keys such as "
            f"'model.content_encoder.0.proj.weight', found e.g. {example}"
        )
    if origin["content_encoder.patch_embed.weight"].endswith("content_encoder.patch_embed.weight"):
        # Our own key names: switches such as the scan order or the norms are not in the tensors,
        # so rebuilding from shapes would silently give the default network.
        raise CheckpointError(
            "this is a bare state dict in this repository's layout: it has no network config (scan "
            "order, norms, ...). Load a checkpoint written by train.py (it holds samam.model), or "
            "build SaMam(...) with the right settings and call load_state_dict yourself."
        )
    return infer_config(sd), sd, origin


@contextlib.contextmanager
def _naming(path: str | os.PathLike) -> Iterator[None]:
    """A CheckpointError raised while building the network from ``path`` names the file (a script
    loading several, or eval.py's log, said only "not a SaMam release checkpoint")."""
    try:
        yield
    except CheckpointError as err:
        raise CheckpointError(str(err) if str(path) in str(err) else f"{path}: {err}") from None


def _tensors(ckpt: Mapping, key: str) -> Mapping:
    """``ckpt[key]`` (or ``ckpt`` itself without it: a bare state dict), refused unless a mapping."""
    sd = ckpt.get(key, ckpt)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"its {key!r} entry is a {type(sd).__name__}, not tensors by name")
    return sd


def _official_net(ckpt: Mapping, backend: str) -> SaMam:
    cfg, sd, origin = convert_official_state_dict(_tensors(ckpt, "state_dict"))
    net = SaMam(**cfg, backend=backend)
    load_state_dict_strict(net, sd, origin)
    return net


def network_class(name: str | None, path) -> type[SaMam]:
    """The network class a checkpoint of ours names (``samam.net_class``, an import path such as
    ``my_study.nets.MySaMam`` for a subclass given as ``model._target_``); SaMam for none (checkpoints
    from before it was recorded). Imports its module, as ``model._target_`` did in training; refuses
    a class that cannot be imported here or is not a SaMam."""
    if name is None or name == f"{SaMam.__module__}.{SaMam.__qualname__}":
        return SaMam
    module, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise CheckpointError(
            f"{path} holds a {name} network, which cannot be imported here ({type(err).__name__}: {err}); "
            "put the package that defines it on the Python path (PYTHONPATH) and load again"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, SaMam)):
        raise CheckpointError(f"{path} names {name} as its network, which is not a SaMam class")
    return cls


def _our_net(ckpt: Mapping, backend: str, path) -> SaMam:
    meta = ckpt.get("samam")
    if not isinstance(meta, Mapping) or "model" not in meta:
        raise CheckpointError(
            f"{path} has no 'samam' entry with the network config; for the authors' released checkpoints "
            "use samam.load_official_checkpoint (or samam.load_model, which detects the kind)"
        )
    sd, state_dict = {}, _tensors(ckpt, "state_dict") if "state_dict" in ckpt else {}
    wrapper = _wrapper_prefix(state_dict)
    for k, v in state_dict.items():
        k = k.removeprefix(wrapper)
        k = k.replace("._orig_mod.", ".").removeprefix("_orig_mod.")  # torch.compile's wrapper
        if k.startswith("net."):
            sd[k[4:]] = v
    model = dict(meta["model"])
    if model.get("mixer") == "attention":
        # Written before SaMamConfig refused them: the attention arm's weights are the same whatever
        # scan order or S7/S6 setting it recorded, so it loads with the defaults.
        for name in ATTENTION_UNUSED:
            model.pop(name, None)
    net = network_class(meta.get("net_class"), path)(**{**model, "backend": backend})
    load_state_dict_strict(net, sd, {})
    return net


def load_official_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    backend: str = "auto",
    trust_pickle: bool = False,
) -> SaMam:
    """The authors' released Lightning ``.ckpt`` (SPEC §7) → :class:`SaMam` in eval mode.

    Every size is inferred from tensor shapes, so any checkpoint of the family loads; a state dict
    saved through nn.DataParallel or DDP (``module.`` on every key) loads too."""
    ckpt = _torch_load(path, trust_pickle)
    with _naming(path):
        net = _official_net(ckpt, backend)
    return net.to(map_location).eval()


def folder_given(named: str) -> str:
    """What is wrong with a folder given as the checkpoint (``named``: how the caller names it),
    in train's and eval's checks of ``ckpt_path`` alike."""
    return f"{named} is a folder; give a checkpoint file in it (a training run's checkpoints/last.ckpt, say)"


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    backend: str = "auto",
    trust_pickle: bool = False,
) -> SaMam:
    """One of our training checkpoints (``ckpt["samam"]["model"]`` + ``net.*`` weights) → SaMam, or the
    subclass of it the run trained (``ckpt["samam"]["net_class"]``). Keys saved through nn.DataParallel
    or DDP (``module.`` on every key) or torch.compile (``_orig_mod.``) load too."""
    ckpt = _torch_load(path, trust_pickle)
    with _naming(path):
        net = _our_net(ckpt, backend, path)
    return net.to(map_location).eval()


def load_model(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    backend: str = "auto",
    trust_pickle: bool = False,
) -> SaMam:
    """Ours or the authors': dispatches on the checkpoint's content (read once)."""
    ckpt = _torch_load(path, trust_pickle)
    with _naming(path):
        net = (
            _our_net(ckpt, backend, path)
            if isinstance(ckpt.get("samam"), Mapping)
            else _official_net(ckpt, backend)
        )
    return net.to(map_location).eval()
