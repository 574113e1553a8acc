"""Perceptual losses of SaMam (SPEC §5): frozen VGG-19 taps relu1_1 … relu5_1.

Shapes: B batch, C channels, H, W. Images enter in [0, 1].

VGG weight sources (``vgg=``):
- ``"imagenet"``: torchvision's ImageNet VGG-19 (``vgg19-dcbb9e9d.pth`` under
  ``$TORCH_HOME/hub/checkpoints/``), zero padding, ImageNet mean/std normalisation.
- ``"imagenet_if_cached"``: ``"imagenet"`` when that file is already on disk, otherwise
  ``"random"`` (with its warning). Used by the offline demo only. A resumed run keeps the
  choice its checkpoint records (``samam.loss_vgg``): a file copied in since is not used, and an
  ImageNet run whose file has gone refuses to resume (train.resumed_vgg).
- a path to AdaIN's ``vgg_normalised.pth`` (the release's loss network: a 1×1 first conv that
  takes [0, 1] RGB, reflection padding, ceil-mode pooling), or to a torchvision-layout
  ``features.*`` state dict.
- ``"random"``: Kaiming-initialised, seeded; only for tests and offline demos.
"""

from __future__ import annotations

import logging
import numbers
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samam.ranks import first_process

log = logging.getLogger(__name__)

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
# The release loads AdaIN's normalised VGG-19 from this link (its LOSS/vgg_ckp/readme.md).
VGG_NORMALISED_URL = "https://drive.google.com/file/d/13BzdootYTuwCiV4VW0sjSxjopWJiiRZg/view"
VGG19_FILE = "vgg19-dcbb9e9d.pth"
TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# Output widths of VGG-19's convolutions up to conv5_1, grouped by the tap that ends each slice
# (conv1_1 | conv1_2 pool conv2_1 | conv2_2 pool conv3_1 | conv3_2-4 pool conv4_1 | conv4_2-4 pool conv5_1).
_SLICES: tuple[tuple[int, ...], ...] = (
    (64,),
    (64, 128),
    (128, 256),
    (256, 256, 256, 512),
    (512, 512, 512, 512),
)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def torch_hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_vgg19() -> Path:
    """Where torch.hub keeps (and ``loss.vgg=imagenet`` looks for) torchvision's VGG-19 weights."""
    return torch_hub_checkpoint_dir() / VGG19_FILE


def mean_std(feat: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-channel spatial mean and std (unbiased variance + eps), as AdaIN. (B,C,H,W) -> 2×(B,C,1,1).
    Float32 also for bf16/fp16 features (mixed precision): in bf16 the variance of a nearly
    constant channel loses most of its digits, and with it the style loss near convergence.
    Float64 features (trainer.precision=64-true) stay float64."""
    b, c = feat.shape[:2]
    flat = feat.reshape(b, c, -1)
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
    var = flat.var(dim=2) + eps
    return flat.mean(dim=2).view(b, c, 1, 1), var.sqrt().view(b, c, 1, 1)


def normalize_features(feat: Tensor) -> Tensor:
    """(f − μ)/σ per sample and channel. (B,C,H,W) -> (B,C,H,W)."""
    mu, sigma = mean_std(feat)
    return (feat - mu) / sigma


class VGGEncoder(nn.Module):
    """VGG-19 up to relu5_1 returning the five taps; frozen, always in eval mode.

    ``normalised=True`` builds AdaIN's layout (1×1 RGB conv first, reflection padding,
    ceil-mode pooling, [0, 1] input); otherwise torchvision's (zero padding, floor pooling,
    ImageNet normalisation applied here).
    """

    def __init__(self, normalised: bool = False) -> None:
        super().__init__()
        self.normalised = normalised
        pad_mode = "reflect" if normalised else "zeros"
        in_ch = 3
        slices: list[nn.Sequential] = []
        for i, widths in enumerate(_SLICES):
            layers: list[nn.Module] = []
            if i == 0 and normalised:
                layers.append(nn.Conv2d(3, 3, 1))
            for j, w in enumerate(widths):
                if i > 0 and j == len(widths) - 1:  # each tap is the first ReLU after a pooling
                    layers.append(nn.MaxPool2d(2, 2, ceil_mode=normalised))
                layers += [nn.Conv2d(in_ch, w, 3, padding=1, padding_mode=pad_mode), nn.ReLU()]
                in_ch = w
            slices.append(nn.Sequential(*layers))
        self.slices = nn.ModuleList(slices)
        if normalised:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGEncoder:  # frozen: never leaves eval mode
        return super().train(False)

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    def load_conv_weights(self, tensors: list[tuple[Tensor, Tensor]]) -> None:
        convs = self.convs()
        if len(tensors) < len(convs):
            raise ValueError(f"VGG state dict has {len(tensors)} convolutions, need at least {len(convs)}")
        for conv, (w, b) in zip(convs, tensors):
            if w.shape != conv.weight.shape:
                raise ValueError(
                    f"VGG conv shape mismatch: file {tuple(w.shape)} vs {tuple(conv.weight.shape)}"
                )
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(b)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B,3,H,W) in [0,1] -> five taps, relu1_1 (B,64,H,W) … relu5_1 (B,512,H/16,W/16)."""
        h = (x - self.mean) / self.std
        feats = []
        for s in self.slices:
            h = s(h)
            feats.append(h)
        return feats


def _ordered_convs(state: dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Conv (weight, bias) pairs in layer order, for a Sequential-style state dict."""
    weights = {}
    for key, value in state.items():
        m = re.match(r"^(.*?)(\d+)\.weight$", key)
        if m is not None and value.ndim == 4:
            weights[(m.group(1), int(m.group(2)))] = (value, state[key[: -len("weight")] + "bias"])
    return [weights[k] for k in sorted(weights)]


def _random_encoder(seed: int = 0) -> VGGEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = VGGEncoder(normalised=False)
        for conv in enc.convs():
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
    return enc


VGG_SOURCES = ("imagenet", "imagenet_if_cached", "random")  # else loss.vgg is a file


def resolve_vgg_source(source: str) -> str:
    """The weight source a loss.vgg value builds: ``imagenet_if_cached`` → ``imagenet`` or
    ``random``, by whether the ImageNet file is on disk now; any other value as it is."""
    if source == "imagenet_if_cached":
        return "imagenet" if cached_vgg19().is_file() else "random"
    return source


def build_vgg(source: str) -> VGGEncoder:
    """VGG-19 encoder from a weight source (see module docstring). Fails loudly offline."""
    cached = cached_vgg19()
    source = resolve_vgg_source(source)
    if source == "random":
        if first_process():  # every rank of a DDP run builds its own, alike
            log.warning(
                "!!! loss.vgg=random: the loss network has RANDOM weights. Losses still fall, but "
                "stylisation quality is meaningless. For real training put %s in %s (or set "
                "loss.vgg to a vgg_normalised.pth path).",
                VGG19_FILE,
                torch_hub_checkpoint_dir(),
            )
        return _random_encoder()
    if source == "imagenet":
        try:
            state = torch.hub.load_state_dict_from_url(VGG19_URL, map_location="cpu", check_hash=False)
        except Exception as err:  # URLError, SSL, proxy errors: all mean "not downloadable here"
            raise FileNotFoundError(_missing_vgg_message(cached) + f" (download error: {err})") from err
        enc = VGGEncoder(normalised=False)
        enc.load_conv_weights(_ordered_convs({k: v for k, v in state.items() if k.startswith("features.")}))
        return enc
    path = Path(os.path.expanduser(source))
    if not path.is_file():
        raise FileNotFoundError(
            f"loss.vgg={source!r}: no such file. Use 'imagenet' (needs {VGG19_FILE} in "
            f"{torch_hub_checkpoint_dir()}), 'random', or the path to AdaIN's vgg_normalised.pth "
            f"(the release's copy: {VGG_NORMALISED_URL})."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:
        state = state["state_dict"]
    convs = _ordered_convs(state)
    if not convs:
        raise ValueError(f"{path}: no convolution weights found")
    # AdaIN's vgg_normalised starts with a 1×1 conv 3→3; torchvision's with a 3×3 conv 3→64.
    enc = VGGEncoder(normalised=tuple(convs[0][0].shape) == (3, 3, 1, 1))
    enc.load_conv_weights(convs)
    log.info("VGG-19 loss network from %s (%s layout)", path, "normalised" if enc.normalised else "imagenet")
    return enc


def _missing_vgg_message(cached: Path) -> str:
    return (
        f"loss.vgg=imagenet needs torchvision's VGG-19 weights {VGG19_FILE}, which cannot be "
        f"downloaded here. Download {VGG19_URL} on a machine with internet and copy it to "
        f"{cached.parent}/ ($TORCH_HOME/hub/checkpoints/), or set loss.vgg=/path/to/vgg_normalised.pth "
        f"(AdaIN's normalised VGG), or loss.vgg=random for a smoke test."
    )


class StyleTransferLoss(nn.Module):
    """SaMam's training objective: w_c·content + w_s·style + w_id1·identity1 + w_id2·identity2."""

    def __init__(
        self,
        vgg: str = "imagenet",
        content_weight: float = 7.0,
        style_weight: float = 7.0,
        identity1_weight: float = 70.0,
        identity2_weight: float = 1.0,
    ) -> None:
        super().__init__()
        weights = dict(
            content_weight=content_weight,
            style_weight=style_weight,
            identity1_weight=identity1_weight,
            identity2_weight=identity2_weight,
        )
        for name, value in weights.items():  # loss.style_weight=abc failed only at the first step
            if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's too
                raise TypeError(f"{name}={value!r} must be a number")
        self.source = vgg
        self.vgg_used = resolve_vgg_source(vgg)  # recorded in checkpoints (samam.loss_vgg) for a resume
        self.vgg = build_vgg(self.vgg_used)
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.identity1_weight = identity1_weight
        self.identity2_weight = identity2_weight

    @staticmethod
    def content_loss(out_feats: list[Tensor], content_feats: list[Tensor]) -> Tensor:
        """MSE of mean/std-normalised relu4_1 and relu5_1 features."""
        return sum(
            F.mse_loss(normalize_features(o), normalize_features(c))
            for o, c in zip(out_feats[3:], content_feats[3:])
        )

    @staticmethod
    def style_loss(out_feats: list[Tensor], style_feats: list[Tensor]) -> Tensor:
        """Σ over the five taps of MSE(μ) + MSE(σ)."""
        total = out_feats[0].new_zeros(())
        for o, s in zip(out_feats, style_feats):
            (mo, so), (ms, ss) = mean_std(o), mean_std(s)
            total = total + F.mse_loss(mo, ms) + F.mse_loss(so, ss)
        return total

    def forward(
        self, ics: Tensor, icc: Tensor, iss: Tensor, content: Tensor, style: Tensor
    ) -> dict[str, Tensor]:
        """All inputs (B,3,H,W) with one H, W. Returns the weighted total and the four raw terms."""
        b = content.shape[0]
        # One VGG pass over the 3B outputs and one without autograd over the 2B targets: in a
        # single pass over 5B the backward would also run every convolution's input gradient
        # over the targets' 2B images, only to drop it.
        feats = self.vgg(torch.cat([ics, icc, iss]))  # 5 × (3B, C_t, H_t, W_t)
        with torch.no_grad():
            targets = self.vgg(torch.cat([content, style]))  # 5 × (2B, C_t, H_t, W_t)
        f_ics, f_icc, f_iss = zip(*(f.split(b) for f in feats))
        f_c, f_s = zip(*(f.split(b) for f in targets))
        content_term = self.content_loss(list(f_ics), f_c)
        style_term = self.style_loss(list(f_ics), f_s)
        id1 = F.mse_loss(icc, content) + F.mse_loss(iss, style)
        id2 = sum(F.mse_loss(a, c) + F.mse_loss(s_, s) for a, c, s_, s in zip(f_icc, f_c, f_iss, f_s))
        total = (
            self.content_weight * content_term
            + self.style_weight * style_term
            + self.identity1_weight * id1
            + self.identity2_weight * id2
        )
        return {
            "loss": total,
            "loss_content": content_term,
            "loss_style": style_term,
            "loss_id1": id1,
            "loss_id2": id2,
        }
