"""Equivalence with the authors' release: same weights, same inputs, compare outputs.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/release_equivalence.py --release-path wheels/SaMam

For patch size 8 and 4 the release (a local copy of github.com/Chernobyllight/SaMam, its
pure-torch scan) is built with random weights, every 1-D parameter but PReLU's perturbed by
0.05·N(0,1) and every weight matrix or kernel scaled by --gain (1.5: at PyTorch's default
init the style changes the output by only ~3e-5 of its range, too little to show that the
style path agrees; at 1.5 it changes it by ~7 %). Its state_dict() is saved as a
Lightning-style .ckpt (plus a loss-network entry the loader must drop) and loaded with
samam.load_official_checkpoint once per scan backend. Both stylise the same random contents
(72×104, whole patches; 77×109, where the release drops the partial patches and ours is given
the content cropped as stylize.py match_release=true does) with two 256² styles (uniform noise, a smooth colour ramp), batch 1, fp32, CPU, one
thread. Reported: the output's error, and the error of the style's effect (output for style
1 minus output for style 2). Also checks zigzag_orders and their inverses against the
release's get_permute_order.

The training recipe (skipped with --no-recipe; needs the copy's LOSS/ and TRAIN/ too, and
pytorch_lightning, which the release imports): the release's LightningModel (its Integration_loss
with a random VGG-19 saved in vgg_normalised.pth's layout, its loss weights, its per-sample
passes) against StyleTransferModule as `experiment=paper` composes it, the same perturbed weights,
the same random 64² content and style batch of 2, fp32, CPU. Reported: each weighted loss term; the
gradient of the total w.r.t. the three outputs (Ics, Icc, Iss) for the same images; the network's
parameter gradients for the same upstream gradient, and end to end; the optimiser and LR schedule of
its configure_optimizers against ours; its command-line defaults (iterations, batch, validation
interval, loss weights, network sizes) against the composed config; and its training transform
against samam.data.random_crop at the same crop offsets. torch 2.14's CPU instance norm returns
wrong input gradients at batch 1 when the incoming gradient is channels-last (its SAIN, whose
output goes through a permute), so the release runs with that gradient made contiguous. The
release's p=4 step is slow: 16 min on 2 CPU cores (autograd through its per-token loop).
Record: experiments/release_equivalence.md. Exits 1 if a relative error exceeds --tol, an order
differs or the recipe differs (recipe_failures).

The release is imported from --release-path at run time only; none of its code is in this repo.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.machinery
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from benchmark import RELEASE_ARGS, git_commit, release_series  # experiments/ is sys.path[0]
from PIL import Image
from torch import nn

import samam
from samam.checkpoint import convert_official_state_dict
from samam.data import random_crop, to_tensor
from samam.evaluation import drop_partial_patches
from samam.module import StyleTransferModule
from samam.ops.scan_orders import scan_indices, zigzag_orders
from samam.ops.selective_scan import numba_available

REPO = Path(__file__).resolve().parents[1]
GRIDS = ((1, 1), (1, 5), (4, 4), (3, 2), (5, 7), (8, 6), (2, 9))
CONTENTS, STYLE = ((72, 104), (77, 109)), (256, 256)  # H, W; 77×109: partial patches for p = 8 and 4
RECIPE_CROP, RECIPE_BATCH = 64, 2
# AdaIN's vgg_normalised.pth: a 1×1 conv, then VGG-19's convs ("M": max pooling) up to relu5_4
VGG_NORMALISED = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)  # fmt: skip
# (W, H) of the images the training transforms are compared on: square, wide, tall, small
TRANSFORM_SIZES = ((512, 512), (640, 480), (1000, 150), (200, 900), (300, 200))


def release_commit(path: Path) -> str:
    """Short HEAD of `path` if it is the top of its own git checkout, else "unknown"."""
    try:
        git = ["git", "-C", str(path), "rev-parse"]
        top = subprocess.run([*git, "--show-toplevel"], capture_output=True, text=True, check=True)
        if Path(top.stdout.strip()).resolve() != path.resolve():
            return "unknown"  # a plain copy inside some other repository
        return subprocess.run(
            [*git, "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def perturbed_release(path: Path, patch_size: int, seed: int, gain: float) -> nn.Module:
    """The release, pure-torch scan, random weights: 1-D parameters (PReLU's excepted)
    + 0.05·N(0,1), every ≥ 2-D weight × gain."""
    torch.manual_seed(seed)
    net = release_series(path, {"patch_size": patch_size}, "torch", torch.device("cpu")).build()
    prelu = {id(m.weight) for m in net.modules() if isinstance(m, nn.PReLU)}
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 1 and id(p) not in prelu:
                p.add_(0.05 * torch.randn_like(p))
            elif p.dim() > 1:
                p.mul_(gain)
    return net


def styles(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform noise and a smooth colour ramp, (1, 3, 256, 256) each."""
    y, x = torch.meshgrid(torch.linspace(0, 1, STYLE[0]), torch.linspace(0, 1, STYLE[1]), indexing="ij")
    return torch.rand(1, 3, *STYLE, generator=g), torch.stack([y, x, x * y])[None]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def compare(
    path: Path, patch_size: int, backends: list[str], seed: int, gain: float, tmp: Path
) -> list[dict[str, Any]]:
    """Rows of max|ours − release| / max|release| for one patch size, one per content and backend."""
    release = perturbed_release(path, patch_size, seed, gain)
    ckpt = tmp / f"release_p{patch_size}.ckpt"
    sd = {f"model.{k}": v for k, v in release.state_dict().items()}
    sd["loss_func.enc_1.0.weight"] = torch.randn(64, 3, 3, 3)  # frozen VGG in real files: must be dropped
    torch.save({"state_dict": sd}, ckpt)

    g = torch.Generator().manual_seed(seed + 1)
    contents = [torch.rand(1, 3, *CONTENTS[0], generator=g)]
    s1, s2 = styles(g)
    contents += [torch.rand(1, 3, *size, generator=g) for size in CONTENTS[1:]]
    rows = []
    for content in contents:
        rows += compare_content(release, ckpt, patch_size, backends, content, s1, s2)
    return rows


def compare_content(
    release: nn.Module,
    ckpt: Path,
    patch_size: int,
    backends: list[str],
    content: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
) -> list[dict[str, Any]]:
    cropped = drop_partial_patches(content, patch_size)
    size = f"{content.shape[-2]}×{content.shape[-1]}"
    if cropped.shape != content.shape:
        size += f" (ours: cropped to {cropped.shape[-2]}×{cropped.shape[-1]})"
    with torch.inference_mode():
        t0 = time.perf_counter()
        ref = release(content, s1)
        release_s = time.perf_counter() - t0
        ref_effect = ref - release(content, s2)  # what the style changes
        rows = []
        for backend in backends:
            ours = samam.load_official_checkpoint(ckpt, backend=backend)
            t0 = time.perf_counter()
            out = ours(cropped, s1)
            ours_s = time.perf_counter() - t0
            assert out.shape == ref.shape, (out.shape, ref.shape)
            row = dict(
                patch_size=patch_size, content=size, backend=backend, rel_error=rel(out, ref),
                style_effect=(ref_effect.abs().max() / ref.abs().max()).item(),
                style_effect_error=rel(out - ours(cropped, s2), ref_effect),
                release_s=round(release_s, 2), ours_s=round(ours_s, 2),
            )  # fmt: skip
            rows.append(row)
            print(
                f"p={patch_size} {size} {backend}: output {row['rel_error']:.1e}, style effect "
                f"{row['style_effect']:.1e} of the range, its error {row['style_effect_error']:.1e} "
                f"(release {release_s:.1f} s, ours {ours_s:.1f} s)"
            )
    return rows


def check_zigzag(path: Path) -> list[str]:
    """Grids whose zigzag orders or inverses differ from the release's get_permute_order."""
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    from ARCHI.archi_utils import get_permute_order

    bad = []
    for h, w in GRIDS:
        orders, inverses, _ = get_permute_order(h, w)  # 4 tuples each, slot k = our row k
        _, inverse = scan_indices("zigzag", h, w)  # what the network gathers with
        if not (
            torch.equal(zigzag_orders(h, w), torch.tensor(orders))
            and torch.equal(inverse, torch.tensor(inverses))
        ):
            bad.append(f"{h}x{w}")
    return bad


# ---- the training recipe -------------------------------------------------------------------


def import_release_training(path: Path) -> types.SimpleNamespace:
    """The release's LOSS and TRAIN modules (its train_SaMam.py defaults, LightningModel,
    training transforms). Their data module imports sklearn for a split this script never
    makes: a stand-in is put in its place if sklearn is not installed."""
    missing = [
        f for f in ("LOSS/losses.py", "TRAIN/lightning_module/lightningmodel.py") if not (path / f).is_file()
    ]
    if missing:
        raise SystemExit(
            f"--release-path {path}: no {', '.join(missing)}; the recipe comparison needs the release's "
            "LOSS/ and TRAIN/ too (copy them, or pass --no-recipe)"
        )
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import pytorch_lightning  # noqa: F401  (before the stand-in: its imports look sklearn up)

    try:
        import sklearn.model_selection  # noqa: F401
    except ImportError:
        for name in ("sklearn", "sklearn.model_selection"):
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = module
        sys.modules["sklearn.model_selection"].train_test_split = None
    with contextlib.redirect_stdout(io.StringIO()):
        import LOSS.losses
        from TRAIN import train_SaMam
        from TRAIN.lightning_module.datamodule import DataModule
        from TRAIN.lightning_module.lightningmodel import LightningModel
    argv, sys.argv = sys.argv, ["train_SaMam.py"]
    try:
        defaults = train_SaMam.parse_args()
    finally:
        sys.argv = argv
    return types.SimpleNamespace(
        losses=LOSS.losses, LightningModel=LightningModel, DataModule=DataModule, defaults=defaults
    )


def random_vgg_normalised(file: Path, seed: int) -> None:
    """A random VGG-19 in the layout of AdaIN's vgg_normalised.pth (nn.Sequential indices:
    1×1 conv at 0, then [pad, conv, ReLU] per conv and one index per pooling), He-scaled."""
    g = torch.Generator().manual_seed(seed)
    sd = {"0.weight": torch.randn(3, 3, 1, 1, generator=g), "0.bias": 0.05 * torch.randn(3, generator=g)}
    i, c_in = 1, 3
    for width in VGG_NORMALISED:
        if width == "M":
            i += 1
            continue
        sd[f"{i + 1}.weight"] = torch.randn(width, c_in, 3, 3, generator=g) * (2 / (9 * c_in)) ** 0.5
        sd[f"{i + 1}.bias"] = 0.05 * torch.randn(width, generator=g)
        i, c_in = i + 3, width
    torch.save(sd, file)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


@contextlib.contextmanager
def contiguous_instance_norm_grads() -> Iterator[None]:
    """nn.InstanceNorm2d built in this block gets contiguous output gradients (see
    instance_norm_grad_error): the graph keeps the fix for the backward run after it."""
    forward = nn.InstanceNorm2d.forward
    nn.InstanceNorm2d.forward = lambda self, x: _ContiguousGrad.apply(forward(self, x))
    try:
        yield
    finally:
        nn.InstanceNorm2d.forward = forward


def instance_norm_grad_error() -> float:
    """Relative error of torch's instance-norm input gradient at batch 1 for a channels-last
    output gradient (what the release's SAIN receives), against the same maths written out."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 32, 6, 5, generator=g, requires_grad=True)
    grad = torch.randn(1, 32, 6, 5, generator=g).contiguous(memory_format=torch.channels_last)
    (got,) = torch.autograd.grad(F.instance_norm(x), x, grad)
    mu, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
    (ref,) = torch.autograd.grad((x - mu) / torch.sqrt(var + 1e-5), x, grad)
    return ((got - ref).norm() / ref.norm()).item()


def paper_config() -> Any:
    """conf/train.yaml with experiment=paper, as train.py composes it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=["experiment=paper"])


def grad_errors(ours: dict[str, torch.Tensor], release: dict[str, torch.Tensor]) -> dict[str, Any]:
    """‖ours − release‖ / ‖release‖ per parameter tensor (median, worst) and over all of them."""
    theirs = {k: release[k].reshape(ours[k].shape) for k in ours}
    per = sorted((rel_norm(ours[k], theirs[k]), k) for k in ours)
    overall = rel_norm(
        torch.cat([g.flatten() for g in ours.values()]), torch.cat([theirs[k].flatten() for k in ours])
    )
    return dict(
        tensors=len(per), median=statistics.median(e for e, _ in per), worst=per[-1][0], worst_name=per[-1][1],
        overall=overall,
    )  # fmt: skip


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return ((a - b).norm() / b.norm()).item()


def compare_losses_and_grads(
    rel: types.SimpleNamespace, patch_size: int, seed: int, gain: float, cfg: Any, tmp: Path
) -> dict[str, Any]:
    """One training step's loss terms and gradients, the release's LightningModel against ours."""
    from hydra.utils import instantiate

    vgg = tmp / "vgg_normalised.pth"
    random_vgg_normalised(vgg, seed)
    rel.losses.vgg_ckp = str(vgg)  # the path its Integration_loss loads
    d = rel.defaults
    hyper = {k: d[k] for k in ("nVSSMs", "nSAVSSMs", "nSAVSSGs", "embed_dim", "representation_dim", "d_state",
                               "expand", "compress_ratio", "squeeze_factor", "style_weight", "content_weight",
                               "lambda1", "lambda2", "lr")}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        lm = rel.LightningModel(**hyper, patch_size=patch_size, mamba_from_trion=0)
    lm.model.load_state_dict(perturbed_release(rel.path, patch_size, seed, gain).state_dict())
    ckpt = tmp / f"recipe_p{patch_size}.ckpt"
    torch.save({"state_dict": lm.state_dict()}, ckpt)  # the released files' layout, loss network included

    g = torch.Generator().manual_seed(seed + 2)
    c, s = (torch.rand(RECIPE_BATCH, 3, RECIPE_CROP, RECIPE_CROP, generator=g) for _ in range(2))
    t0 = time.perf_counter()
    with contiguous_instance_norm_grads(), contextlib.redirect_stdout(io.StringIO()):
        # the release's step: one pass per sample for c+s, c+c and s+s, then its weighted terms
        outs = [
            torch.cat([lm.model(x[i : i + 1], y[i : i + 1]) for i in range(RECIPE_BATCH)])
            for x, y in ((c, s), (c, c), (s, s))
        ]
        for o in outs:
            o.retain_grad()
        terms = lm.loss(*outs, c, s)  # 7·content, 7·style, 70·id1, 1·id2
    total = sum(terms)
    total.backward()
    release_s = time.perf_counter() - t0
    upstream = [o.grad for o in outs]
    _, release_grads, _ = convert_official_state_dict(
        {k: p.grad for k, p in lm.named_parameters() if p.requires_grad}
    )

    net = samam.load_official_checkpoint(ckpt, backend="torch")
    loss = instantiate(cfg.loss, vgg=str(vgg))
    module = StyleTransferModule(
        net, loss, instantiate(cfg.module.optimizer), instantiate(cfg.module.scheduler)
    )  # fmt: skip
    t0 = time.perf_counter()
    ours = module._step({"content": c, "style": s})  # the training step's forward
    ours["loss"].backward()
    ours_s = time.perf_counter() - t0
    end_to_end = {k: p.grad.clone() for k, p in net.named_parameters()}

    weights = {
        "content": loss.content_weight,
        "style": loss.style_weight,
        "id1": loss.identity1_weight,
        "id2": loss.identity2_weight,
    }
    rows = [
        dict(term=name, release=r.item(), ours=(weights[name] * ours[f"loss_{name}"]).item())
        for name, r in zip(weights, terms)
    ]
    rows.append(dict(term="total", release=total.item(), ours=ours["loss"].item()))
    for r in rows:
        r["rel_error"] = abs(r["ours"] - r["release"]) / abs(r["release"])

    # The loss alone, on the release's three outputs. In fp32 the two differ by ~1e-3: these
    # near-black images put many VGG units at round-off distance from a ReLU kink or a max-pool
    # tie, and one pass over 5B images (ours) rounds otherwise than five passes over B (the
    # release's). In fp64 that is gone and what is left is the maths.
    images = [o.detach().requires_grad_(True) for o in outs]
    loss(*images, c, s)["loss"].backward()
    loss_grad_fp32 = rel_norm(torch.cat([i.grad for i in images]), torch.cat(upstream))
    lm.loss_func.double(), loss.double()
    theirs64, ours64 = ([o.detach().double().requires_grad_(True) for o in outs] for _ in range(2))
    total64 = sum(lm.loss(*theirs64, c.double(), s.double()))
    total64.backward()
    ours_total64 = loss(*ours64, c.double(), s.double())["loss"]
    ours_total64.backward()
    loss_fp64 = dict(
        total_error=abs(ours_total64.item() - total64.item()) / abs(total64.item()),
        grad_error=rel_norm(torch.cat([i.grad for i in ours64]), torch.cat([i.grad for i in theirs64])),
    )

    # the network alone: the release's upstream gradient through ours (one batched pass, as training)
    net.zero_grad()
    out = net(torch.cat([c, c, s]), torch.cat([s, c, s]))  # (3B,3,H,W): Ics, Icc, Iss
    out.backward(torch.cat(upstream))
    same_upstream = {k: p.grad for k, p in net.named_parameters()}

    result = dict(
        patch_size=patch_size, crop=RECIPE_CROP, batch=RECIPE_BATCH, terms=rows, loss_fp64=loss_fp64,
        loss_grad_error_fp32=loss_grad_fp32,
        grads_same_upstream=grad_errors(same_upstream, release_grads),
        grads_end_to_end=grad_errors(end_to_end, release_grads),
        release_s=round(release_s, 1), ours_s=round(ours_s, 1),
    )  # fmt: skip
    print(
        f"recipe p={patch_size}: total {total.item():.6g} vs {ours['loss'].item():.6g}, loss (fp64) {loss_fp64['total_error']:.1e}, its "
        f"gradient {loss_fp64['grad_error']:.1e} (fp32: {loss_grad_fp32:.1e}), "
        f"network gradients (same upstream) {result['grads_same_upstream']['overall']:.1e}, "
        f"end to end {result['grads_end_to_end']['overall']:.1e} (release {release_s:.0f} s, ours {ours_s:.1f} s)"
    )
    return result


def compare_optimisation(rel: types.SimpleNamespace, cfg: Any) -> list[dict[str, Any]]:
    """The release's configure_optimizers and command-line defaults against the composed config:
    rows of (what, release, ours, equal)."""
    from hydra.utils import instantiate

    d = rel.defaults
    lm = types.SimpleNamespace(lr=d["lr"], parameters=lambda: [nn.Parameter(torch.zeros(1))])
    theirs = rel.LightningModel.configure_optimizers(lm)  # uses self.lr and self.parameters() only
    opt = instantiate(cfg.module.optimizer)(params=[nn.Parameter(torch.zeros(1))])
    sched = instantiate(cfg.module.scheduler)(opt)
    keys = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    its = (0, 1, 1000, 100_000, 199_999)
    their_sched = theirs["lr_scheduler"]
    rows = [
        ("optimiser", type(theirs["optimizer"]).__name__, type(opt).__name__),
        *((f"optimiser {k}", theirs["optimizer"].defaults[k], opt.defaults[k]) for k in keys),
        (f"LR factor at iterations {', '.join(map(str, its))}", [their_sched["scheduler"].lr_lambdas[0](i) for i in its],
         [sched.lr_lambdas[0](i) for i in its]),
        ("LR schedule stepped every", f"{their_sched['frequency']} {their_sched['interval']}", "1 step"),
        ("iterations", d["iterations"], cfg.trainer.max_steps),
        ("batch (release: per GPU; ours: global)", d["batch_size"], cfg.data.batch_size),
        ("validation every", d["val_interval"], cfg.trainer.val_check_interval),
        ("gradient clipping", None, cfg.trainer.gradient_clip_val),
        ("precision", "32 (Trainer default)", cfg.trainer.precision),
        ("loss weights content, style, id1, id2", [d["content_weight"], d["style_weight"], d["lambda1"], d["lambda2"]],
         [cfg.loss.content_weight, cfg.loss.style_weight, cfg.loss.identity1_weight, cfg.loss.identity2_weight]),
        *((f"model {rel_name} / {ours}", d[rel_name], cfg.model[ours])
          for ours, rel_name in RELEASE_ARGS.items()),
    ]  # fmt: skip
    same = {"precision": lambda a, b: b == "32-true", "LR schedule stepped every": lambda a, b: a == "1 step"}
    return [dict(what=w, release=a, ours=b, equal=same[w](a, b) if w in same else a == b) for w, a, b in rows]


def compare_transforms(rel: types.SimpleNamespace, seed: int) -> dict[str, Any]:
    """The release's training transform (content and style alike) against random_crop at the
    crop offset its RandomCrop draws, on smooth random RGB images of TRANSFORM_SIZES."""
    tf = rel.DataModule.train_transforms(None)  # uses no state
    resize, crop, to_t = tf["content"].transforms
    assert repr(tf["content"]) == repr(tf["style"]), (tf["content"], tf["style"])

    class Offsets:  # hands random_crop the offsets the release drew, x then y
        def __init__(self, x: int, y: int) -> None:
            self.values = [x, y]

        def integers(self, low: int, high: int) -> int:
            value = self.values.pop(0)
            assert low <= value < high, (low, value, high)
            return value

    g = torch.Generator().manual_seed(seed)
    worst, cases = 0.0, 0
    for w, h in TRANSFORM_SIZES:
        small = torch.rand(3, max(2, h // 16), max(2, w // 16), generator=g)
        smooth = F.interpolate(small[None], size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)
        im = Image.fromarray((smooth.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), "RGB")
        for k in range(3):
            torch.manual_seed(seed + k)
            y, x, _, _ = crop.get_params(resize(im), crop.size)  # the draw RandomCrop makes next
            torch.manual_seed(seed + k)
            theirs = tf["content"](im)
            ours = to_tensor(random_crop(im, 512, 256, Offsets(x, y)))
            worst = max(worst, (theirs - ours).abs().max().item())
            cases += 1
    return dict(release=" ".join(repr(tf["content"]).split()), images=[list(s) for s in TRANSFORM_SIZES],
                crops=cases, max_abs_diff=worst)  # fmt: skip


def recipe_markdown(recipe: dict[str, Any]) -> str:
    lines = [
        f"One training step, batch {RECIPE_BATCH}, {RECIPE_CROP}² crops, random VGG-19 in vgg_normalised.pth's layout. "
        "Loss terms weighted, fp32 (|ours − release| / |release|); the total and its gradient w.r.t. the "
        "three outputs for the release's outputs, in fp64 and fp32; the network's parameter gradients, fp32, "
        "for the release's upstream gradient and end to end (‖ours − release‖ / ‖release‖ over all "
        "parameters / median and worst of the parameter tensors):",
        "",
        "| patch size | content | style | identity 1 | identity 2 | total: release | total: ours "
        "| fp64 total | fp64 ∂total/∂(Ics, Icc, Iss) | fp32 ∂total/∂(Ics, Icc, Iss) "
        "| parameter gradients, same upstream gradient | parameter gradients, end to end |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recipe["steps"]:
        t = {row["term"]: row for row in r["terms"]}
        su, ee, f64 = r["grads_same_upstream"], r["grads_end_to_end"], r["loss_fp64"]
        lines.append(
            f"| {r['patch_size']} | " + " | ".join(f"{t[k]['rel_error']:.1e}" for k in ("content", "style", "id1", "id2"))
            + f" | {t['total']['release']:.6g} | {t['total']['ours']:.6g} | {f64['total_error']:.1e} | {f64['grad_error']:.1e} "
            f"| {r['loss_grad_error_fp32']:.1e} | {su['overall']:.1e} / {su['median']:.1e} / {su['worst']:.1e} "
            f"| {ee['overall']:.1e} / {ee['median']:.1e} / {ee['worst']:.1e} |"
        )  # fmt: skip
    lines += ["", "| setting | release | ours (experiment=paper) | equal |", "|---|---|---|---|"]
    lines += [
        f"| {r['what']} | {r['release']} | {r['ours']} | {'yes' if r['equal'] else '**no**'} |"
        for r in recipe["optimisation"]
    ]
    t = recipe["transforms"]
    lines += [
        "",
        f"Training transform `{t['release']}` vs `samam.data.random_crop` (resize 512, crop 256) at the same offsets: "
        f"{t['crops']} crops of {len(t['images'])} images, max |difference| {t['max_abs_diff']:g}.",
        "",
        f"torch's CPU instance-norm input gradient at batch 1 for a channels-last output gradient: relative error "
        f"{recipe['instance_norm_grad_error']:.1e} (the release ran with that gradient made contiguous).",
    ]  # fmt: skip
    return "\n".join(lines)


def compare_recipe(path: Path, patch_sizes: list[int], seed: int, gain: float, tmp: Path) -> dict[str, Any]:
    rel = import_release_training(path)
    rel.path = path
    cfg = paper_config()
    steps = [compare_losses_and_grads(rel, ps, seed, gain, cfg, tmp) for ps in patch_sizes]
    return dict(
        steps=steps, optimisation=compare_optimisation(rel, cfg), transforms=compare_transforms(rel, seed),
        instance_norm_grad_error=instance_norm_grad_error(),
    )  # fmt: skip


def recipe_failures(recipe: dict[str, Any], tol: float, grad_tol: float) -> list[str]:
    """What in the recipe comparison differs: a loss term or the loss gradient past tol, the
    network's gradients for the same upstream gradient past grad_tol, a setting, a crop pixel."""
    bad = []
    for step in recipe["steps"]:
        p = step["patch_size"]
        bad += [f"p={p} {r['term']}" for r in step["terms"] if not r["rel_error"] <= tol]  # NaN fails too
        if not (step["loss_fp64"]["total_error"] <= tol and step["loss_fp64"]["grad_error"] <= tol):
            bad.append(f"p={p} loss in fp64")
        if not step["grads_same_upstream"]["overall"] <= grad_tol:
            bad.append(f"p={p} parameter gradients")
    bad += [r["what"] for r in recipe["optimisation"] if not r["equal"]]
    if recipe["transforms"]["max_abs_diff"] != 0:
        bad.append("training transform")
    return bad


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| patch size | content | our backend | output: relative error | style effect (share of range) "
        "| style effect: relative error |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['patch_size']} | {r['content']} | {r['backend']} | {r['rel_error']:.1e} | {r['style_effect']:.1e} "
        f"| {r['style_effect_error']:.1e} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--release-path", type=Path, required=True, help="local copy of github.com/Chernobyllight/SaMam"
    )
    p.add_argument("--out", type=Path, help="default experiments/results/<today>-release-equivalence")
    p.add_argument("--tol", type=float, default=1e-4, help="max relative error (issue 2 acceptance: 1e-4)")
    p.add_argument("--patch-sizes", type=int, nargs="+", default=[8, 4], choices=[8, 4])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--effect-tol", type=float, default=1e-3,
        help="max relative error of the style's effect: the output's round-off over a difference "
        "~10× smaller than the output, so ~10× looser; a broken style path is off by O(1)",
    )  # fmt: skip
    p.add_argument("--gain", type=float, default=1.5, help="scale of every ≥ 2-D release weight (see above)")
    p.add_argument(
        "--grad-tol", type=float, default=1e-3,
        help="max overall relative error of the parameter gradients for the same upstream gradient",
    )  # fmt: skip
    p.add_argument("--no-recipe", action="store_true", help="skip the training-recipe comparison")
    args = p.parse_args()
    path = args.release_path.expanduser().resolve()
    today = datetime.date.today().isoformat()
    out = args.out or REPO / "experiments" / "results" / f"{today}-release-equivalence"
    torch.set_num_threads(1)
    backends = ["torch", "numba"] if numba_available() else ["torch"]

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            r for ps in args.patch_sizes for r in compare(path, ps, backends, args.seed, args.gain, Path(tmp))
        ]
        recipe = None
        if not args.no_recipe:
            recipe = compare_recipe(path, args.patch_sizes, args.seed, args.gain, Path(tmp))
    bad_grids = check_zigzag(path)
    elapsed = time.perf_counter() - start

    table = markdown(rows)
    zigzag = (
        f"zigzag orders and inverses vs get_permute_order, grids {', '.join(f'{h}x{w}' for h, w in GRIDS)}: "
    )
    zigzag += f"DIFFER for {', '.join(bad_grids)}" if bad_grids else "identical"
    recipe_md = "" if recipe is None else "\n\n## Training recipe\n\n" + recipe_markdown(recipe)
    print(f"\n{table}\n\n{zigzag}{recipe_md}\nelapsed {elapsed:.0f} s")

    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"), torch=torch.__version__,
        commit=git_commit(), release_path=str(path), release_commit=release_commit(path),
        command=" ".join(sys.argv), threads=torch.get_num_threads(), seed=args.seed, gain=args.gain, tol=args.tol, effect_tol=args.effect_tol,
        contents=[list(c) for c in CONTENTS], style=list(STYLE), elapsed_s=round(elapsed, 1), rows=rows,
        zigzag_grids=[f"{h}x{w}" for h, w in GRIDS], zigzag_mismatches=bad_grids, grad_tol=args.grad_tol,
        recipe=recipe,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(meta, indent=2) + "\n")
    head = f"# Release equivalence, {meta['date']}\n\ncommit {meta['commit']}, torch {meta['torch']}, "
    head += (
        f"release {meta['release_path']} ({meta['release_commit']}), CPU fp32, 1 thread, {elapsed:.0f} s\n\n"
    )
    head += (
        f"max |ours − release| / max |release|, styles {STYLE[0]}², batch 1, "
        f"weights × {args.gain:g}; style effect = output(noise style) − output(colour ramp):\n\n"
    )
    (out / "results.md").write_text(f"{head}{table}\n\n{zigzag}{recipe_md}\n")
    print(f"wrote {out}")

    failed = [  # NaN fails too
        r for r in rows if not (r["rel_error"] <= args.tol and r["style_effect_error"] <= args.effect_tol)
    ]
    recipe_failed = [] if recipe is None else recipe_failures(recipe, args.tol, args.grad_tol)
    if failed or bad_grids or recipe_failed:
        sys.exit(
            f"FAILED: {len(failed)} rows above --tol {args.tol:g} / --effect-tol {args.effect_tol:g}; zigzag mismatches: {bad_grids or 'none'}; "
            f"recipe: {'; '.join(recipe_failed) or 'agrees'}"
        )


if __name__ == "__main__":
    main()
