"""The loader against release-layout state dicts built from SPEC §7 (names and shapes)."""

import collections
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from tiny import TINY as TINY_PRESET

from samam import SaMam, load_checkpoint, load_model, load_official_checkpoint
from samam.checkpoint import CheckpointError, code_version

TINY = {**TINY_PRESET, "decoder_depth": 2}  # two blocks per group, as released


def release_state_dict(C=256, p=8, enc=2, groups=2, depth=2, N=16, expand=2.0, S=64, lc=8, ls=8, red=4):
    """Random tensors under the release's names and shapes (SPEC §7), prefix ``model.``."""
    D, R = int(expand * C), -(-C // 16)
    shapes: dict[str, tuple] = {}

    def loe(prefix):
        shapes.update({
            f"{prefix}.cab.0.weight": (C // lc, C, 3, 3), f"{prefix}.cab.0.bias": (C // lc,),
            f"{prefix}.cab.2.weight": (C, C // lc, 3, 3), f"{prefix}.cab.2.bias": (C,),
            f"{prefix}.cab.3.attention.1.weight": (C // ls, C, 1, 1), f"{prefix}.cab.3.attention.1.bias": (C // ls,),
            f"{prefix}.cab.3.attention.3.weight": (C, C // ls, 1, 1), f"{prefix}.cab.3.attention.3.bias": (C,),
        })  # fmt: skip

    def scan(prefix):
        shapes.update({
            f"{prefix}.x_proj_weight": (4, R + 2 * N, D), f"{prefix}.dt_projs_weight": (4, D, R),
            f"{prefix}.dt_projs_bias": (4, D), f"{prefix}.in_proj.weight": (D, C), f"{prefix}.out_proj.weight": (C, D),
        })  # fmt: skip

    for e in ("content_encoder", "style_encoder"):
        shapes[f"{e}.0.proj.weight"], shapes[f"{e}.0.proj.bias"] = (C, 3, p, p), (C,)
        for i in range(1, enc + 1):
            scan(f"{e}.{i}.SSM")
            shapes.update({f"{e}.{i}.SSM.conv2d.weight": (D, 1, 3, 3), f"{e}.{i}.SSM.conv2d.bias": (D,),
                           f"{e}.{i}.SSM.A_logs": (4 * D, N), f"{e}.{i}.SSM.Ds": (4 * D,)})  # fmt: skip
        loe(f"{e}.{enc + 1}")
    for i in (0, 3, 6):
        shapes[f"global_embedder.downscale.{i}.weight"], shapes[f"global_embedder.downscale.{i}.bias"] = (
            (C, C, 3, 3),
            (C,),
        )
    if p == 4:
        shapes["global_embedder.downscale2.0.weight"], shapes["global_embedder.downscale2.0.bias"] = (
            (C, C, 3, 3),
            (C,),
        )
    shapes["global_embedder.fc.weight"], shapes["global_embedder.fc.bias"] = (9 * S, 16 * C), (9 * S,)
    for g in range(groups):
        for b in range(depth):
            m = f"SAVSSGs.{g}.SAVSSMs.{b}"
            scan(f"{m}.SSM")
            for norm, ch in ((f"{m}.SAIN1", C), (f"{m}.SSM.SAIN", D)):
                for gb in ("gamma", "beta"):
                    shapes[f"{norm}.compress_{gb}.1.weight"], shapes[f"{norm}.compress_{gb}.1.bias"] = (
                        (ch, S, 1, 1),
                        (ch,),
                    )
            shapes.update({
                f"{m}.SSM.SConv.compress_key.0.weight": (D, S, 3, 3), f"{m}.SSM.SConv.compress_key.0.bias": (D,),
                f"{m}.SSM.A_logs_generate.1.weight": (4 * D * N, S, 1, 1), f"{m}.SSM.A_logs_generate.1.bias": (4 * D * N,),
                f"{m}.SSM.Ds_generate.1.weight": (4 * D, S, 1, 1), f"{m}.SSM.Ds_generate.1.bias": (4 * D,),
                f"{m}.ca.conv_du.0.weight": (S // red, S, 3, 3), f"{m}.ca.conv_du.1.weight": (1,),
                f"{m}.ca.conv_du.2.weight": (C, S // red, 1, 1),
            })  # fmt: skip
        loe(f"SAVSSGs.{g}.LoE")
    convs = {8: [(1, C, C // 2), (5, C // 2, C // 2), (8, C // 2, C // 2), (11, C // 2, C // 2), (14, C // 2, C // 4),
                 (18, C // 4, C // 4), (21, C // 4, C // 8), (25, C // 8, C // 8), (28, C // 8, 3)],
             4: [(1, C, C // 2), (5, C // 2, C // 2), (8, C // 2, C // 2), (11, C // 2, C // 4), (15, C // 4, C // 4),
                 (18, C // 4, C // 8), (21, C // 8, C // 8), (24, C // 8, 3)]}[p]  # fmt: skip
    for i, cin, cout in convs:
        shapes[f"decoder.decoder.{i}.weight"], shapes[f"decoder.decoder.{i}.bias"] = (
            (cout, cin, 3, 3),
            (cout,),
        )
    g = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict(
        ("model." + k, 0.05 * torch.randn(s, generator=g)) for k, s in shapes.items()
    )
    sd["loss_func.enc_1.0.weight"] = torch.randn(3, 3, 1, 1)  # frozen VGG, dropped by the loader
    return sd


def save(tmp_path, sd, name="release.ckpt"):
    path = tmp_path / name
    torch.save({"state_dict": sd, "pytorch-lightning_version": "2.3.0", "global_step": 200000}, path)
    return path


@pytest.mark.parametrize("p, params", [(8, 19_772_007), (4, 20_140_775)])
def test_release_layout_has_the_released_parameter_count(p, params):
    sd = release_state_dict(p=p)
    assert sum(v.numel() for k, v in sd.items() if k.startswith("model.")) == params


@pytest.mark.parametrize("p", [8, 4])
def test_loads_the_full_size_release_layout(tmp_path, p):
    sd = release_state_dict(p=p)
    net = load_official_checkpoint(save(tmp_path, sd), backend="torch")
    assert not net.training
    assert net.config["patch_size"] == p and net.config["embed_dim"] == 256
    assert sum(x.numel() for x in net.parameters()) == sum(
        v.numel() for k, v in sd.items() if k.startswith("model.")
    )
    own = net.state_dict()
    assert torch.equal(own["content_encoder.blocks.1.ssm.A_log"], sd["model.content_encoder.2.SSM.A_logs"])
    assert torch.equal(
        own["decoder.1.blocks.0.style_params.A_gen.weight"],
        sd["model.SAVSSGs.1.SAVSSMs.0.SSM.A_logs_generate.1.weight"][:, :, 0, 0],
    )
    assert torch.equal(
        own["decoder.0.blocks.1.in_proj.weight"][:, :, 0, 0],
        sd["model.SAVSSGs.0.SAVSSMs.1.SSM.in_proj.weight"],
    )
    assert torch.equal(own["image_decoder.layers.28.bias" if p == 8 else "image_decoder.layers.24.bias"],
                       sd["model.decoder.decoder.28.bias" if p == 8 else "model.decoder.decoder.24.bias"])  # fmt: skip


def test_infers_every_size_of_a_small_family_member(tmp_path):
    sd = release_state_dict(C=32, p=8, enc=1, groups=3, depth=1, N=4, expand=1.5, S=16, lc=4, ls=2, red=2)
    net = load_official_checkpoint(save(tmp_path, sd), backend="torch")
    cfg = net.config
    assert (cfg["embed_dim"], cfg["encoder_depth"], cfg["decoder_groups"], cfg["decoder_depth"]) == (
        32,
        1,
        3,
        1,
    )
    assert (cfg["d_state"], cfg["expand"], cfg["style_dim"]) == (4, 1.5, 16)
    assert (cfg["loe_compress"], cfg["loe_squeeze"], cfg["scm_reduction"]) == (4, 2, 2)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 40, 48), torch.rand(1, 3, 64, 64)).shape == (1, 3, 40, 48)


def test_infers_an_inner_width_whose_ratio_to_the_embed_dim_rounds_down(tmp_path):
    """A family member trained with expand 1.1 at C = 56 has d_inner = int(61.6) = 61; 61 / 56 in
    floating point, times 56, is 60.99…, so the inferred expand must be the next float up."""
    sd = release_state_dict(C=56, p=8, enc=1, groups=1, depth=1, N=4, expand=1.1, S=16, lc=4, ls=4, red=4)
    assert sd["model.content_encoder.1.SSM.in_proj.weight"].shape == (61, 56)
    net = load_official_checkpoint(save(tmp_path, sd), backend="torch")
    assert net.d_inner == 61


def test_damaged_checkpoint_lists_every_mismatch(tmp_path):
    sd = release_state_dict(C=32, enc=1, groups=1, depth=1, N=4, S=16, lc=4, ls=4)
    del sd["model.SAVSSGs.0.SAVSSMs.0.SSM.Ds_generate.1.bias"]
    sd["model.SAVSSGs.0.SAVSSMs.0.SSM.extra_thing"] = torch.zeros(3)
    sd["model.style_encoder.1.SSM.dt_projs_bias"] = torch.zeros(4, 7)
    with pytest.raises(CheckpointError) as err:
        load_official_checkpoint(save(tmp_path, sd), backend="torch")
    msg = str(err.value)
    assert "missing in checkpoint: decoder.0.blocks.0.style_params.D_gen.bias" in msg
    assert "not used by the model: model.SAVSSGs.0.SAVSSMs.0.SSM.extra_thing" in msg
    assert (
        "shape mismatch: model.style_encoder.1.SSM.dt_projs_bias: checkpoint (4, 7) vs model (4, 64)" in msg
    )


def test_checkpoint_of_another_model_is_refused(tmp_path):
    other = {"state_dict": {"model.backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}}
    torch.save(other, tmp_path / "resnet.ckpt")
    with pytest.raises(CheckpointError, match="not a SaMam release checkpoint"):
        load_official_checkpoint(tmp_path / "resnet.ckpt")
    with pytest.raises(CheckpointError, match="no 'samam' entry"):
        load_checkpoint(tmp_path / "resnet.ckpt")


def test_a_checkpoint_that_does_not_fit_is_named_in_the_error(tmp_path):
    """eval.py's log, or a script loading several, said only "not a SaMam release checkpoint" or
    "missing in checkpoint", not which file; a state_dict entry that is no mapping failed with
    "'NoneType' object has no attribute 'items'" or "Boolean value of Tensor ... is ambiguous"."""
    vgg = tmp_path / "vgg_normalised.pth"
    torch.save({"0.weight": torch.zeros(3, 3, 1, 1)}, vgg)
    for load in (load_model, load_official_checkpoint):
        with pytest.raises(
            CheckpointError, match=f"^{re.escape(str(vgg))}: this is not a SaMam release .*e.g. 0.weight"
        ):
            load(vgg, backend="torch")
    path, ckpt = _our_checkpoint(tmp_path, SaMam(**TINY, backend="torch"))
    del ckpt["state_dict"]["net.style_embedder.fc.bias"]
    torch.save(ckpt, path)
    with pytest.raises(
        CheckpointError, match=f"(?s)^{re.escape(str(path))}: checkpoint does not match .*fc.bias"
    ):
        load_checkpoint(path, backend="torch")
    for held, sd in (("NoneType", None), ("Tensor", torch.zeros(3))):
        for saved in ({"state_dict": sd}, {**ckpt, "state_dict": sd}):  # the authors' kind, ours
            torch.save(saved, path)
            with pytest.raises(
                CheckpointError, match=f"^{re.escape(str(path))}: its 'state_dict' entry is a {held}"
            ):
                load_model(path, backend="torch")


def test_a_bare_state_dict_of_ours_is_refused_not_rebuilt_with_defaults(tmp_path):
    """Its switches (here scan=cross) are not in the tensors: rebuilding from shapes would give zigzag."""
    net = SaMam(**TINY, scan="cross", backend="torch")
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    for loader in (load_official_checkpoint, load_model):
        with pytest.raises(CheckpointError, match="bare state dict in this repository's layout"):
            loader(tmp_path / "bare.pt", backend="torch")


class Opaque:  # needs arbitrary unpickling
    def __init__(self):
        self.lr = 1e-4


def test_pickled_objects_are_refused_unless_trusted(tmp_path):
    sd = release_state_dict(C=32, enc=1, groups=1, depth=1, N=4, S=16, lc=4, ls=4)
    torch.save({"state_dict": sd, "hyper_parameters": Opaque()}, tmp_path / "pickled.ckpt")
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        load_official_checkpoint(tmp_path / "pickled.ckpt", backend="torch")
    net = load_official_checkpoint(tmp_path / "pickled.ckpt", backend="torch", trust_pickle=True)
    assert isinstance(net, SaMam)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "nope.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(tmp_path / "junk.ckpt")


def test_a_folder_is_named_as_one_not_as_missing(tmp_path):
    """A run's folder given to the library loaders was "checkpoint not found" though it exists;
    eval.py and stylize.py already said it is a folder."""
    for loader in (load_model, load_checkpoint, load_official_checkpoint):
        with pytest.raises(IsADirectoryError, match="is a folder; give a checkpoint file in it"):
            loader(tmp_path)


def test_pre_zip_format_loads_and_damaged_pickles_give_the_checkpoint_error(tmp_path):
    """torch.save's older pickle-stream format (PyTorch < 1.6) loads; a checkpoint whose pickle
    is damaged raises CheckpointError, whatever the unpickler tripped on."""
    import zipfile

    sd = release_state_dict(**SMALL)
    torch.save({"state_dict": sd}, tmp_path / "old.ckpt", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(tmp_path / "old.ckpt")
    assert load_official_checkpoint(tmp_path / "old.ckpt", backend="torch").config["embed_dim"] == 32
    # torch.save(..., pickle_protocol=3 or 4) in that format: torch.load reads both (4 only unpickling)
    torch.save(
        {"state_dict": sd}, tmp_path / "p3.ckpt", _use_new_zipfile_serialization=False, pickle_protocol=3
    )
    assert load_official_checkpoint(tmp_path / "p3.ckpt", backend="torch").config["embed_dim"] == 32
    torch.save(
        {"state_dict": sd}, tmp_path / "p4.ckpt", _use_new_zipfile_serialization=False, pickle_protocol=4
    )
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        load_official_checkpoint(tmp_path / "p4.ckpt", backend="torch")
    assert (
        load_official_checkpoint(tmp_path / "p4.ckpt", backend="torch", trust_pickle=True).config["embed_dim"]
        == 32
    )

    good = save(tmp_path, sd)
    with zipfile.ZipFile(good) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    raw = bytearray(members[pkl])
    at = raw.find(b"state_dict") + 2  # one byte of a key name: not UTF-8 any more
    raw[at] = 0xAB
    members[pkl] = bytes(raw)
    with zipfile.ZipFile(tmp_path / "damaged.ckpt", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint: UnicodeDecodeError"):
        load_model(tmp_path / "damaged.ckpt")


def test_our_checkpoint_round_trips_and_load_model_dispatches(tmp_path):
    torch.manual_seed(1)
    net = SaMam(**TINY, scan="hilbert", scm=False, backend="torch").eval()
    _our_checkpoint(tmp_path, net)
    c, s = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(c, s)
        for loader in (load_checkpoint, load_model):
            back = loader(tmp_path / "ours.ckpt", backend="torch")
            assert back.config["scan"] == "hilbert" and not back.config["scm"]
            torch.testing.assert_close(back(c, s), ref)
    sd = release_state_dict(C=32, enc=1, groups=1, depth=1, N=4, S=16, lc=4, ls=4)
    assert load_model(save(tmp_path, sd), backend="torch").config["embed_dim"] == 32


SMALL = dict(C=32, enc=1, groups=1, depth=1, N=4, S=16, lc=4, ls=4)


def test_key_map_sends_each_tensor_home(tmp_path):
    """One pair per kind of key: a swap inside the name table (gamma/beta, SAIN1 vs the SSM's
    SAIN, stage order, the LoE's four convs) keeps every shape, so only values reveal it."""
    sd = release_state_dict(p=4, **SMALL)
    own = load_official_checkpoint(save(tmp_path, sd), backend="torch").state_dict()
    blk, rel = "decoder.0.blocks.0", "SAVSSGs.0.SAVSSMs.0"
    pairs = {
        f"{blk}.in_norm.gamma.proj.bias": f"{rel}.SAIN1.compress_gamma.1.bias",
        f"{blk}.in_norm.beta.proj.bias": f"{rel}.SAIN1.compress_beta.1.bias",
        f"{blk}.out_norm.gamma.proj.bias": f"{rel}.SSM.SAIN.compress_gamma.1.bias",
        f"{blk}.out_norm.beta.proj.bias": f"{rel}.SSM.SAIN.compress_beta.1.bias",
        f"{blk}.conv.kernel_gen.weight": f"{rel}.SSM.SConv.compress_key.0.weight",
        **{
            f"style_embedder.stages.{i}.weight": f"global_embedder.downscale.{3 * i}.weight" for i in range(3)
        },
        "style_embedder.stages.3.weight": "global_embedder.downscale2.0.weight",
        **{
            f"{ours}.loe.{conv}.weight": f"{theirs}.{cab}.weight"
            for ours, theirs in (("decoder.0", "SAVSSGs.0.LoE"), ("content_encoder", "content_encoder.2"))
            for conv, cab in (("conv1", "cab.0"), ("conv2", "cab.2"), ("ca_down", "cab.3.attention.1"))
        },
        "decoder.0.loe.ca_up.bias": "SAVSSGs.0.LoE.cab.3.attention.3.bias",
        "style_encoder.loe.conv1.bias": "style_encoder.2.cab.0.bias",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(own[ours].flatten(), sd["model." + theirs].flatten()), (ours, theirs)


def test_an_unused_tensor_alone_is_refused(tmp_path):
    sd = release_state_dict(**SMALL)
    sd["model.SAVSSGs.0.SAVSSMs.0.SSM.extra"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="not used by the model"):
        load_official_checkpoint(save(tmp_path, sd), backend="torch")


def test_a_transposed_weight_of_the_same_size_is_refused(tmp_path):
    sd = release_state_dict(**SMALL)
    key = "model.SAVSSGs.0.SAVSSMs.0.SSM.in_proj.weight"
    sd[key] = sd[key].t().contiguous()
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_official_checkpoint(save(tmp_path, sd), backend="torch")


def _our_checkpoint(tmp_path, net, prefix="net."):
    ckpt = {
        "state_dict": {prefix + k: v for k, v in net.state_dict().items()},
        "samam": {"model": net.config, "config": None, "version": 1},
    }
    torch.save(ckpt, tmp_path / "ours.ckpt")
    return tmp_path / "ours.ckpt", ckpt


def test_an_attention_checkpoint_recording_an_ignored_scan_switch_still_loads(tmp_path):
    """Written before SaMam refused scan / style_ssm with mixer=attention: same weights as the defaults."""
    torch.manual_seed(0)
    net = SaMam(**TINY, mixer="attention", backend="torch").eval()
    path, ckpt = _our_checkpoint(tmp_path, net)
    ckpt["samam"]["model"].update(scan="cross", style_ssm=False)
    torch.save(ckpt, path)
    back = load_checkpoint(path, backend="torch")
    assert [back.config[k] for k in ("mixer", "scan", "style_ssm")] == ["attention", "zigzag", True]
    c, s = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(c, s), net(c, s))


def test_a_compiled_networks_checkpoint_loads(tmp_path):
    net = SaMam(**TINY, backend="torch").eval()
    path, _ = _our_checkpoint(tmp_path, net, "net._orig_mod.")
    back = load_checkpoint(path, backend="torch").state_dict()
    assert back.keys() == net.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())


def test_a_checkpoint_saved_through_data_parallel_loads_as_strictly_as_any(tmp_path):
    """nn.DataParallel and DDP put `module.` before every key of the network they wrap: such files
    were refused as not SaMam. Stripped only where every key has it; every tensor still counts."""
    sd = release_state_dict(**SMALL)
    ref = load_official_checkpoint(save(tmp_path, sd), backend="torch").state_dict()
    wrapped = {"module." + k: v for k, v in sd.items()}
    bare = {"module." + k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")}
    torch.save(bare, tmp_path / "bare.pt")  # torch.save(nn.DataParallel(release_net).state_dict())
    for path in (save(tmp_path, wrapped, "dp.ckpt"), tmp_path / "bare.pt"):
        for loader in (load_official_checkpoint, load_model):
            back = loader(path, backend="torch").state_dict()
            assert back.keys() == ref.keys() and all(torch.equal(back[k], v) for k, v in ref.items())
    wrapped["module.model.SAVSSGs.0.SAVSSMs.0.SSM.extra"] = torch.zeros(3)
    with pytest.raises(
        CheckpointError, match=r"not used by the model: module\.model\.SAVSSGs\.0\.SAVSSMs\.0\.SSM\.extra"
    ):
        load_model(save(tmp_path, wrapped, "dp.ckpt"), backend="torch")

    net = SaMam(**TINY, backend="torch").eval()
    path, ckpt = _our_checkpoint(tmp_path, net, "module.net.")
    for loader in (load_checkpoint, load_model):
        back = loader(path, backend="torch").state_dict()
        assert back.keys() == net.state_dict().keys()
        assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())
    key = "module.net.decoder.0.blocks.0.ssm.x_proj_weight"
    ckpt["state_dict"] = {
        k if k == key else k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()
    }
    torch.save(ckpt, path)  # one key prefixed: no wrapper's doing, and the tensor it names is missing
    with pytest.raises(CheckpointError, match="missing in checkpoint: decoder.0.blocks.0.ssm.x_proj_weight"):
        load_checkpoint(path, backend="torch")


def test_a_network_with_a_scan_order_of_ones_own_is_rebuilt_from_its_checkpoint(tmp_path, scan_module):
    """stylize.py and eval.py rebuild the network from the checkpoint alone: its config holds the
    order's import path, which must import there (else the error names it)."""
    net = SaMam(**TINY, scan=f"{scan_module}:diagonal", backend="torch").eval()
    path, ckpt = _our_checkpoint(tmp_path, net)
    c, s = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        back = load_model(path, backend="torch")
        assert back.config["scan"] == f"{scan_module}:diagonal"
        torch.testing.assert_close(back(c, s), net(c, s), rtol=0, atol=0)
    ckpt["samam"]["model"]["scan"] = "orders_not_on_this_path:diagonal"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="'orders_not_on_this_path:diagonal' does not import"):
        load_model(path, backend="torch")


def test_our_checkpoint_missing_a_tensor_is_refused(tmp_path):
    net = SaMam(**TINY, backend="torch").eval()
    path, ckpt = _our_checkpoint(tmp_path, net)
    del ckpt["state_dict"]["net.decoder.0.blocks.0.ssm.x_proj_weight"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="missing in checkpoint"):
        load_checkpoint(path, backend="torch")


def test_checkpoint_write_that_fails_midway_leaves_the_old_file(tmp_path, monkeypatch):
    """A crash or kill while writing must leave the previous checkpoint whole, and no temp file."""
    from samam import callbacks

    io, path = callbacks.AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.arange(1000.0)}, path)

    def half_then_crash(obj, f, *args, **kwargs):
        f.write(b"\x80\x02half a pickle")
        raise OSError("disk full")

    monkeypatch.setattr(callbacks.torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    kept = torch.load(path, weights_only=True)
    assert kept["step"] == 1 and torch.equal(kept["w"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    # a temp file left by a SIGKILLed write goes with the next save of the same file only
    monkeypatch.undo()
    (tmp_path / ".last.ckpt.k1ll3d.tmp").write_bytes(b"half")
    (tmp_path / ".step0000002.ckpt.x.tmp").write_bytes(b"half")
    io.save_checkpoint({"step": 3}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step0000002.ckpt.x.tmp", "last.ckpt"]


def test_checkpoint_write_reaches_the_disk_before_it_replaces_the_old_file(tmp_path, monkeypatch):
    """The data fsynced before the rename and the folder after it: without them a power loss
    after the rename can leave last.ckpt empty. The crash test above passes without either."""
    from samam import callbacks

    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or replace(a, b))
    callbacks.AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert events == ["fsync", "replace", "fsync"]


def _checkout(tmp_path: Path, files: dict[str, str]) -> Path:
    """A git repository holding src/samam/ with ``files`` (and an empty __init__.py), committed:
    that package folder."""
    repo, pkg = tmp_path / "repo", tmp_path / "repo" / "src" / "samam"
    pkg.mkdir(parents=True)
    for name, text in {"__init__.py": "", **files}.items():
        (pkg / name).write_text(text)
    for args in (
        ["init", "-q"],
        ["add", "."],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a"],
    ):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    return pkg


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_code_version_digests_a_change_to_a_non_ascii_path_alike_under_core_quotepath(
    tmp_path, monkeypatch
):
    """git_diff is one digest per state: core.quotePath=false (a user's setting for non-ASCII
    names) wrote the changed path's header unquoted, and GIT_DIFF_OPTS=--unified=0 dropped the
    context lines: each another digest for the same change."""
    pkg = _checkout(tmp_path, {"données.py": "x = 1\ny = 1\nz = 1\n"})
    (pkg / "données.py").write_text("x = 1\ny = 2\nz = 1\n")  # a change with context lines
    digests = []
    for value in ("true", "false"):
        monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
        monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.quotePath")
        monkeypatch.setenv("GIT_CONFIG_VALUE_0", value)
        digests.append(code_version(pkg)["git_diff"])
    monkeypatch.setenv("GIT_DIFF_OPTS", "--unified=0")  # the patch's context lines, from the environment
    digests.append(code_version(pkg)["git_diff"])
    assert digests[0] is not None and digests[0] == digests[1] == digests[2]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_code_version_names_the_commit_and_changes_of_the_checkout_and_why_there_is_none(
    tmp_path, monkeypatch
):
    """Recorded with every run: a commit for a checkout, null with the reason for an installed copy
    (even one in a repository's .venv: not tracked there), a folder outside git, or no git at all."""
    import samam

    pkg = _checkout(tmp_path, {})
    repo = pkg.parents[1]

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)

    head = git("rev-parse", "HEAD").stdout.strip()
    assert code_version(pkg) == {
        "samam_version": samam.__version__,
        "torch_version": torch.__version__,
        "git_commit": head,
        "git_dirty": False,
        "git_diff": None,
        "git_error": None,
    }
    # GIT_DIR / GIT_WORK_TREE set in the caller's environment (another repository): still this one
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["git", "-C", str(other), "init", "-q"], check=True)
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    assert code_version(pkg)["git_commit"] == head
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    (repo / "notes.txt").write_text("an untracked file")
    got = code_version(pkg)
    assert got["git_dirty"] is True and got["git_diff"] is None  # no change to a tracked file
    with monkeypatch.context() as m:  # a user's status.showUntrackedFiles=no hid it: not dirty
        m.setenv("GIT_CONFIG_COUNT", "1")
        m.setenv("GIT_CONFIG_KEY_0", "status.showUntrackedFiles")
        m.setenv("GIT_CONFIG_VALUE_0", "no")
        assert code_version(pkg)["git_dirty"] is True
    # Two uncommitted states of one commit looked the same (git_dirty only): the diff's digest differs
    digests = []
    for text in ("x = 1\n", "x = 2\n", "x = 1\n"):
        (pkg / "__init__.py").write_text(text)
        digests.append(code_version(pkg)["git_diff"])
    assert re.fullmatch("[0-9a-f]{12}", digests[0]) and digests[0] != digests[1] and digests[0] == digests[2]
    # one state, one digest: not the user's diff config nor the clone's abbreviation of blob ids
    for key, value in (("core.abbrev", "12"), ("diff.noprefix", "true"), ("diff.mnemonicPrefix", "true")):
        with monkeypatch.context() as m:
            m.setenv("GIT_CONFIG_COUNT", "1")
            m.setenv("GIT_CONFIG_KEY_0", key)
            m.setenv("GIT_CONFIG_VALUE_0", value)
            assert code_version(pkg)["git_diff"] == digests[0], key
    (pkg / "__init__.py").write_bytes(b"name = '\xe9t\xe9'\n")  # Latin-1: a diff is bytes, not UTF-8
    assert code_version(pkg)["git_diff"] not in (None, *digests)
    # git status past the time limit (a huge tree): the commit already read is kept
    slow = tmp_path / "slow" / "git"
    slow.parent.mkdir()
    slow.write_text(f'#!/bin/sh\n[ "$3" = status ] && sleep 3\nexec {shutil.which("git")} "$@"\n')
    slow.chmod(0o755)
    with monkeypatch.context() as m:
        m.setenv("PATH", f"{slow.parent}{os.pathsep}{os.environ['PATH']}")
        m.setattr("samam.checkpoint.GIT_TIMEOUT_S", 1.0)
        got = code_version(pkg)
    assert got["git_commit"] == head and got["git_dirty"] is None and "did not answer" in got["git_error"]
    slow.write_text(f'#!/bin/sh\n[ "$3" = diff-index ] && sleep 3\nexec {shutil.which("git")} "$@"\n')
    with monkeypatch.context() as m:  # git diff-index past it: the commit and the status are kept
        m.setenv("PATH", f"{slow.parent}{os.pathsep}{os.environ['PATH']}")
        m.setattr("samam.checkpoint.GIT_TIMEOUT_S", 1.0)
        got = code_version(pkg)
    assert got["git_commit"] == head and got["git_dirty"] is True and got["git_diff"] is None
    assert "did not answer" in got["git_error"]
    installed = repo / ".venv" / "site-packages" / "samam"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    (repo / ".gitignore").write_text(".venv/\n")
    for folder, why in ((installed, "did not match any file"), (tmp_path, "not a git repository")):
        got = code_version(folder)
        assert got["git_commit"] is None and got["git_dirty"] is None and got["git_diff"] is None
        assert "is not part of a git checkout" in got["git_error"] and why in got["git_error"]
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert code_version(pkg)["git_error"] == "no git executable on PATH"
    # A checkout owned by another user (root in a container, the repository mounted from the
    # host): git refuses it, and the record said samam was not in a checkout at all.
    refusing = tmp_path / "bin" / "git"
    refusing.parent.mkdir()
    refusing.write_text(
        f"#!/bin/sh\necho \"fatal: detected dubious ownership in repository at '{repo}'\" >&2\n"
        f"echo 'To add an exception for this directory, call: git config --global --add safe.directory {repo}' >&2\n"
        "exit 128\n"
    )
    refusing.chmod(0o755)
    monkeypatch.setenv("PATH", str(refusing.parent))
    got = code_version(pkg)["git_error"]
    assert "not part of a git checkout" not in got and "dubious ownership" in got and "safe.directory" in got


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_cannot_be_had_is_not_blamed_on_the_file(tmp_path):
    """load_model(path, "cuda") on a CPU-only machine said the file was not a readable checkpoint
    (torch.load failed to put its tensors there) and advised torch.load's map_location."""
    path = save(tmp_path, release_state_dict(**SMALL))
    for loader in (load_model, load_official_checkpoint):
        with pytest.raises(RuntimeError) as err:
            loader(path, map_location="cuda", backend="torch")
        assert not isinstance(err.value, CheckpointError) and "readable" not in str(err.value)
    ours, _ = _our_checkpoint(tmp_path, SaMam(**TINY, backend="torch"))
    with pytest.raises(RuntimeError) as err:
        load_checkpoint(ours, map_location="cuda", backend="torch")
    assert not isinstance(err.value, CheckpointError)
