"""TediGAN's StyleGAN generator (Karras et al., "A Style-Based Generator Architecture for GANs", CVPR 2019)
in the layout of the In-Domain GAN Inversion / TediGAN PyTorch port (model ``styleganinv_ffhq256``).

State-dict compatible, key for key, with the published ``styleganinv_ffhq256_generator.pth``:
``mapping.dense{i}.{fc.weight,wscale.bias}``, ``truncation.{w_avg,truncation}``, ``synthesis.lod``,
``synthesis.layer{i}...`` and ``synthesis.output{j}...``.

Pipeline: z -> PixelNorm -> 8 equalised-LR dense layers (LeakyReLU 0.2 after every one, the last too)
-> w. With ``repeat_w=False`` the last layer emits one 512-d code per synthesis layer, so w is already
the W+ code (N, num_layers*512). Truncation: ``w_avg + (w - w_avg) * psi`` on the first
``truncation_layers`` rows. Synthesis: two layers per resolution (4, 8, ..., 256 px: 14 layers at 256),
each ``[const | upsample+conv | conv] -> blur (after upsampling) -> noise -> bias -> LeakyReLU ->
instance norm -> x * (1 + scale) + shift`` with (scale, shift) = dense(W+ row of that layer). Only the
last toRGB is used (lod 0), then tanh.

Layer groups for 14 layers, split by resolution as in the StyleGAN paper (section 3.1: coarse 4-8 px,
middle 16-32 px, fine 64 px and up): coarse = layers 0-3 (pose, face shape, hair style), middle =
layers 4-7 (facial features, eyes open/closed), fine = layers 8-13 (colour scheme, micro-structure).
Neither TediGAN nor idinvert fixes another split: TediGAN's CLIP optimisation (``base/utils/inverter.py``)
updates all 14 rows, and idinvert's style mixing / manipulation take arbitrary layer indices.
``restrict_layers`` lets an optimisation change only some rows. Note that the default truncation
(layers 0-7) covers exactly the coarse and middle groups.

:func:`prepare_for_inference` switches a loaded generator to the backend's fast path (forward and
backward: TediGAN optimises the code through it). Per layer: the weight scale folded into the stored
weight; from 32 px up, nearest x2 upsampling + 3x3 convolution as one stride-2 transposed 4x4
convolution (the kernel identity of ``fused_scale``: 4 instead of 9 multiply-adds per output; the 4x4
kernel replaces the stored 3x3 weight); the layer bias
added by the convolution (or the blur after it); noise added in place; one in-place LeakyReLU;
instance norm and the style modulation as one ``group_norm`` with per-channel affine (1 + scale,
shift). Same function within float rounding; the parity fixtures pass on it.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

LRELU_SLOPE = 0.2
PIXEL_NORM_EPS = 1e-8
INSTANCE_NORM_EPS = 1e-8
MAPPING_LR_MULTIPLIER = 0.01
TRANSPOSED_UPSAMPLE_FROM = 32  # prepare_for_inference: output resolution from which upsampling convs are fused


def num_synthesis_layers(resolution: int) -> int:
    """Two layers per resolution from 4 px up: 14 at 256, 18 at 1024."""
    return 2 * (int(math.log2(resolution)) - 1)


def layer_groups(num_layers: int = 14) -> dict[str, tuple[int, ...]]:
    """coarse = 4-8 px, middle = 16-32 px, fine = everything from 64 px (see the module docstring)."""
    return {"coarse": tuple(range(0, 4)), "middle": tuple(range(4, 8)), "fine": tuple(range(8, num_layers))}


LAYER_GROUPS = layer_groups(14)


def resolve_layers(layers: str | int | Iterable[int | str], num_layers: int = 14) -> list[int]:
    """Layer indices from ints and/or group names ('coarse', 'middle', 'fine', 'all')."""
    groups = layer_groups(num_layers)
    if isinstance(layers, (str, int)):
        layers = [layers]
    indices: set[int] = set()
    for item in layers:
        if isinstance(item, str):
            if item == "all":
                indices.update(range(num_layers))
            elif item in groups:
                indices.update(groups[item])
            else:
                raise ValueError(f"unknown layer group '{item}' (known: {', '.join(groups)}, all)")
        else:
            index = int(item)
            if not 0 <= index < num_layers:
                raise ValueError(f"layer index {index} outside 0..{num_layers - 1}")
            indices.add(index)
    return sorted(indices)


def restrict_layers(fixed_wp: torch.Tensor, free_wp: torch.Tensor,
                    layers: str | int | Iterable[int | str]) -> torch.Tensor:
    """W+ code taking the selected layer rows from ``free_wp`` and all others from ``fixed_wp``.
    Gradients reach only the selected rows of ``free_wp``, so an optimiser on ``free_wp`` can change
    only those layers' styles."""
    if fixed_wp.shape != free_wp.shape or fixed_wp.ndim != 3:
        raise ValueError(f"both codes must be (N, layers, dim) of one shape, got {tuple(fixed_wp.shape)} "
                         f"and {tuple(free_wp.shape)}")
    num_layers = fixed_wp.shape[1]
    mask = torch.zeros(num_layers, dtype=torch.bool, device=fixed_wp.device)
    mask[resolve_layers(layers, num_layers)] = True
    return torch.where(mask[None, :, None], free_wp, fixed_wp.to(free_wp.dtype))


# ------------------------------------------------------------------------------------------ layers
class EqualizedBias(nn.Module):
    """The ``wscale`` module of the official code: holds the bias of the preceding layer (key
    ``wscale.bias``), which is multiplied by the learning-rate multiplier at run time."""

    def __init__(self, channels: int, lr_multiplier: float = 1.0):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.lr_multiplier = lr_multiplier


class EqualizedDense(nn.Module):
    """Dense layer with the equalised learning rate: ``fc(x) * gain/sqrt(fan_in)*lr_mul + bias*lr_mul``."""

    def __init__(self, in_features: int, out_features: int, gain: float, lr_multiplier: float = 1.0,
                 activate: bool = False):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features, bias=False)
        self.wscale = EqualizedBias(out_features, lr_multiplier)
        self.weight_scale = gain / math.sqrt(in_features) * lr_multiplier
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x) * self.weight_scale + self.wscale.bias * self.wscale.lr_multiplier
        return F.leaky_relu(x, LRELU_SLOPE) if self.activate else x


class MappingNetwork(nn.Module):
    """z -> w: PixelNorm, then ``num_layers`` dense layers with LeakyReLU (lr multiplier 0.01)."""

    def __init__(self, z_dim: int = 512, w_dim: int = 512, num_layers: int = 8, output_dim: int = 512):
        super().__init__()
        self.num_layers = num_layers
        for index in range(num_layers):
            in_dim = z_dim if index == 0 else w_dim
            out_dim = output_dim if index == num_layers - 1 else w_dim
            self.add_module(f"dense{index}", EqualizedDense(in_dim, out_dim, gain=math.sqrt(2.0),
                                                            lr_multiplier=MAPPING_LR_MULTIPLIER, activate=True))

    def forward(self, z: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        # divide by sqrt (not multiply by rsqrt): same rounding as the official code, w matches bit for bit
        x = z / torch.sqrt(torch.mean(z * z, dim=1, keepdim=True) + PIXEL_NORM_EPS)
        for index in range(self.num_layers):
            x = getattr(self, f"dense{index}")(x)
            if trace is not None:
                trace[f"mapping_dense{index}_out"] = x
        return x


class Truncation(nn.Module):
    """``w_avg + (w - w_avg) * factor[layer]``, factor = psi on the first ``truncation_layers`` rows.
    The ``truncation`` buffer is rebuilt after every state-dict load, as the official loader does,
    so a checkpoint's stored value never changes the configured truncation."""

    def __init__(self, w_dim: int, num_layers: int, psi: float = 0.7, truncation_layers: int = 8):
        super().__init__()
        self.psi, self.truncation_layers, self.num_layers = psi, truncation_layers, num_layers
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.register_buffer("truncation", self.layer_factors(psi, truncation_layers))

    def layer_factors(self, psi: float, truncation_layers: int, device=None) -> torch.Tensor:
        factors = [psi if index < truncation_layers else 1.0 for index in range(self.num_layers)]
        return torch.tensor(factors, dtype=torch.float32, device=device).view(1, self.num_layers, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Assign a fresh tensor (not copy_): with load_state_dict(assign=True) the buffer is the caller's tensor.
        self.truncation = self.layer_factors(self.psi, self.truncation_layers, device=self.w_avg.device)

    def forward(self, wp: torch.Tensor, psi: float | None = None, truncation_layers: int | None = None) -> torch.Tensor:
        if psi is None and truncation_layers is None:
            factors = self.truncation
        else:
            factors = self.layer_factors(self.psi if psi is None else psi,
                                         self.truncation_layers if truncation_layers is None else truncation_layers,
                                         device=wp.device)
        w_avg = self.w_avg.view(1, 1, -1)
        return w_avg + (wp - w_avg) * factors.to(wp.dtype)


class NoiseInjection(nn.Module):
    """Adds a fixed noise map (state-dict buffer ``noise``, [1,1,res,res]) times a per-channel weight."""

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))
        self.register_buffer("noise", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, randomize: bool = False) -> torch.Tensor:
        noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype) if randomize else self.noise
        return x + noise * self.weight.view(1, -1, 1, 1)


class StyleModulation(nn.Module):
    """AdaIN's affine part: style = dense(w) = (scale, shift), x * (1 + scale) + shift."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.channels = channels
        self.dense = EqualizedDense(w_dim, 2 * channels, gain=1.0, lr_multiplier=1.0, activate=False)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        style = style.view(-1, 2, self.channels, 1, 1)
        return x * (style[:, 0] + 1) + style[:, 1]


class Epilogue(nn.Module):
    """noise -> bias -> LeakyReLU -> instance norm -> style modulation."""

    def __init__(self, channels: int, resolution: int, w_dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.apply_noise = NoiseInjection(channels, resolution)
        self.style_mod = StyleModulation(channels, w_dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor, randomize_noise: bool = False) -> torch.Tensor:
        x = self.apply_noise(x, randomize_noise)
        x = F.leaky_relu(x + self.bias.view(1, -1, 1, 1), LRELU_SLOPE)
        x = x - x.mean(dim=(2, 3), keepdim=True)
        x = x * torch.rsqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + INSTANCE_NORM_EPS)
        return self.style_mod(x, style)

    def forward_fused(self, x: torch.Tensor, style: torch.Tensor, randomize_noise: bool = False) -> torch.Tensor:
        """The same on a fresh ``x`` that already holds the layer bias (added by the convolution):
        noise in place, LeakyReLU in place, then instance norm and style as one group norm (one
        channel per group) whose affine weight and bias are (1 + scale, shift)."""
        if randomize_noise:
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        else:
            noise = self.apply_noise.noise
        x = F.leaky_relu_(x.addcmul_(noise, self.apply_noise.weight.view(1, -1, 1, 1)), LRELU_SLOPE)
        batch, channels = x.shape[:2]
        style = style.view(batch, 2, channels)
        scale, shift = style[:, 0] + 1, style[:, 1]
        if batch == 1:
            return F.group_norm(x, channels, scale[0], shift[0], INSTANCE_NORM_EPS)
        # Per-sample styles: one group per (sample, channel) of a 1-sample view.
        out = F.group_norm(x.reshape(1, batch * channels, *x.shape[2:]), batch * channels, scale.reshape(-1),
                           shift.reshape(-1), INSTANCE_NORM_EPS)
        return out.view_as(x)


def binomial_blur_kernel(channels: int) -> torch.Tensor:
    """Depthwise [1,2,1]^T [1,2,1] / 16, shape [C,1,3,3] (the ``blur.kernel`` buffer)."""
    taps = torch.tensor([1.0, 2.0, 1.0])
    kernel = torch.outer(taps, taps) / 16.0
    return kernel.view(1, 1, 3, 3).repeat(channels, 1, 1, 1)


class Blur(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("kernel", binomial_blur_kernel(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), padding=1, groups=x.shape[1])


class ConstInputLayer(nn.Module):
    """Layer 0: a learned 4x4 constant, batch-repeated, straight into the epilogue."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.const = nn.Parameter(torch.ones(1, channels, 4, 4))
        self.epilogue = Epilogue(channels, 4, w_dim)
        self.fused = False  # prepare_for_inference: the epilogue's fused path

    def forward(self, batch_size: int, style: torch.Tensor, randomize_noise: bool = False) -> torch.Tensor:
        x = self.const.expand(batch_size, -1, -1, -1)
        if self.fused:
            x = x + self.epilogue.bias.view(1, -1, 1, 1)  # a fresh tensor for the in-place epilogue
            return self.epilogue.forward_fused(x, style, randomize_noise)
        return self.epilogue(x, style, randomize_noise)


class ConvLayer(nn.Module):
    """3x3 convolution (gain sqrt 2, no conv bias), optionally preceded by nearest x2 upsampling
    and followed by the blur."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, w_dim: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.resolution = resolution
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.weight_scale = math.sqrt(2.0) / math.sqrt(in_channels * 9)
        if upsample:
            self.blur = Blur(out_channels)
        self.epilogue = Epilogue(out_channels, resolution, w_dim)
        self.fused = False
        # fuse_for_inference: the [in, out, 4, 4] kernel equal to nearest x2 upsampling + this conv.
        self.register_buffer("upsample_kernel", None, persistent=False)

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        if self.fused:
            return
        self.conv.weight.mul_(self.weight_scale)
        self.weight_scale = 1.0
        # From 32 px up: below, the 4x4 kernel's extra weight traffic costs about what the saved
        # multiply-adds gain (measured on CPU: 8 px slower, 16 px 1.5 ms faster for 16 MB more).
        if self.upsample and self.resolution >= TRANSPOSED_UPSAMPLE_FROM:
            # A transposed convolution applies its kernel mirrored relative to conv2d's cross-correlation.
            self.upsample_kernel = upsample_conv_kernel(self.conv.weight.flip(2, 3).permute(2, 3, 1, 0)).contiguous()
            self.conv = None  # the kernel replaces the 3x3 weight (memory); inference-only from here
        self.fused = True

    def forward(self, x: torch.Tensor, style: torch.Tensor, randomize_noise: bool = False) -> torch.Tensor:
        if self.fused:
            bias = self.epilogue.bias
            if self.upsample:
                if self.upsample_kernel is not None:
                    x = F.conv_transpose2d(x, self.upsample_kernel, stride=2, padding=1)
                else:
                    x = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), self.conv.weight, padding=1)
                x = F.conv2d(x, self.blur.kernel.to(x.dtype), bias, padding=1, groups=x.shape[1])
            else:
                x = F.conv2d(x, self.conv.weight, bias, padding=1)
            return self.epilogue.forward_fused(x, style, randomize_noise)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.conv2d(x, self.conv.weight * self.weight_scale, padding=1)
        if self.upsample:
            x = self.blur(x)
        return self.epilogue(x, style, randomize_noise)


class FusedUpsampleConvLayer(nn.Module):
    """Upsampling + 3x3 conv in one stride-2 transposed convolution (``fused_scale``, >= 128 px).
    The weight is stored TF-style [3, 3, in, out]; the scaled kernel is zero-padded to 5x5 and its four
    shifted 4x4 windows summed, which equals nearest-x2 upsampling followed by the 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, w_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 3, in_channels, out_channels))
        self.weight_scale = math.sqrt(2.0) / math.sqrt(in_channels * 9)
        self.blur = Blur(out_channels)
        self.epilogue = Epilogue(out_channels, resolution, w_dim)

        self.fused = False
        self.register_buffer("upsample_kernel", None, persistent=False)  # fuse_for_inference: the kernel, once

    def transposed_kernel(self) -> torch.Tensor:
        return upsample_conv_kernel(self.weight * self.weight_scale)

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        if not self.fused:
            self.upsample_kernel = self.transposed_kernel().contiguous()  # not re-laid out every call
            self.weight = None  # the kernel replaces the stored weight (memory); inference-only from here
            self.fused = True

    def forward(self, x: torch.Tensor, style: torch.Tensor, randomize_noise: bool = False) -> torch.Tensor:
        if self.fused:
            x = F.conv_transpose2d(x, self.upsample_kernel, stride=2, padding=1)
            x = F.conv2d(x, self.blur.kernel.to(x.dtype), self.epilogue.bias, padding=1, groups=x.shape[1])
            return self.epilogue.forward_fused(x, style, randomize_noise)
        x = F.conv_transpose2d(x, self.transposed_kernel(), stride=2, padding=1)
        x = self.blur(x)
        return self.epilogue(x, style, randomize_noise)


def upsample_conv_kernel(weight_hwio: torch.Tensor) -> torch.Tensor:
    """[3, 3, in, out] kernel of a 3x3 convolution -> the [in, out, 4, 4] ``conv_transpose2d`` kernel
    (stride 2, padding 1) equal to nearest x2 upsampling followed by that convolution: the kernel
    zero-padded to 5x5 and its four shifted 4x4 windows summed."""
    kernel = F.pad(weight_hwio, (0, 0, 0, 0, 1, 1, 1, 1))
    kernel = kernel[1:, 1:] + kernel[:-1, 1:] + kernel[1:, :-1] + kernel[:-1, :-1]
    return kernel.permute(2, 3, 0, 1)  # a view: callers that keep it make it contiguous


class ToRGB(nn.Module):
    """1x1 conv scaled by 1/sqrt(C_in) (gain 1), then its own bias."""

    def __init__(self, in_channels: int, image_channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(image_channels))
        self.conv = nn.Conv2d(in_channels, image_channels, 1, bias=False)
        self.weight_scale = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_scale == 1.0:  # folded (prepare_for_inference): the bias goes into the convolution
            return F.conv2d(x, self.conv.weight, self.bias)
        return F.conv2d(x, self.conv.weight * self.weight_scale) + self.bias.view(1, -1, 1, 1)

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        if self.weight_scale != 1.0:
            self.conv.weight.mul_(self.weight_scale)
            self.weight_scale = 1.0


class SynthesisNetwork(nn.Module):
    """W+ (N, num_layers, w_dim) -> image (N, C, res, res)."""

    def __init__(self, resolution: int = 256, w_dim: int = 512, image_channels: int = 3,
                 final_tanh: bool = True, fused_scale: bool | str = "auto",
                 fmaps_base: int = 16384, fmaps_max: int = 512):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        self.resolution, self.w_dim, self.final_tanh = resolution, w_dim, final_tanh
        self.num_layers = num_synthesis_layers(resolution)
        # lod > 0 would blend in lower-resolution outputs (progressive growing); trained models hold 0.
        self.register_buffer("lod", torch.zeros(()))

        def channels(res: int) -> int:
            return min(fmaps_base // res, fmaps_max)

        self.layer_channels: list[int] = []
        layer_index = 0
        for block, res_log2 in enumerate(range(2, int(math.log2(resolution)) + 1)):
            res = 2 ** res_log2
            out_ch = channels(res)
            if res == 4:
                self.add_module("layer0", ConstInputLayer(out_ch, w_dim))
            else:
                in_ch = channels(res // 2)
                fused = (res >= 128) if fused_scale == "auto" else bool(fused_scale)
                layer = (FusedUpsampleConvLayer(in_ch, out_ch, res, w_dim) if fused
                         else ConvLayer(in_ch, out_ch, res, w_dim, upsample=True))
                self.add_module(f"layer{layer_index}", layer)
            self.add_module(f"layer{layer_index + 1}", ConvLayer(out_ch, out_ch, res, w_dim, upsample=False))
            self.add_module(f"output{block}", ToRGB(out_ch, image_channels))
            self.layer_channels += [out_ch, out_ch]
            layer_index += 2
        self.num_blocks = block + 1

    def layer(self, index: int) -> nn.Module:
        return getattr(self, f"layer{index}")

    def _check_wp(self, wp: torch.Tensor) -> None:
        if wp.ndim != 3 or wp.shape[1:] != (self.num_layers, self.w_dim):
            raise ValueError(f"W+ code must be (N, {self.num_layers}, {self.w_dim}), got {tuple(wp.shape)}")

    def style(self, wp: torch.Tensor, index: int) -> torch.Tensor:
        """Style vector (N, 2C) of layer ``index``: first C = scale, last C = shift. It depends only
        on row ``index`` of the W+ code."""
        return self.layer(index).epilogue.style_mod.dense(wp[:, index])

    def styles(self, wp: torch.Tensor) -> list[torch.Tensor]:
        self._check_wp(wp)
        return [self.style(wp, index) for index in range(self.num_layers)]

    def forward(self, wp: torch.Tensor, trace: dict | None = None, randomize_noise: bool = False) -> torch.Tensor:
        self._check_wp(wp)
        if float(self.lod) != 0.0:
            raise NotImplementedError(f"synthesis.lod is {float(self.lod)}; "
                                      "only fully grown models (lod 0) are supported")
        x = None
        for index in range(self.num_layers):
            style = self.style(wp, index)
            if trace is not None:
                trace[f"style{index:02d}"] = style
            if index == 0:
                x = self.layer0(wp.shape[0], style, randomize_noise)
            else:
                x = self.layer(index)(x, style, randomize_noise)
        image = getattr(self, f"output{self.num_blocks - 1}")(x)
        return torch.tanh(image) if self.final_tanh else image


class StyleGANGenerator(nn.Module):
    """Mapping + truncation + synthesis, with the official module names (hence state-dict keys)."""

    def __init__(self, resolution: int = 256, z_dim: int = 512, w_dim: int = 512, num_mapping_layers: int = 8,
                 repeat_w: bool = False, image_channels: int = 3, final_tanh: bool = True,
                 fused_scale: bool | str = "auto", truncation_psi: float = 0.7, truncation_layers: int = 8,
                 randomize_noise: bool = False, fmaps_base: int = 16384, fmaps_max: int = 512):
        super().__init__()
        self.resolution, self.z_dim, self.w_dim, self.repeat_w = resolution, z_dim, w_dim, repeat_w
        self.num_layers = num_synthesis_layers(resolution)
        self.randomize_noise = randomize_noise
        mapping_out = w_dim if repeat_w else w_dim * self.num_layers
        self.mapping = MappingNetwork(z_dim, w_dim, num_mapping_layers, mapping_out)
        self.truncation = Truncation(w_dim, self.num_layers, truncation_psi, truncation_layers)
        self.synthesis = SynthesisNetwork(resolution, w_dim, image_channels, final_tanh, fused_scale,
                                          fmaps_base, fmaps_max)

    @classmethod
    def from_official_config(cls, constructor: dict) -> "StyleGANGenerator":
        """Build from the official constructor arguments (``config.json['constructor']``)."""
        if constructor.get("label_size", 0):
            raise NotImplementedError("conditional (label_size > 0) StyleGAN generators are not supported")
        return cls(resolution=constructor["resolution"], z_dim=constructor.get("z_space_dim", 512),
                   w_dim=constructor.get("w_space_dim", 512),
                   num_mapping_layers=constructor.get("num_mapping_layers", 8),
                   repeat_w=constructor.get("repeat_w", True), image_channels=constructor.get("image_channels", 3),
                   final_tanh=constructor.get("final_tanh", False), fused_scale=constructor.get("fused_scale", "auto"),
                   truncation_psi=constructor.get("truncation_psi", 0.7),
                   truncation_layers=constructor.get("truncation_layers", 8),
                   randomize_noise=constructor.get("randomize_noise", False),
                   fmaps_base=constructor.get("fmaps_base", 16384), fmaps_max=constructor.get("fmaps_max", 512))

    def mapping_to_wp(self, w: torch.Tensor) -> torch.Tensor:
        """Mapping output -> W+ (N, num_layers, w_dim): reshape, or repeat when ``repeat_w``."""
        if self.repeat_w:
            return w[:, None, :].expand(-1, self.num_layers, -1)
        return w.view(w.shape[0], self.num_layers, self.w_dim)

    def mapping_forward(self, z: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        """z (N, z_dim) -> w (N, 7168 for repeat_w=False)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be (N, {self.z_dim}), got {tuple(z.shape)}")
        return self.mapping(z, trace)

    def map(self, z: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        """z -> untruncated W+ (N, num_layers, w_dim)."""
        return self.mapping_to_wp(self.mapping_forward(z, trace))

    def truncate(self, wp: torch.Tensor, psi: float | None = None,
                 truncation_layers: int | None = None) -> torch.Tensor:
        """Truncation trick towards ``w_avg`` (default: the configured psi on the first layers)."""
        return self.truncation(wp, psi, truncation_layers)

    def synthesize(self, wp: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        """W+ (N, num_layers, w_dim) -> image (N, 3, res, res), in [-1, 1] with ``final_tanh``."""
        return self.synthesis(wp, trace, self.randomize_noise)

    def styles(self, wp: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer style vectors (N, 2C_i) from a W+ code."""
        return self.synthesis.styles(wp)

    def forward(self, z: torch.Tensor, truncate: bool = True, trace: dict | None = None) -> torch.Tensor:
        """z -> image, through mapping, (optionally) truncation and synthesis (TediGAN's 'gen' start)."""
        wp = self.map(z, trace)
        if truncate:
            wp = self.truncate(wp)
        return self.synthesize(wp, trace)

    def load_official_state_dict(self, state: dict) -> None:
        """Strict load with one readable error for missing, unexpected or mis-shaped keys."""
        load_strict(self, state, "TediGAN StyleGAN generator")


def prepare_for_inference(generator: StyleGANGenerator, channels_last: bool = False) -> StyleGANGenerator:
    """The backend's fast path, in place (see the module docstring); load the weights first (weight
    scales are folded into the stored weights and some weights replaced by transposed-convolution
    kernels, so the result is for inference only; calling it again changes nothing). Gradients with
    respect to the W+ code still flow (TediGAN's optimisation); the parameters are frozen.
    ``channels_last``: NHWC convolution weights. Off by default: faster, but oneDNN's NHWC 3x3
    convolutions round differently and the 14 instance norms amplify that past the parity tolerance."""
    generator.eval().requires_grad_(False)
    synthesis = generator.synthesis
    synthesis.layer0.fused = True
    for index in range(1, synthesis.num_layers):
        synthesis.layer(index).fuse_for_inference()
    for block in range(synthesis.num_blocks):
        getattr(synthesis, f"output{block}").fuse_for_inference()
    if channels_last:
        with torch.no_grad():
            for parameter in generator.parameters():
                if parameter.ndim == 4:
                    parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
    return generator


def load_strict(model: nn.Module, state: dict, what: str) -> None:
    own = model.state_dict()
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    mismatched = [f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(own[name].shape)}"
                  for name in own if name in state and tuple(state[name].shape) != tuple(own[name].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_summarise(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_summarise(mismatched)}")
        raise KeyError(f"checkpoint does not fit the {what} ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def _summarise(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")
