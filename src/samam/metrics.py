"""Style-transfer metrics of the StyleID protocol (SPEC §6) as torchmetrics ``Metric``s.

- ``fid_art``: FID on 2048-d pool features of ArtFID's art-trained Inception-v3
  (``art_inception.pth``), the FID the paper reports;
- ``fid_tf``: FID on torch-fidelity's TF-Inception, fed uint8 with the reference
  (TF1-style, non-antialiased) resize, so it matches torch-fidelity's own number;
- ``lpips``: AlexNet LPIPS v0.1 between each output and its content, both resized to a 512
  shorter side as the reference does, inputs in [-1, 1];
- ``artfid`` = (1 + lpips)·(1 + fid_art);
- ``cfsd``: Σ over rows of KL(softmax(S_content) ‖ softmax(S_output)), S the self-similarity
  of VGG-19 relu3_1 features, computed in row blocks.

Every statistic is a float64 sum with ``dist_reduce_fx="sum"``: each DDP rank may see a
shard and ``compute()`` returns the global value. Feature networks are injectable (any
``nn.Module``); the default ones read their weights from local files (``$TORCH_HOME/hub/
checkpoints`` or an explicit path) and download only when asked; a missing file raises
:class:`MissingWeightsError` with its name, size and folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance

from samam.nn.samam import check_switches

log = logging.getLogger(__name__)

METRIC_NAMES = ("artfid", "fid_art", "lpips", "cfsd", "fid_tf")

# The other keys of eval.py's results.json and the other val/<key> logged in training (the
# eval-metrics callback's own, StyleTransferModule's losses): a metric of one's own (metrics.extra)
# under one of these names would overwrite that value, or be overwritten by it, without a word.
RESERVED_NAMES = frozenset(
    {
        *("null_reasons", "metric_networks", "protocol", "protocol_deviations", "warning"),
        *("ckpt_path", "checkpoint_step", "checkpoint_code", "code", "model", "scan_backend"),
        *("device", "precision", "ms_per_image", "gmacs", "params", "peak_mem_mib"),
        *("gmacs_breakdown", "bench", "elapsed_s"),
        *("eval_seconds", "samples"),
        *("loss", "loss_content", "loss_style", "loss_id1", "loss_id2"),
    }
)

# ---------------------------------------------------------------------------------------
# Weight files
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFile:
    """A pretrained file a metric needs: its usual name, source and approximate size;
    ``sha256``: the start of the published file's digest, where known (torchvision's names
    carry it, and torchvision checks it on download)."""

    name: str
    url: str
    size: str
    used_by: str
    sha256: str | None = None


ART_INCEPTION = WeightFile(
    "art_inception.pth",
    "https://huggingface.co/matthias-wright/art_inception/resolve/main/art_inception.pth",
    "~90-100 MB",
    "fid_art / artfid (ArtFID's art-trained Inception-v3)",
)
TF_INCEPTION = WeightFile(
    "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "~91 MB",
    "fid_tf (torch-fidelity's TF-Inception)",
)
ALEXNET = WeightFile(
    "alexnet-owt-7be5be79.pth",
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "~233 MB",
    "lpips (AlexNet backbone; the linear heads ship with the lpips package)",
    sha256="7be5be79",
)
VGG19 = WeightFile(
    "vgg19-dcbb9e9d.pth",
    "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "~548 MB",
    "cfsd (VGG-19 ImageNet, relu3_1)",
    sha256="dcbb9e9d",
)


class MissingWeightsError(FileNotFoundError):
    """A metric's pretrained weight file is absent (and was not, or could not be, downloaded).
    ``build_metrics`` raises one for all missing files: ``others`` are the rest."""

    others: list[MissingWeightsError]

    def __init__(self, spec: WeightFile, looked_at: Path, cause: BaseException | None = None):
        folder = hub_checkpoint_dir()
        msg = (
            f"{spec.used_by} needs {spec.name} ({spec.size}); not found at {looked_at}.\n"
            f"  Put the file in {folder}/ (that is $TORCH_HOME/hub/checkpoints), or give its path in the "
            f"metric's `weights:` config entry, or disable the metric (`enabled: false`).\n"
            f"  Source: {spec.url}"
        )
        if cause is not None:
            msg += f"\n  Download failed: {type(cause).__name__}: {cause}"
        super().__init__(msg)
        self.spec = spec
        self.others = []

    def __str__(self) -> str:
        parts = [super().__str__(), *(FileNotFoundError.__str__(e) for e in self.others)]
        head = f"{len(parts)} metric weight files are missing:\n" if len(parts) > 1 else ""
        return head + "\n".join(parts)


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where torchvision/torch-fidelity cache their weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(spec: WeightFile, path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The local file for ``spec``: ``path`` if given (never downloaded), else the hub cache,
    downloading there only when ``download`` is true."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        raise MissingWeightsError(spec, p)
    p = hub_checkpoint_dir() / spec.name
    if p.is_file():
        return p
    if download:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            # download_url_to_file writes a temp file and renames it: no half-written weights.
            torch.hub.download_url_to_file(spec.url, str(p), progress=True)
            return p
        except Exception as err:  # any network/IO failure is reported with the fix
            raise MissingWeightsError(spec, p, cause=err) from err
    raise MissingWeightsError(spec, p)


def unreadable_weights(spec: WeightFile, path: Path, err: BaseException) -> ValueError:
    """The error for a weight file that is there but does not load (a truncated or failed
    download, a web page saved under its name): torch's own message names neither file nor metric."""
    text = str(err).strip()
    first = text.splitlines()[0][:200] if text else ""
    return ValueError(
        f"{spec.used_by}: {path} ({path.stat().st_size:,} bytes) does not load as {spec.name} "
        f"({spec.size}); a truncated or failed download? Replace it with the file from {spec.url}\n"
        f"  {type(err).__name__}: {first}"
    )


def load_weights(spec: WeightFile, path: Path) -> Any:
    """``torch.load`` of ``spec``'s file at ``path`` (tensors only), naming it if it does not load."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # RuntimeError, UnpicklingError, EOFError …: none names the file
        raise unreadable_weights(spec, path, err) from err


NOT_PUBLISHED = "NOT the published"  # weights_record's mark, read by StyleTransferMetrics.unpublished


def weights_record(spec: WeightFile, path: Path) -> str:
    """Which file a metric's network was read from, for results: its path and sha256, and a
    warning where the published file's digest is known and this one differs (a stand-in, another
    network's weights under its name): the values are then not the published metric's."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    text = f"weights {path} (sha256 {digest.hexdigest()[:16]})"
    if spec.sha256 is not None and not digest.hexdigest().startswith(spec.sha256):
        text += f", {NOT_PUBLISHED} {spec.name} (sha256 {spec.sha256}…)"
        log.warning("%s: %s", spec.used_by, text)
    return text


def _unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
    """A state dict from a file that may wrap it (``{"state_dict": ...}``, ``{"model": ...}``)."""
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict, got {type(obj).__name__}")
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    for prefix in ("module.", "model.", "net.", "inception."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


# ---------------------------------------------------------------------------------------
# Feature networks
# ---------------------------------------------------------------------------------------

# torchvision Inception3 children in forward order, up to the 2048-d pool.
_INCEPTION_BLOCKS = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
    "avgpool",
)


def short_side_size(h: int, w: int, n: int) -> tuple[int, int]:
    """(H, W) after torchvision's ``Resize(n)``: the shorter side n, the longer int(n · long / short)."""
    return (n, max(1, int(n * w / h))) if h <= w else (max(1, int(n * h / w)), n)


def resize_as_pil(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, 3, H, W) in [0, 1] → (B, 3, *size) as torchvision's ``Resize`` makes it from an image
    file (the reference's ``Resize(512)`` on a PIL image): PIL's bilinear filter on 8-bit pixels,
    which rounds to uint8 after each of its two passes. A float resize (even antialiased) differs
    from it by up to one grey level in most pixels. ``x`` is quantised first (exact for pixels
    read from a file or a saved PNG)."""
    from PIL import Image

    out = []
    for img in to_uint8(x).permute(0, 2, 3, 1).cpu().numpy():  # (H, W, 3) uint8 each
        resized = Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(resized).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).contiguous().to(x.device).float().div_(255)


def resize_short_side(x: Tensor, n: int | None) -> Tensor:
    """(B, 3, H, W) resized by :func:`resize_as_pil` so its shorter side is ``n``; as it is for
    ``None`` or when it already has that size."""
    if n is None:
        return x
    size = short_side_size(*x.shape[-2:], n)
    return x if size == tuple(x.shape[-2:]) else resize_as_pil(x, size)


class ArtInceptionFeatures(nn.Module):
    """ArtFID's art-trained Inception-v3 as a feature extractor: (B, 3, H, W) in [0, 1] → (B, 2048).

    Architecture: torchvision's ``Inception3`` (BasicConv2d = conv without bias + BN eps 1e-3),
    without the aux heads and the classifiers. Preprocessing as the reference (ArtFID's
    ``get_activations``: ``ToTensor()`` only, ``transform_input=False``; StyleID's
    ``eval_artfid.py``: ``Resize(512)`` first): the image is resized so its shorter side is
    ``short_side`` (SPEC §6; exactly as torchvision's ``Resize`` on the decoded file: PIL
    bilinear on 8-bit pixels, longer side truncated, see :func:`resize_as_pil`; ``None`` keeps
    the size) and goes into the network as it is: pixels in [0, 1], no resize to 299, no
    rescaling to [−1, 1]. Global pooling makes any size ≥ 75 px work.

    Key layout of ``art_inception.pth``: torchvision's, e.g. ``Conv2d_1a_3x3.conv.weight``,
    ``Conv2d_1a_3x3.bn.{weight,bias,running_mean,running_var}``, ``Mixed_5b.branch1x1.conv.weight``
    … ``Mixed_7c.branch_pool.bn.running_var``; the file's two classifiers and two aux heads
    (``fc1``, ``fc2``, ``AuxLogits1``, ``AuxLogits2``) are ignored; see
    :func:`load_art_inception_state`.
    """

    num_features = 2048
    min_side = 75  # the smallest input whose last block still has a spatial position

    def __init__(self, short_side: int | None = 512):
        super().__init__()
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        del net.fc, net.dropout  # features only
        self.net = net
        if short_side is not None and short_side < self.min_side:
            raise ValueError(
                f"art Inception: short_side={short_side} is below its {self.min_side}-px minimum; "
                "set metrics.fid_art.short_side (512 in the protocol) or null (keep the size)"
            )
        self.short_side = short_side
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> ArtInceptionFeatures:
        return super().train(False)  # BN must use the running statistics

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()  # (B, 3, H, W) in [0, 1]
        x = resize_short_side(x, self.short_side)
        if min(x.shape[-2:]) < self.min_side:
            raise ValueError(
                f"art Inception: input {tuple(x.shape[-2:])} is below its {self.min_side}-px minimum; "
                "set metrics.fid_art.short_side (512 in the protocol)"
            )
        for name in _INCEPTION_BLOCKS:
            x = getattr(self.net, name)(x)
        return x.flatten(1)  # (B, 2048)


def load_art_inception_state(model: ArtInceptionFeatures, state: Mapping[str, Any]) -> list[str]:
    """Load ``art_inception.pth`` content into ``model``; return the keys deliberately ignored.

    Tolerates a wrapping dict (``state_dict``/``model``), a common key prefix (``module.`` …),
    classifiers of any size (``fc.*``, ``fc1.*``, ``fc2.*``), aux heads (``AuxLogits*.*``) and
    absent ``num_batches_tracked``.
    Every backbone tensor must be present with the right shape, else ``ValueError`` lists
    the missing and mismatched keys. Other extra keys are logged, not loaded.
    """
    sd = _unwrap_state_dict(state)
    own = model.net.state_dict()
    ignored = sorted(k for k in sd if re.match(r"(fc\d*|AuxLogits\d*)\.", k))
    extra = sorted(k for k in sd if k not in own and k not in ignored)
    missing = sorted(k for k in own if k not in sd and not k.endswith("num_batches_tracked"))
    wrong = sorted(
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    )
    if missing or wrong:
        lines = [
            f"art_inception.pth does not fit torchvision's Inception-v3 layout "
            f"({len(missing)} missing, {len(wrong)} shape mismatches, {len(extra)} unknown keys). "
            f"Expected keys like 'Conv2d_1a_3x3.conv.weight' … 'Mixed_7c.branch_pool.bn.running_var'."
        ]
        lines += [f"  missing: {k}" for k in missing[:40]] + (
            [f"  … {len(missing) - 40} more"] if len(missing) > 40 else []
        )
        lines += [f"  shape mismatch: {w}" for w in wrong[:40]]
        lines += [f"  unknown key in file: {k}" for k in extra[:20]]
        raise ValueError("\n".join(lines))
    if extra:
        log.warning("art_inception.pth: %d keys not used by Inception-v3 (e.g. %s)", len(extra), extra[:5])
    model.net.load_state_dict({k: sd[k] for k in own if k in sd}, strict=False)
    return ignored


def art_inception(
    weights: str | os.PathLike | None = None, download: bool = False, short_side: int | None = 512
) -> ArtInceptionFeatures:
    """:class:`ArtInceptionFeatures` with ``art_inception.pth`` loaded."""
    path = resolve_weights(ART_INCEPTION, weights, download)
    model = ArtInceptionFeatures(short_side=short_side)
    ignored = load_art_inception_state(model, load_weights(ART_INCEPTION, path))
    log.info("fid_art: loaded %s (ignored %d classifier keys)", path, len(ignored))
    model.weights_file = path
    return model


def tf_inception(weights: str | os.PathLike | None = None, download: bool = False) -> nn.Module:
    """torch-fidelity's TF-Inception (uint8 (B, 3, H, W) → (B, 2048)) with the reference
    TF1-style bilinear resize to 299 (torchmetrics' ``antialias=False``)."""
    path = resolve_weights(TF_INCEPTION, weights, download)
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:  # torch-fidelity loads the file itself
        net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(path),
            antialias=False,
        )
    # A truncated file, not a torch file, or another network's weights.
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise unreadable_weights(TF_INCEPTION, path, err) from err
    net.weights_file = path
    return net


def lpips_alexnet(
    weights: str | os.PathLike | None = None, download: bool = False, pnet_rand: bool = False
) -> nn.Module:
    """``lpips.LPIPS(net="alex", version="0.1")``: (x, y) in [-1, 1] → (B, 1, 1, 1).

    The linear heads come with the lpips package; the AlexNet backbone is read from
    ``alexnet-owt-7be5be79.pth`` here (lpips would download it). ``pnet_rand=True`` keeps a
    random backbone: tests only, the values mean nothing.
    """
    import lpips

    # A fixed seed (the caller's RNG untouched): the random test backbone is the same every run.
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)  # torchvision's notice for lpips' `pretrained=False`
        torch.manual_seed(0)
        net = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    if not pnet_rand:
        path = resolve_weights(ALEXNET, weights, download)
        sd = _unwrap_state_dict(load_weights(ALEXNET, path))
        # lpips keeps torchvision's layer index inside each slice: features.{i} ↔ slice*.{i}.
        backbone = {}
        for name, _ in net.net.named_parameters():
            _slice, idx, kind = name.split(".")
            backbone[name] = f"features.{idx}.{kind}"
        missing = [src for src in backbone.values() if src not in sd]
        if missing:
            raise ValueError(f"{path} is not torchvision's AlexNet state dict: missing {missing}")
        net.net.load_state_dict({dst: sd[src] for dst, src in backbone.items()}, strict=True)
        net.weights_file = path
    return net.eval().requires_grad_(False)


class VGG19Relu31(nn.Module):
    """VGG-19 (ImageNet) up to relu3_1: (B, 3, H, W) in [0, 1] → (B, 256, H/4, W/4).

    Layers keep torchvision's ``features.{i}`` indices, so its state dict loads as is."""

    def __init__(self):
        super().__init__()
        conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1)  # noqa: E731
        relu, pool = nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)
        self.features = nn.Sequential(
            conv(3, 64), relu, conv(64, 64), relu, pool,  # 0..4
            conv(64, 128), relu, conv(128, 128), relu, pool,  # 5..9
            conv(128, 256), relu,  # 10, 11 = relu3_1
        )  # fmt: skip
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.features((x.float() - self.mean) / self.std)


def vgg19_relu31(weights: str | os.PathLike | None = None, download: bool = False) -> VGG19Relu31:
    """:class:`VGG19Relu31` with torchvision's ``vgg19-dcbb9e9d.pth`` loaded."""
    path = resolve_weights(VGG19, weights, download)
    sd = _unwrap_state_dict(load_weights(VGG19, path))
    model = VGG19Relu31()
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise ValueError(f"{path} is not torchvision's VGG-19 state dict: missing {missing}")
    model.load_state_dict({k: sd[k] for k in own})
    model.weights_file = path
    return model


class RandomFeatures(nn.Module):
    """TEST ONLY: a fixed random 2-layer conv net standing in for a pretrained extractor.

    (B, 3, H, W) in [0, 1] or uint8 → (B, dim), or (B, dim, H/4, W/4) when ``spatial``.
    Values computed with it are meaningless; it exists so the plumbing runs offline."""

    def __init__(self, dim: int = 32, spatial: bool = False, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, dim, 3, stride=2, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.num_features, self.spatial = dim, spatial
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        y = self.conv2(F.relu(self.conv1(x)))
        return y if self.spatial else y.mean((2, 3))


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) in float64; tr((Σ1Σ2)^½) = Σ √eig(Σ1Σ2)."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    # Σ1Σ2 is similar to a PSD matrix, so its eigenvalues are real and ≥ 0 up to round-off;
    # the complex sqrt keeps round-off negatives from becoming NaN (their real part is ~0).
    tr_covmean = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * tr_covmean


class _Sized(nn.Module):
    """Wraps an extractor so it always returns (N, d) and announces d to torchmetrics."""

    def __init__(self, net: nn.Module, num_features: int):
        super().__init__()
        self.net, self.num_features = net, num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).reshape(x.shape[0], -1)


class FrechetDistance(FrechetInceptionDistance):
    """FID between the "real" (style) and "fake" (stylised) sets on any feature extractor.

    ``update(images, real=...)`` passes the images to ``extractor`` unchanged (uint8 for
    TF-Inception, float [0, 1] for the art Inception); sums in float64; ``compute()``
    returns a float64 scalar (torchmetrics casts back to the feature dtype), NaN while either
    set has fewer than 2 samples (counted over every rank), with the reason in ``shortfall``."""

    def __init__(
        self,
        extractor: nn.Module,
        num_features: int | None = None,
        reset_real_features: bool = True,
        **kwargs: Any,
    ):
        num_features = num_features if num_features is not None else getattr(extractor, "num_features", None)
        if not isinstance(num_features, int):
            raise ValueError("pass num_features= (the extractor has no int `num_features` attribute)")
        super().__init__(
            feature=_Sized(extractor, num_features),
            reset_real_features=reset_real_features,
            normalize=False,
            **kwargs,
        )
        self.shortfall: str | None = None  # why the last compute() gave NaN

    def update(self, imgs: Tensor, real: bool, weight: int = 1) -> None:
        """Add the images' features to the real or fake statistics, each counted ``weight``
        times: the protocol's reference set holds every style once per content image (StyleID
        copies the files; here their features are weighted, not extracted again)."""
        if weight < 1:
            raise ValueError(f"weight must be ≥ 1, got {weight}")
        features = self.inception(imgs).double()  # (B, F)
        if features.dim() == 1:
            features = features.unsqueeze(0)
        total, outer, n = (
            weight * features.sum(0),
            weight * features.t().mm(features),
            weight * features.shape[0],
        )
        if real:
            self.real_features_sum += total
            self.real_features_cov_sum += outer
            self.real_features_num_samples += n
        else:
            self.fake_features_sum += total
            self.fake_features_cov_sum += outer
            self.fake_features_num_samples += n

    def compute(self) -> Tensor:
        # The states are synced here, so every rank takes the same branch.
        n_r, n_f = self.real_features_num_samples, self.fake_features_num_samples
        self.shortfall = None
        if n_r < 2 or n_f < 2:
            self.shortfall = (
                f"FID needs at least 2 reference and 2 stylised images, got {int(n_r)} and {int(n_f)}"
            )
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.real_features_sum.device)
        mu_r = self.real_features_sum / n_r
        mu_f = self.fake_features_sum / n_f
        cov_r = (self.real_features_cov_sum - n_r * torch.outer(mu_r, mu_r)) / (n_r - 1)
        cov_f = (self.fake_features_cov_sum - n_f * torch.outer(mu_f, mu_f)) / (n_f - 1)
        return frechet_distance(mu_f, cov_f, mu_r, cov_r)


class LPIPSDistance(Metric):
    """Mean LPIPS between outputs and their content images; inputs (B, 3, H, W) in [0, 1].

    As StyleID's ``eval_artfid.py`` (``Compose([Resize(512), ToTensor()])`` on both files), each
    image is first resized so its shorter side is ``short_side`` (:func:`resize_as_pil`; 512 in
    the protocol and in :func:`build_metrics`, a no-op for 512² images; ``None`` keeps the size):
    LPIPS depends on the resolution."""

    higher_is_better = False
    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self, net: nn.Module, short_side: int | None = None, **kwargs: Any):
        """``net(x, y)`` with x, y in [-1, 1] → per-image distances (B,) or (B, 1, 1, 1)."""
        super().__init__(**kwargs)
        self.net = net.eval().requires_grad_(False)
        if short_side is not None and short_side < 1:
            raise ValueError(
                f"metrics.lpips.short_side must be ≥ 1 px or null (keep the size), got {short_side}"
            )
        self.short_side = short_side
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, output: Tensor, content: Tensor) -> None:
        output, content = (
            resize_short_side(output, self.short_side),
            resize_short_side(content, self.short_side),
        )
        d = self.net(2 * output.float() - 1, 2 * content.float() - 1)  # (B,) or (B, 1, 1, 1)
        d = d.reshape(output.shape[0], -1).mean(1)
        self.total += d.double().sum()
        self.count += output.shape[0]

    def compute(self) -> Tensor:
        return self.total / self.count


def check_block_rows(block_rows: int | None) -> None:
    """Fewer than 1 row per block would sum no rows at all: CFSD 0 for any pair."""
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"metrics.cfsd.block_rows must be ≥ 1 or null (all rows at once), got {block_rows}")


def cfsd_per_image(f_content: Tensor, f_output: Tensor, block_rows: int | None = 1024) -> Tensor:
    """CFSD of each image pair from feature maps (B, C, h, w) → (B,) float64.

    F: (L, C) tokens scaled by 1/C (StyleID's CFSD); S = F Fᵀ (L, L); CFSD = Σ_rows
    KL(softmax(S_content[i]) ‖ softmax(S_output[i])). Each row is softmaxed over all L
    columns, so ``block_rows`` rows at a time give exactly the full result while holding
    only (block_rows, L) per image (512² images: L = 128², a full S would be 2 GiB in fp64).
    """
    check_block_rows(block_rows)
    if f_content.shape != f_output.shape:
        raise ValueError(f"feature shapes differ: {tuple(f_content.shape)} vs {tuple(f_output.shape)}")
    b, c = f_content.shape[:2]
    out = torch.zeros(b, dtype=torch.float64, device=f_content.device)
    for i in range(b):
        fc = f_content[i].flatten(1).t().double() / c  # (L, C)
        fo = f_output[i].flatten(1).t().double() / c
        n = fc.shape[0]
        step = n if block_rows is None else block_rows
        for s in range(0, n, step):
            log_p = torch.log_softmax(fc[s : s + step] @ fc.t(), dim=-1)  # (rows, L)
            log_q = torch.log_softmax(fo[s : s + step] @ fo.t(), dim=-1)
            out[i] += (log_p.exp() * (log_p - log_q)).sum()
    return out


class CFSD(Metric):
    """Mean CFSD between outputs and their content images; inputs (B, 3, H, W) in [0, 1]."""

    higher_is_better = False
    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self, extractor: nn.Module, block_rows: int | None = 1024, **kwargs: Any):
        """``extractor``: (B, 3, H, W) in [0, 1] → feature maps (B, C, h, w) (VGG-19 relu3_1)."""
        super().__init__(**kwargs)
        self.extractor = extractor.eval().requires_grad_(False)
        check_block_rows(block_rows)  # here, not at the first image
        self.block_rows = block_rows
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, output: Tensor, content: Tensor) -> None:
        feats = self.extractor(torch.cat([content, output]).float())  # (2B, C, h, w)
        f_c, f_o = feats.chunk(2)
        self.total += cfsd_per_image(f_c, f_o, self.block_rows).sum()
        self.count += output.shape[0]

    def compute(self) -> Tensor:
        return self.total / self.count


def artfid(lpips: float | Tensor, fid_art: float | Tensor) -> float | Tensor:
    """ArtFID = (1 + LPIPS)·(1 + FID_art) (Wright & Ommer 2022)."""
    return (1 + lpips) * (1 + fid_art)


def to_uint8(x: Tensor) -> Tensor:
    """[0, 1] float → uint8, exactly what a saved PNG holds: halves round up, as
    torchvision's ``save_image`` (the release's writer) does, not to even."""
    return x.detach().float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------
# The set used by eval.py and the callback
# ---------------------------------------------------------------------------------------


class StyleTransferMetrics(nn.Module):
    """Every metric of the protocol behind one interface; disabled ones report ``None``.

    ``update_style(style, weight)`` feeds the reference (style) set of both FIDs: each style
    image once, ``weight`` = how many stylised images were made with it (the protocol's
    reference set repeats each style once per content image); ``update(output, content)``
    feeds each stylised image with its content. Images
    are (B, 3, H, W) in [0, 1]; the TF-Inception FID gets them quantised to uint8. ``extra``:
    metrics of one's own by name, each a torchmetrics Metric fed ``update(output, content)``;
    ``higher_is_better``: their direction where their class leaves it None (the protocol's
    metrics are all lower-is-better).
    """

    def __init__(
        self,
        fid_art: FrechetDistance | None = None,
        fid_tf: FrechetDistance | None = None,
        lpips: LPIPSDistance | None = None,
        cfsd: CFSD | None = None,
        reasons: Mapping[str, str] | None = None,
        networks: Mapping[str, str] | None = None,
        extra: Mapping[str, Metric] | None = None,
        higher_is_better: Mapping[str, bool] | None = None,
    ):
        super().__init__()
        self.fid_art, self.fid_tf, self.lpips, self.cfsd = fid_art, fid_tf, lpips, cfsd
        self.extra = nn.ModuleDict(dict(extra or {}))  # a module: moves with .to(device)
        # metric → whether a higher value is better (None: unknown); ranks checkpoints
        self.higher_is_better: dict[str, bool | None] = {n: False for n in METRIC_NAMES}
        self.higher_is_better.update({n: m.higher_is_better for n, m in self.extra.items()})
        self.higher_is_better.update(higher_is_better or {})
        self.reasons = dict(reasons or {})  # metric → why it is None (disabled)
        self.null_reasons = dict(self.reasons)  # after compute(): also FIDs short of images
        self.networks = dict(networks or {})  # metric → which feature network computed it
        for name in ("fid_art", "fid_tf", "lpips", "cfsd"):
            if getattr(self, name) is None:
                self.reasons.setdefault(name, "disabled")
        if fid_art is None or lpips is None:
            self.reasons["artfid"] = "needs fid_art and lpips: " + ", ".join(
                f"{n} {self.reasons[n]}" for n in ("fid_art", "lpips") if n in self.reasons
            )

    @property
    def enabled(self) -> list[str]:
        return [n for n in METRIC_NAMES if n not in self.reasons] + list(self.extra)

    @property
    def stand_ins(self) -> list[str]:
        """The metrics computed by random stand-in networks (test_extractors, lpips.pnet_rand):
        their values mean nothing."""
        return [name for name, net in self.networks.items() if "TEST ONLY" in net]

    @property
    def unpublished(self) -> list[str]:
        """The metrics whose network read a weight file that is not the published one
        (:func:`weights_record`): their values are not the published metric's."""
        return [name for name, net in self.networks.items() if NOT_PUBLISHED in net]

    @property
    def min_side(self) -> int:
        """Smallest image side every enabled metric accepts: LPIPS's AlexNet pools a 30-px side
        to nothing, CFSD's relu3_1 needs 4 px, the art Inception 75 px when it keeps the size
        (``short_side`` null; fid_tf always resizes to 299)."""
        return max(31 if self.lpips is not None else 4, self.min_style_side)

    @property
    def min_style_side(self) -> int:
        """Smallest style image side: styles reach only the FIDs' reference sets, as they are, and
        only the art Inception keeping the size (``short_side`` null) has a minimum, 75 px."""
        if self.fid_art is not None:
            extractor = self.fid_art.inception.net  # inside FrechetDistance's _Sized
            if getattr(extractor, "short_side", 0) is None:
                return extractor.min_side
        return 1

    @torch.no_grad()
    def update_style(self, style: Tensor, weight: int = 1) -> None:
        if self.fid_art is not None:
            self.fid_art.update(style.float(), real=True, weight=weight)
        if self.fid_tf is not None:
            self.fid_tf.update(to_uint8(style), real=True, weight=weight)

    @torch.no_grad()
    def update(self, output: Tensor, content: Tensor) -> None:
        output, content = output.float(), content.float()
        if self.fid_art is not None:
            self.fid_art.update(output, real=False)
        if self.fid_tf is not None:
            self.fid_tf.update(to_uint8(output), real=False)
        if self.lpips is not None:
            self.lpips.update(output, content)
        if self.cfsd is not None:
            self.cfsd.update(output, content)
        for metric in self.extra.values():
            metric.update(output, content)

    def compute(self) -> dict[str, float | None]:
        """Every name of :data:`METRIC_NAMES` → value (float) or None, then each extra metric's
        value; ``null_reasons`` then says why each None is None (disabled, too few images for
        a FID, an extra metric whose compute() is not one number)."""
        res: dict[str, float | None] = {n: None for n in METRIC_NAMES}
        why = {n: self.reasons[n] for n in METRIC_NAMES if n in self.reasons}
        for name in ("fid_art", "fid_tf", "lpips", "cfsd"):
            metric = getattr(self, name)
            if metric is not None:
                value = float(metric.compute())
                if getattr(metric, "shortfall", None):
                    why[name] = metric.shortfall
                else:
                    res[name] = value
        if res["fid_art"] is not None and res["lpips"] is not None:
            res["artfid"] = float(artfid(res["lpips"], res["fid_art"]))
        elif "artfid" not in why:
            why["artfid"] = f"needs fid_art: {why['fid_art']}"
        for name, metric in self.extra.items():
            value = metric.compute()
            try:
                res[name] = float(value)
            except (TypeError, ValueError, RuntimeError):  # a dict, a tensor of several values, …
                # Raised here, it would lose every other value after the whole stylisation.
                shape = tuple(value.shape) if isinstance(value, Tensor) else ""
                why[name] = (
                    f"{type(metric).__name__}.compute() gave a {type(value).__name__}{shape}, not one number"
                )
                res[name] = None
                log.warning("metrics.extra.%s is null: %s", name, why[name])
        self.null_reasons = why
        return res

    def reset(self) -> None:
        """Clear the stylised-image statistics; FIDs built with ``reset_real_features=False``
        keep their style statistics."""
        for name in ("fid_art", "fid_tf", "lpips", "cfsd"):
            metric = getattr(self, name)
            if metric is not None:
                metric.reset()
        for metric in self.extra.values():
            metric.reset()


def opt(cfg: Mapping[str, Any] | None, key: str, default: Any) -> Any:
    """``cfg[key]``; ``default`` when the key is absent or null."""
    return default if cfg is None or cfg.get(key) is None else cfg[key]


def opt_null(cfg: Mapping[str, Any] | None, key: str, default: Any) -> Any:
    """``cfg[key]``, null included (where null means something: keep the size, all rows);
    ``default`` only when the key is absent."""
    return default if cfg is None or key not in cfg else cfg[key]


def refuse_unknown_settings(section: str, cfg: Mapping[str, Any] | None, known: Sequence[str]) -> None:
    """A setting ``section`` does not have (``+metrics.lpips.enabeld=false``, ``+bench.repeat=3``)
    would be silently ignored: refuse it, naming the ones it has."""
    unknown = sorted(set(cfg or {}) - set(known))
    if unknown:
        raise ValueError(f"{section}: no setting {', '.join(unknown)} (it has: {', '.join(known)})")


SPECS = {"fid_art": ART_INCEPTION, "fid_tf": TF_INCEPTION, "lpips": ALEXNET, "cfsd": VGG19}

METRIC_OPTIONS = {  # each metric's settings besides enabled and weights
    "fid_art": ("short_side",),
    "fid_tf": (),
    "lpips": ("short_side", "pnet_rand"),
    "cfsd": ("block_rows",),
}


def _seen_at(short_side: int | None) -> str:
    """The size a metric's network sees, for results files: the protocol's is a 512 shorter side
    (SPEC §6), and another gives other values that must not pass for the protocol's."""
    return "each image at its own size" if short_side is None else f"images at a {short_side}-px shorter side"


def build_metrics(
    fid_art: Mapping[str, Any] | None = None,
    fid_tf: Mapping[str, Any] | None = None,
    lpips: Mapping[str, Any] | None = None,
    cfsd: Mapping[str, Any] | None = None,
    download: bool = False,
    test_extractors: bool = False,
    reset_style: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> StyleTransferMetrics:
    """The protocol's metrics from config entries ``{enabled, weights, ...}`` (missing entry =
    enabled with default weights). A missing weight file raises :class:`MissingWeightsError`
    here, before any image is stylised.

    ``test_extractors=True`` (TEST ONLY) swaps every pretrained network for a small fixed
    random one (:class:`RandomFeatures`; LPIPS keeps AlexNet with a random backbone): the
    numbers are meaningless and ``networks`` says so.

    ``extra``: metrics of one's own, name → a torchmetrics Metric or its config
    (``{_target_: package.module.Class, ...}``, built here), scored as
    ``update(output, content)`` (both (B, 3, H, W) in [0, 1]) and ``compute()`` → one number.
    A config's ``higher_is_better: true|false`` states the direction of a Metric whose class
    leaves it None (needed to rank checkpoints by it).
    """
    reasons: dict[str, str] = {}
    networks: dict[str, str] = {}
    extras, better = _build_extra(extra or {})
    networks.update({name: f"{type(m).__module__}.{type(m).__qualname__}" for name, m in extras.items()})
    built: dict[str, Metric | None] = {}
    cfgs = {"fid_art": fid_art, "fid_tf": fid_tf, "lpips": lpips, "cfsd": cfsd}
    test_note = "TEST ONLY random network (test_extractors=true): value is meaningless"
    missing: list[MissingWeightsError] = []
    for name, cfg in cfgs.items():
        refuse_unknown_settings(f"metrics.{name}", cfg, ["enabled", "weights", *METRIC_OPTIONS[name]])
    check_switches(
        {
            "metrics.download": download,
            "metrics.test_extractors": test_extractors,
            **{
                f"metrics.{name}.{key}": cfg[key]
                for name, cfg in cfgs.items()
                for key in ("enabled", "pnet_rand")
                if opt(cfg, key, None) is not None
            },
        }
    )
    for name, cfg in cfgs.items():
        if not opt(cfg, "enabled", True):
            reasons[name] = f"disabled in config (metrics.{name}.enabled=false)"
            built[name] = None
            continue
        try:
            weights = opt(cfg, "weights", None)
            if name == "fid_art":
                if test_extractors:
                    net, networks[name] = RandomFeatures(32, seed=1), test_note
                else:
                    side = opt_null(cfg, "short_side", 512)
                    net = art_inception(weights, download, short_side=side)
                    networks[name] = (
                        f"art-trained Inception-v3 ({ART_INCEPTION.name}), pool3 2048-d, {_seen_at(side)}"
                    )
                built[name] = FrechetDistance(net, reset_real_features=reset_style)
            elif name == "fid_tf":
                if test_extractors:
                    net, networks[name] = RandomFeatures(32, seed=2), test_note
                    built[name] = FrechetDistance(net, reset_real_features=reset_style)
                else:
                    net = tf_inception(weights, download)
                    networks[name] = f"torch-fidelity TF-Inception ({TF_INCEPTION.name}), uint8, TF1 resize"
                    built[name] = FrechetDistance(net, num_features=2048, reset_real_features=reset_style)
            elif name == "lpips":
                rand = test_extractors or bool(opt(cfg, "pnet_rand", False))
                net = lpips_alexnet(weights, download, pnet_rand=rand)
                side = opt_null(cfg, "short_side", 512)
                built[name] = LPIPSDistance(net, short_side=side)
                networks[name] = (
                    test_note if rand else f"LPIPS v0.1 AlexNet ({ALEXNET.name}), {_seen_at(side)}"
                )
            else:
                if test_extractors:
                    net, networks[name] = RandomFeatures(16, spatial=True, seed=3), test_note
                else:
                    net = vgg19_relu31(weights, download)
                    networks[name] = f"VGG-19 ImageNet relu3_1 ({VGG19.name})"
                built[name] = CFSD(net, block_rows=opt_null(cfg, "block_rows", 1024))
            file = getattr(net, "weights_file", None)
            if file is not None:
                networks[name] += "; " + weights_record(SPECS[name], file)
        except MissingWeightsError as err:  # collect them all: one error names every missing file
            missing.append(err)
    if missing:
        missing[0].others = missing[1:]
        raise missing[0]
    return StyleTransferMetrics(
        **built, reasons=reasons, networks=networks, extra=extras, higher_is_better=better
    )


def _build_extra(extra: Mapping[str, Any]) -> tuple[dict[str, Metric], dict[str, bool]]:
    """``build_metrics``' extra metrics, each built and checked to be a torchmetrics Metric (whose
    states sum across DDP ranks) under a name of its own, and the directions their configs state."""
    built, directions = {}, {}
    for name, spec in extra.items():
        where = f"metrics.extra.{name}"
        if not (isinstance(name, str) and name.isidentifier()) or name in METRIC_NAMES:
            raise ValueError(f"{where}: an extra metric needs a name of its own, not one of {METRIC_NAMES}")
        if name in RESERVED_NAMES:
            raise ValueError(
                f"{where}: an extra metric needs a name of its own: {name!r} is already a key of "
                f"results.json or a logged val/{name}; rename it (e.g. metrics.extra.my_{name})"
            )
        better = None  # the config's higher_is_better, for a Metric whose class does not say
        if isinstance(spec, Mapping):
            if "_target_" not in spec:
                raise ValueError(
                    f"{where}: give its class as _target_ (e.g. {where}._target_=my_metrics.MyMetric)"
                )
            better = spec.get("higher_is_better")
            if better is not None and not isinstance(better, bool):
                raise TypeError(f"{where}.higher_is_better must be true or false, got {better!r}")
            from hydra.utils import instantiate  # only here: metrics.py does without Hydra otherwise

            spec = instantiate({k: v for k, v in spec.items() if k != "higher_is_better"})
        if not isinstance(spec, Metric):
            raise TypeError(
                f"{where} is {type(spec).__name__}, not a torchmetrics.Metric: subclass it "
                "(update(output, content) with both (B, 3, H, W) in [0, 1], compute() -> one number)"
            )
        if better is not None:
            if spec.higher_is_better not in (None, better):
                raise ValueError(
                    f"{where}.higher_is_better={better} contradicts {type(spec).__name__}.higher_is_better="
                    f"{spec.higher_is_better}: drop it"
                )
            directions[name] = better  # torchmetrics refuses to set it on the Metric
        built[name] = spec
    return built, directions
