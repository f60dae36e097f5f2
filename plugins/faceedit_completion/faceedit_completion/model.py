"""Progressive attribute-controlled face completion network (Chen, Nie, Wu & Healey 2018).

Generator G(observed image, hole mask, attribute vector): a U-Net whose encoder and decoder grow
together, one resolution level at a time, as in progressive GANs (Karras et al. 2018), which the
paper builds on. Level ``s`` of the encoder turns the image at ``s`` px into features at ``s/2``; the
bottleneck (``start_resolution/2`` px, 4 px by default) sees the whole face and is where the
attribute vector enters, tiled and concatenated; decoder level ``s`` upsamples, concatenates the
encoder's features at ``s`` (skip connection, which carries the visible context at full detail) and
ends in a 1x1 "to RGB" layer. The discriminator mirrors the encoder and has two heads: a
Wasserstein critic score and one logit per conditioning attribute (auxiliary classifier).

Growing: when a level ``r`` is added, it is faded in over many steps with a weight ``alpha`` going
0 -> 1. On the input side (G's encoder, D) the new "from RGB" + block path is blended with the old
path fed a 2x-downsampled input; on G's output side the new level's image is blended with the
previous level's image upsampled 2x. All levels up to ``max_resolution`` are built at once so one
state dict covers every stage; levels above the current stage simply receive no gradient.

Layers use the progressive-GAN conventions: equalised learning rate (weights drawn N(0, 1) and
scaled by He's constant at run time, so Adam's per-parameter steps are balanced across layers),
leaky ReLU 0.2, pixel-wise feature normalisation in G's bottleneck and decoder, and a minibatch
standard-deviation feature in D's last block.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .attributes import N_ATTRIBUTES, attribute_tensor

COMPLETION_FILE = "complete_progressive.pt"  # the shipped float16 generator (this plugin's models/)
DEFAULT_MAX_RESOLUTION = 128
DEFAULT_START_RESOLUTION = 8
# Channels at resolution s = width / s, clipped to [MIN_CHANNELS, max_channels]: 96 at 8 and 16 px,
# 64 at 32, 32 at 64, 16 at 128 and 256. 1.3 M generator parameters (2.6 MB in float16), about
# 0.23 s of one CPU core per 128 px image per training step. width=3072, max_channels=128 (2.4 M,
# 4.9 MB) is the larger option for a GPU run.
DEFAULT_WIDTH = 2048
DEFAULT_MAX_CHANNELS = 96
MIN_CHANNELS = 16


def channels_at(resolution: int, width: int = DEFAULT_WIDTH, max_channels: int = DEFAULT_MAX_CHANNELS) -> int:
    """Feature channels at a resolution: wide where the maps are small (cheap), narrow where large."""
    return int(max(MIN_CHANNELS, min(max_channels, width // resolution)))


def resolution_levels(start_resolution: int, max_resolution: int) -> list[int]:
    """[start, 2*start, ..., max]; both must be powers of two with start >= 4."""
    for name, value in (("start_resolution", start_resolution), ("max_resolution", max_resolution)):
        if value < 4 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= 4, got {value}")
    if start_resolution > max_resolution:
        raise ValueError(f"start_resolution {start_resolution} exceeds max_resolution {max_resolution}")
    levels, s = [], start_resolution
    while s <= max_resolution:
        levels.append(s)
        s *= 2
    return levels


# ------------------------------------------------------------------------------------ layers
class EqualizedConv2d(nn.Module):
    """Conv whose weights are stored N(0, 1) and scaled by gain / sqrt(fan_in) on every call."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each pixel's feature vector to unit RMS (keeps G's signal magnitudes in check)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def lerp(old: torch.Tensor, new: torch.Tensor, alpha: float) -> torch.Tensor:
    return old + (new - old) * alpha


def downsample_input(image: torch.Tensor, hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Halve an (image, hole) pair: the image by 2x2 averaging, the hole by "any pixel is hole", so
    no hole content leaks into the observed part at the coarser level."""
    return F.avg_pool2d(image, 2), F.max_pool2d(hole, 2)


def resize_hole(hole: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, H, W) {0,1} -> (N, 1, size, size), a pixel being hole if any of its area is."""
    if hole.shape[-2:] == (size, size):
        return hole
    return (F.adaptive_avg_pool2d(hole.float(), size) > 1e-6).float()


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, size, size), antialiased when shrinking."""
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_known(image: torch.Tensor, hole: torch.Tensor, size: int) -> torch.Tensor:
    """Resize using known pixels only (normalised convolution), so whatever the hole holds (an
    object the user wants gone) cannot bleed into the observed pixels at the new size."""
    known = 1.0 - hole.float()
    weight = resize_image(known.expand_as(image[:, :1]), size)
    return resize_image(image * known, size) / weight.clamp(min=1e-6)


def composite(observed: torch.Tensor, generated: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """Known pixels from ``observed``, hole pixels from ``generated`` (hole: 1 = missing)."""
    return observed * (1 - hole) + generated * hole


# ------------------------------------------------------------------------------------ generator
class EncoderLevel(nn.Module):
    """Two 3x3 convs at ``s`` px; returns (skip features at s, features at s/2 after 2x2 pooling)."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.conv1 = EqualizedConv2d(channels, channels, 3)
        self.conv2 = EqualizedConv2d(channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = leaky(self.conv1(x))
        return skip, F.avg_pool2d(leaky(self.conv2(skip)), 2)


class DecoderLevel(nn.Module):
    """Upsample 2x, concatenate the encoder's skip features, two 3x3 convs with pixel norm."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = EqualizedConv2d(in_channels + skip_channels, out_channels, 3)
        self.conv2 = EqualizedConv2d(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skip], 1)
        x = pixel_norm(leaky(self.conv1(x)))
        return pixel_norm(leaky(self.conv2(x)))


class Bottleneck(nn.Module):
    """The coarsest level: the attribute vector, tiled over the map, joins the face's code here."""

    def __init__(self, channels: int, n_attributes: int):
        super().__init__()
        self.conv1 = EqualizedConv2d(channels + n_attributes, channels, 3)
        self.conv2 = EqualizedConv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        tiled = attributes[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        x = pixel_norm(leaky(self.conv1(torch.cat([x, tiled.to(x.dtype)], 1))))
        return pixel_norm(leaky(self.conv2(x)))


class _Progressive(nn.Module):
    """Shared bookkeeping: levels, channel widths, and a persistent ``architecture`` buffer so a
    state dict alone is enough to rebuild the network (see :func:`load_generator`)."""

    def _setup(self, max_resolution: int, n_attributes: int, start_resolution: int, width: int,
               max_channels: int) -> None:
        self.levels = resolution_levels(start_resolution, max_resolution)
        self.max_resolution, self.start_resolution = max_resolution, start_resolution
        self.n_attributes, self.width, self.max_channels = n_attributes, width, max_channels
        self.register_buffer("architecture", torch.tensor(
            [max_resolution, n_attributes, start_resolution, width, max_channels], dtype=torch.int64))

    def channels(self, resolution: int) -> int:
        return channels_at(resolution, self.width, self.max_channels)

    def config(self) -> dict:
        return {"max_resolution": self.max_resolution, "n_attributes": self.n_attributes,
                "start_resolution": self.start_resolution, "width": self.width,
                "max_channels": self.max_channels}

    def _check_stage(self, x: torch.Tensor, resolution: int | None, alpha: float) -> tuple[int, bool]:
        resolution = int(resolution or self.max_resolution)
        if resolution not in self.levels:
            raise ValueError(f"resolution {resolution} is not a level of this network ({self.levels})")
        if tuple(x.shape[-2:]) != (resolution, resolution):
            raise ValueError(f"input is {tuple(x.shape[-2:])} px, the stage needs {resolution}x{resolution}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"fade-in alpha must lie in [0, 1], got {alpha}")
        return resolution, float(alpha) < 1.0 and resolution > self.start_resolution


class CompletionGenerator(_Progressive):
    """G(image, hole, attributes) -> image. ``image`` (N, 3, r, r) in [-1, 1] (hole content is
    ignored: it is zeroed here), ``hole`` (N, 1, r, r) with 1 = missing, ``attributes``
    (N, n_attributes) in [-1, 1] (0 = not specified); ``r`` is the stage resolution. The output is
    the full generated image (unbounded, ~[-1, 1]); use :func:`composite` to keep the known pixels."""

    def __init__(self, max_resolution: int = DEFAULT_MAX_RESOLUTION, n_attributes: int = N_ATTRIBUTES,
                 start_resolution: int = DEFAULT_START_RESOLUTION, width: int = DEFAULT_WIDTH,
                 max_channels: int = DEFAULT_MAX_CHANNELS):
        super().__init__()
        self._setup(max_resolution, n_attributes, start_resolution, width, max_channels)
        ch = self.channels
        self.from_rgb = nn.ModuleDict({str(s): EqualizedConv2d(4, ch(s), 1) for s in self.levels})
        self.encoder = nn.ModuleDict({str(s): EncoderLevel(ch(s), ch(s // 2)) for s in self.levels})
        self.bottleneck = Bottleneck(ch(start_resolution // 2), n_attributes)
        self.decoder = nn.ModuleDict({str(s): DecoderLevel(ch(s // 2), ch(s), ch(s)) for s in self.levels})
        self.to_rgb = nn.ModuleDict({str(s): EqualizedConv2d(ch(s), 3, 1, gain=1.0) for s in self.levels})
        # The stage the weights were last trained at: a network exported mid-schedule must run
        # there, since its higher levels are still untrained.
        self.register_buffer("stage_resolution", torch.tensor(max_resolution, dtype=torch.int64))
        self.register_buffer("stage_alpha", torch.tensor(1.0))

    def set_stage(self, resolution: int, alpha: float) -> None:
        """Record the training stage (saved with the weights; :func:`complete` runs there)."""
        if int(resolution) not in self.levels:
            raise ValueError(f"resolution {resolution} is not a level of this network ({self.levels})")
        self.stage_resolution.fill_(int(resolution))
        self.stage_alpha.fill_(float(alpha))

    def trained_stage(self) -> tuple[int, float]:
        return int(self.stage_resolution), float(self.stage_alpha)

    def forward(self, image: torch.Tensor, hole: torch.Tensor, attributes: torch.Tensor,
                resolution: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        r, fading = self._check_stage(image, resolution, alpha)
        if attributes.shape != (image.shape[0], self.n_attributes):
            raise ValueError(f"attributes must be ({image.shape[0]}, {self.n_attributes}), "
                             f"got {tuple(attributes.shape)}")
        hole = hole.to(image.dtype)
        x = torch.cat([image * (1 - hole), hole], 1)
        skips = {}
        skips[r], h = self.encoder[str(r)](leaky(self.from_rgb[str(r)](x)))
        if fading:
            small_image, small_hole = downsample_input(image, hole)
            small = torch.cat([small_image * (1 - small_hole), small_hole], 1)
            h = lerp(leaky(self.from_rgb[str(r // 2)](small)), h, alpha)
        s = r // 2
        while s >= self.start_resolution:
            skips[s], h = self.encoder[str(s)](h)
            s //= 2
        y = self.bottleneck(h, attributes)
        s = self.start_resolution
        while s < r:
            y = self.decoder[str(s)](y, skips[s])
            s *= 2
        out = self.to_rgb[str(r)](self.decoder[str(r)](y, skips[r]))
        if fading:
            previous = F.interpolate(self.to_rgb[str(r // 2)](y), scale_factor=2, mode="nearest")
            out = lerp(previous, out, alpha)
        return out


# ------------------------------------------------------------------------------------ discriminator
class DiscriminatorLevel(nn.Module):
    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.conv1 = EqualizedConv2d(channels, channels, 3)
        self.conv2 = EqualizedConv2d(channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(leaky(self.conv2(leaky(self.conv1(x)))), 2)


def minibatch_stddev(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append the average feature standard deviation over groups of samples as one more channel,
    which lets D see a lack of variety across a batch (progressive-GAN trick against collapse)."""
    n, c, h, w = x.shape
    g = min(group, n)
    while n % g:
        g -= 1
    y = x.view(g, n // g, c, h, w)
    y = (y - y.mean(0)).pow(2).mean(0).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # (n // g,)
    y = y.view(1, n // g, 1, 1, 1).expand(g, -1, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, y], 1)


class CompletionDiscriminator(_Progressive):
    """D(image) -> (critic score (N,), attribute logits (N, n_attributes)); the image is the
    completed one (known pixels + generated hole) at the stage resolution, in [-1, 1]."""

    def __init__(self, max_resolution: int = DEFAULT_MAX_RESOLUTION, n_attributes: int = N_ATTRIBUTES,
                 start_resolution: int = DEFAULT_START_RESOLUTION, width: int = DEFAULT_WIDTH,
                 max_channels: int = DEFAULT_MAX_CHANNELS):
        super().__init__()
        self._setup(max_resolution, n_attributes, start_resolution, width, max_channels)
        ch = self.channels
        final = start_resolution // 2
        self.from_rgb = nn.ModuleDict({str(s): EqualizedConv2d(3, ch(s), 1) for s in self.levels})
        self.blocks = nn.ModuleDict({str(s): DiscriminatorLevel(ch(s), ch(s // 2)) for s in self.levels})
        self.final_conv = EqualizedConv2d(ch(final) + 1, ch(final), 3)
        self.final_dense = EqualizedLinear(ch(final) * final * final, ch(final))
        self.critic = EqualizedLinear(ch(final), 1, gain=1.0)
        self.classifier = EqualizedLinear(ch(final), n_attributes, gain=1.0)

    def forward(self, image: torch.Tensor, resolution: int | None = None,
                alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        r, fading = self._check_stage(image, resolution, alpha)
        h = self.blocks[str(r)](leaky(self.from_rgb[str(r)](image)))
        if fading:
            h = lerp(leaky(self.from_rgb[str(r // 2)](F.avg_pool2d(image, 2))), h, alpha)
        s = r // 2
        while s >= self.start_resolution:
            h = self.blocks[str(s)](h)
            s //= 2
        h = leaky(self.final_conv(minibatch_stddev(h)))
        h = leaky(self.final_dense(h.flatten(1)))
        return self.critic(h)[:, 0], self.classifier(h)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def half_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """float16 copy of the floating tensors (the int64 ``architecture`` buffer stays as it is)."""
    return {k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().clone()
            for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------ loading
def generator_for_state(state: dict) -> CompletionGenerator:
    """An untrained generator with the architecture recorded in ``state['architecture']``."""
    if "architecture" not in state:
        raise ValueError("not a completion generator state dict (no 'architecture' entry)")
    max_resolution, n_attributes, start_resolution, width, max_channels = (int(v) for v in state["architecture"])
    if n_attributes != N_ATTRIBUTES:
        raise ValueError(f"checkpoint conditions on {n_attributes} attributes, this code on {N_ATTRIBUTES}: "
                         "it was trained with another attribute list")
    return CompletionGenerator(max_resolution, n_attributes, start_resolution, width, max_channels)


def load_generator(path: str | Path | None = None, device: str | torch.device = "cpu") -> CompletionGenerator:
    """The shipped generator (``models/complete_progressive.pt`` in this plugin), or a generator
    exported by ``faceedit train completion --export PATH``, in eval mode on ``device``.

    Files are read with ``torch.load(weights_only=True)`` only, and loaded strictly (through
    :func:`napari_faceedit.weights.load_bundled`, which also raises a clear error when the file is
    missing or is not a weights-only checkpoint)."""
    from napari_faceedit import weights

    file = Path(path) if path else weights.bundled_path(COMPLETION_FILE)
    if not file.is_file():
        if path:
            raise weights.WeightsMissingError(f"completion generator weights not found: {file}")
        weights.load_bundled(COMPLETION_FILE, CompletionGenerator())  # raises the "embedded model missing" error
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise weights.WeightsError(f"cannot read {file} as a weights-only PyTorch checkpoint: "
                                   f"{type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict):
        raise weights.WeightsError(f"{file} does not hold a state dict")
    model = generator_for_state(state)
    weights.load_bundled(COMPLETION_FILE, model, file)
    return model.to(device).eval()


# ------------------------------------------------------------------------------------ inference
def image_to_tensor(image_uint8: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.array(image_uint8, np.uint8)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)


def tensor_to_image(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((x[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def complete(model: CompletionGenerator, crop_uint8: np.ndarray, hole_bool: np.ndarray,
             attributes: dict[str, float] | None = None) -> np.ndarray:
    """Fill the hole of one aligned face crop.

    ``crop_uint8``: (H, W, 3) RGB, ideally a square aligned face (the network was trained on the
    CelebA and CelebAMask-HQ framings); ``hole_bool``: (H, W), True = complete this pixel;
    ``attributes``: {CelebA name: value in [0, 1]} for any of ``SUPPORTED_ATTRIBUTES`` (1 = has,
    0 = has not; unnamed ones are left to the model). The crop is resized to the network's
    resolution (the stage it was trained up to, ``model.trained_stage()``) and back; pixels outside
    the hole are returned bit-for-bit unchanged.
    """
    crop = np.asarray(crop_uint8)
    hole = np.asarray(hole_bool)
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"crop must be (H, W, 3) uint8, got {crop.shape} {crop.dtype}")
    if hole.shape != crop.shape[:2]:
        raise ValueError(f"hole mask {hole.shape} does not match the crop {crop.shape[:2]}")
    hole = hole.astype(bool)
    vector = attribute_tensor(attributes)  # validates names before any work
    if not hole.any():
        return crop.copy()
    device = next(model.parameters()).device
    size, alpha = model.trained_stage()
    model.eval()
    full_hole = torch.from_numpy(hole)[None, None].float()
    image = resize_known(image_to_tensor(crop), full_hole, size).to(device)
    small_hole = resize_hole(full_hole, size).to(device)
    generated = model(image, small_hole, vector.to(device), size, alpha).float()
    generated = F.interpolate(generated.cpu(), size=crop.shape[:2], mode="bilinear", align_corners=False)
    out = crop.copy()
    out[hole] = tensor_to_image(generated)[hole]
    return out
