"""The assembled SaMam network (SPEC §1–2). ``SaMam()`` is the released p=8 architecture."""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from samam.nn.blocks import MIXERS, Encoder, Mixer, SAVSSGroup
from samam.nn.decoder import ImageDecoder
from samam.nn.norms import DecoderNorm, norm_class
from samam.nn.style import SCM, StyleEmbedder
from samam.ops.scan_orders import SCAN_NAMES, SCAN_PATH_FORM, scan_builder
from samam.ops.selective_scan import resolve_scan_backend

log = logging.getLogger("samam")

Backend = Literal["auto", "torch", "numba", "mamba"]


def check_switches(switches: Mapping[str, object]) -> None:
    """Refuse a non-bool on/off setting: given as a string on the command line (`model.sconv=off`,
    `match_release=yes`, a typo of false) it is truthy and silently does the other thing."""
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name}={value!r} must be true or false")


# SaMamConfig's numeric fields by their annotation (a string here: postponed annotations) → the
# types they take (numpy's too: a sweep written in Python) and the plain type they are stored as
# (the config travels in checkpoints that load with weights_only, which knows no numpy scalars).
_NUMBER_KINDS: dict[str, tuple[tuple[type, ...], type]] = {
    "int": ((numbers.Integral,), int),
    "int | None": ((numbers.Integral, type(None)), int),
    "float": ((numbers.Real,), float),
}

# Switches of the selective scan that softmax attention does not have: it sees every token at
# once (no scan order) and has no A, D to generate (no S7 vs S6). With mixer="attention" they
# must keep their defaults, so that a sweep over them cannot train one network under several names.
ATTENTION_UNUSED = ("scan", "style_ssm")


@dataclasses.dataclass(frozen=True)
class SaMamConfig:
    """Every constructor argument of :class:`SaMam`; defaults are the released p=8 model."""

    embed_dim: int = 256
    patch_size: int = 8
    encoder_depth: int = 2
    decoder_groups: int = 2
    decoder_depth: int = 2
    d_state: int = 16
    expand: float = 2.0
    dt_rank: int | None = None  # None: ceil(embed_dim / 16)
    style_dim: int = 64
    loe_compress: int = 8
    loe_squeeze: int = 8
    scm_reduction: int = 4
    scan: str = "zigzag"  # one of SCAN_NAMES, or "package.module:function" (scan_orders.scan_builder)
    style_ssm: bool = True
    out_norm: str = "sain"  # one of OUT_NORMS, or "package.module:Class" (norms.norm_class)
    sconv: bool = True
    scm: bool = True
    loe: bool = True
    zero_init: bool = False
    mixer: Mixer = "ssm"
    backend: Backend = "auto"

    def __post_init__(self):
        check_switches({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.type == "bool"})
        # A number of the wrong kind from the command line (model.d_state=4.5, model.patch_size=8.0,
        # model.expand=two) failed deep inside torch ("empty(): argument 'size' ... got float").
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type not in _NUMBER_KINDS:
                continue
            kinds, plain = _NUMBER_KINDS[f.type]
            if isinstance(value, bool) or not isinstance(value, kinds):  # numpy's bool is no Integral
                raise TypeError(
                    f"{f.name}={value!r} must be {'a number' if plain is float else 'an integer'}"
                )
            if type(value) not in (int, float, type(None)):  # np.int64(64) → 64
                object.__setattr__(self, f.name, plain(value))
        choices = {"mixer": MIXERS, "patch_size": (4, 8)}
        if not (isinstance(self.scan, str) and ":" in self.scan):  # an import path: scan_builder checks it
            choices["scan"] = (*SCAN_NAMES, SCAN_PATH_FORM)
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r} is not one of {allowed}")
        norm_class(self.out_norm)  # imported and checked: a wrong path fails here
        scan_builder(self.scan)  # tried on small grids (once per function): a wrong order fails here
        if self.mixer == "attention":
            defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in ATTENTION_UNUSED}
            moved = [f"{k}={getattr(self, k)!r}" for k, d in defaults.items() if getattr(self, k) != d]
            if moved:
                kept = ", ".join(f"{name}={d!r}" for name, d in defaults.items())
                raise ValueError(
                    f"{', '.join(moved)} has no effect with mixer='attention' (attention has no scan "
                    f"order and no A, D to generate): leave {kept} with mixer='attention'; compare "
                    "scan orders or S7 vs S6 with mixer='ssm'"
                )
        if self.embed_dim % 8:
            raise ValueError(
                f"embed_dim must be a multiple of 8 (the image decoder halves it 3 times), got {self.embed_dim}"
            )


class SaMam(nn.Module):
    """Style-aware Mamba for arbitrary style transfer.

    ``net(content, style)``: content (B, 3, H, W) and style (B, 3, h, w) in [0, 1] →
    stylised (B, 3, H, W), no output activation; NaN/Inf and values past ``max_image_value`` (2:
    a 0..255 image) are refused (``check_finite``). Any H, W ≥ 2 × patch size: the content is
    reflect-padded to a multiple of the patch size and the output cropped back. Each sample
    may have its own style; the whole batch runs in one pass, unless its blocks' activations
    (d_inner channels per token, plus SConv's padding) would reach ``max_batch_elements``: then
    the batch runs in chunks of samples (8192² at batch ≥ 4 with p=8), so that no tensor needs
    64-bit index math, which CUDA kernels such as reflection padding refuse. Where one sample
    alone would reach it (8192² with p=4, 16384² with p=8), every block computes its
    d_inner-wide maps in channel parts (``samam.nn.blocks.MAX_BLOCK_ELEMENTS``). Styles are
    embedded in chunks by the same rule, sized by the style images.
    """

    max_batch_elements = 2**31 - 1
    # Refuse NaN/Inf inputs, and images with values past max_image_value (0..255 floats: a
    # forgotten / 255 ran silently into garbage). Reading the values waits for the device:
    # StyleTransferModule turns it off for the images its data module decodes (in [0, 1] by
    # construction), so that a training step never waits for the GPU.
    check_finite = True
    max_image_value = 2.0  # [0, 1] with room for a resize's overshoot; 0..255 images go far past it

    def __init__(self, **kwargs):
        super().__init__()
        cfg = SaMamConfig(**kwargs)
        self.cfg = cfg
        c, p = cfg.embed_dim, cfg.patch_size
        d_inner = self.d_inner = int(cfg.expand * c)
        dt_rank = cfg.dt_rank if cfg.dt_rank is not None else math.ceil(c / 16)
        self.scan_backend = resolve_scan_backend(cfg.backend)
        ss2d = dict(d_state=cfg.d_state, dt_rank=dt_rank, scan_order=cfg.scan, backend=self.scan_backend)
        loe = dict(loe=cfg.loe, loe_compress=cfg.loe_compress, loe_squeeze=cfg.loe_squeeze)
        enc = dict(
            dim=c, patch_size=p, depth=cfg.encoder_depth, d_inner=d_inner, mixer=cfg.mixer, **loe, **ss2d
        )
        self.content_encoder = Encoder(**enc)
        self.style_encoder = Encoder(**enc)
        self.style_embedder = StyleEmbedder(c, cfg.style_dim, n_stages=3 if p == 8 else 4)
        block = dict(
            d_inner=d_inner,
            style_dim=cfg.style_dim,
            style_ssm=cfg.style_ssm,
            out_norm=cfg.out_norm,
            sconv=cfg.sconv,
            scm=cfg.scm,
            scm_reduction=cfg.scm_reduction,
            mixer=cfg.mixer,
            **ss2d,
        )
        self.decoder = nn.ModuleList(
            SAVSSGroup(c, cfg.decoder_depth, **loe, **block) for _ in range(cfg.decoder_groups)
        )
        self.image_decoder = ImageDecoder(c, p)
        if cfg.zero_init:
            self._zero_init_style_embedders()

    @property
    def config(self) -> dict:
        """Constructor arguments as a plain dict: ``SaMam(**net.config)`` rebuilds the network."""
        return dataclasses.asdict(self.cfg)

    def _zero_init_style_embedders(self) -> None:
        """Start every style modulation neutral: SAIN is plain instance norm (γ = 1, β = 0, the
        generators' weights zero), an out-norm of one's own does its ``neutral_init_``, and SCM's
        gate is 0.5 for every style (its last conv zero).

        The release's zero_init zeroes every conv of SAIN and SCM instead. That is a saddle
        training never leaves: with γ = β = 0 in both SAINs of a block, the mixer's input and
        the gradient back into it are both zero, and SCM's two zero convs give each other zero
        gradient. Here every parameter gets a gradient by the second step (a test checks)."""
        for m in self.modules():
            if isinstance(m, DecoderNorm):
                m.neutral_init_()
            elif isinstance(m, SCM):
                nn.init.zeros_(m.up.weight)

    # ---- validation -------------------------------------------------------------------

    def _check_image(self, x: torch.Tensor, name: str, min_side: int) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must be (B, 3, H, W) RGB in [0, 1], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < min_side:
            raise ValueError(
                f"{name} is {x.shape[-2]}x{x.shape[-1]} px; SaMam (patch size {self.cfg.patch_size}) needs at least "
                f"{min_side} px per side"
            )
        self._check_values(x, name, self.max_image_value)

    def _check_values(self, x: torch.Tensor, name: str, max_value: float = math.inf) -> None:
        """Floats of the weights' dtype (or, neither being float64, under autocast), all finite
        and at most ``max_value``."""
        if not x.is_floating_point():
            raise TypeError(f"{name} is {x.dtype}: pass floats in [0, 1] (for uint8 images: x.float() / 255)")
        weights = next(self.content_encoder.parameters()).dtype
        # autocast leaves float64 tensors as they are, so it cannot pair them with other dtypes
        cast = torch.is_autocast_enabled(x.device.type) and torch.float64 not in (x.dtype, weights)
        if x.dtype != weights and not cast:
            fix = (
                "convert it"
                if torch.float64 in (x.dtype, weights)
                else "convert it, or run under torch.autocast"
            )
            raise TypeError(f"{name} is {x.dtype} but the weights are {weights}: {fix}")
        # Reading values syncs with the device: not possible while compiling or capturing a CUDA
        # graph (samam.cuda_graph checks the real inputs before each replay instead).
        # is_compiling first: dynamo would trace the CUDA query (a graph break per check).
        if torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            return
        if not self.check_finite or x.numel() == 0:  # aminmax refuses an empty tensor
            return
        lo, hi = torch.stack(torch.aminmax(x)).tolist()  # one wait for the device; NaN gives NaN
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or Inf values")
        if hi > max_value:
            raise ValueError(
                f"{name} has values up to {hi:.4g}: SaMam takes images in [0, 1] (for 0..255 values: x / 255)"
            )

    @property
    def min_style_side(self) -> int:
        """Smallest style side in px: the style embedder pools the tokens down 2^stages times."""
        return self.cfg.patch_size * self.style_embedder.min_tokens

    def embed_style(self, style: torch.Tensor) -> torch.Tensor:
        """Style image (B, 3, h, w) → style embedding e_s (B, S, 3, 3)."""
        self._check_image(style, "style", self.min_style_side)
        return self._embed(style)

    def _embed(self, style: torch.Tensor) -> torch.Tensor:
        return self._in_chunks(self._embed_chunk, style)

    def _embed_chunk(self, style: torch.Tensor) -> torch.Tensor:
        return self.style_embedder(self.style_encoder(style))

    def _in_chunks(
        self, fn: Callable[..., torch.Tensor], images: torch.Tensor, *rest: torch.Tensor
    ) -> torch.Tensor:
        """fn(images, *rest) over the batch, in chunks of samples when one pass's block
        activations for these images (B, 3, H, W) would reach ``max_batch_elements``."""
        p = self.cfg.patch_size
        h, w = images.shape[-2:]
        per_sample = self.d_inner * (-(-h // p) + 2) * (-(-w // p) + 2)
        chunk = max(1, self.max_batch_elements // per_sample)
        if images.shape[0] <= chunk:
            return fn(images, *rest)
        return torch.cat(
            [fn(*(t[i : i + chunk] for t in (images, *rest))) for i in range(0, images.shape[0], chunk)]
        )

    def check_inputs(
        self,
        content: torch.Tensor,
        style: torch.Tensor | None = None,
        style_embedding: torch.Tensor | None = None,
    ) -> None:
        """Raise the error ``forward`` would raise for these inputs, without running it."""
        if (style is None) == (style_embedding is None):
            raise ValueError("pass exactly one of `style` (images) or `style_embedding` (from embed_style)")
        p = self.cfg.patch_size
        # Reflection padding (SConv, image decoder) needs at least 2 tokens per side.
        self._check_image(content, "content", 2 * p)
        if style is not None:
            self._check_image(style, "style", self.min_style_side)
        else:
            want = (self.cfg.style_dim, 3, 3)
            if not isinstance(style_embedding, torch.Tensor) or tuple(style_embedding.shape[1:]) != want:
                got = (
                    tuple(style_embedding.shape)
                    if isinstance(style_embedding, torch.Tensor)
                    else style_embedding
                )
                raise ValueError(
                    f"style_embedding must be (B, {', '.join(map(str, want))}) from embed_style, got {got}"
                )
            if style_embedding.device != content.device:
                raise ValueError(
                    f"style_embedding is on {style_embedding.device}, content on {content.device}"
                )
            self._check_values(style_embedding, "style_embedding")
        batch = (style if style is not None else style_embedding).shape[0]
        if batch != content.shape[0]:
            raise ValueError(f"batch sizes differ: content {content.shape[0]}, style {batch}")

    # ---- forward ----------------------------------------------------------------------

    def forward(
        self,
        content: torch.Tensor,
        style: torch.Tensor | None = None,
        *,
        style_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.check_inputs(content, style, style_embedding)
        if content.shape[0] == 0:  # an empty batch (a filtered-out chunk, say) gives an empty output
            return content.new_empty((0, 3, *content.shape[-2:]))
        e_s = self._embed(style) if style is not None else style_embedding  # style checked above
        return self._in_chunks(self._stylise, content, e_s)

    def _stylise(self, content: torch.Tensor, e_s: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        h, w = content.shape[-2:]
        # Floor division, not -h % p: with dynamic shapes torch.compile (2.14) cannot turn a
        # symbolic modulo into the float arithmetic of the norms' decompositions.
        pad_h, pad_w = -(-h // p) * p - h, -(-w // p) * p - w
        if pad_h or pad_w:
            content = F.pad(content, (0, pad_w, 0, pad_h), mode="reflect")
        style_vec = e_s.mean((2, 3))  # (B, S): GAP(e_s), read by SAIN and S7
        x = self.content_encoder(content)  # (B, C, H/p, W/p)
        for group in self.decoder:
            x = group(x, e_s, style_vec)
        return self.image_decoder(x)[..., :h, :w]
