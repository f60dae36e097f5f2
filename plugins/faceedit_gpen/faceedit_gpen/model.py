"""GPEN FullGenerator (Yang et al., "GAN Prior Embedded Network for Blind Face Restoration in the Wild",
CVPR 2021) in plain PyTorch, state-dict compatible with the published GPEN-BFR-256/512/1024 weights.

A StyleGAN2 generator is the decoder of a U-shaped network: a convolutional encoder (``ecd0..N``)
reduces the face to 4x4, ``final_linear`` maps that to the style code, and the encoder feature maps
take the place of StyleGAN2's noise inputs, concatenated (after a learned scalar weight) to the
output of each modulated convolution.

The CUDA ops of the official code are replaced by plain torch: the FIR filter ``upfirdn2d`` by a
depthwise (grouped) ``conv2d``/``conv_transpose2d`` and the fused bias + leaky ReLU by two elementwise ops.

:func:`prepare_for_inference` switches a loaded model to the backend's fast CPU path: the constant
weight scales and the activation gain sqrt(2) folded into the stored weights, biases passed to the
convolutions, GPEN's concatenation + bias + leaky ReLU written into one buffer in place, the
demodulation computed from precomputed squared weight sums, channels-last weights. Same function
within float rounding (the parity fixtures pass on it).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

SQRT2 = math.sqrt(2.0)

# Published configurations (GPEN-BFR-*): constructor arguments.
BFR_CONFIGS = {
    256: dict(size=256, style_dim=512, n_mlp=8, channel_multiplier=1, narrow=0.5),
    512: dict(size=512, style_dim=512, n_mlp=8, channel_multiplier=2, narrow=1),
    1024: dict(size=1024, style_dim=512, n_mlp=8, channel_multiplier=2, narrow=1),
}


# --------------------------------------------------------------------------------------------- ops
def make_blur_kernel(taps: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """Separable FIR kernel ``outer(k, k) / sum * gain`` (computed in numpy: cheap on the meta device)."""
    import numpy as np

    k = np.asarray(taps, dtype=np.float64)
    k = np.outer(k, k) if k.ndim == 1 else k
    return torch.tensor((k / k.sum() * gain).astype(np.float32))


def fir_filter(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """upfirdn2d with up=down=1: zero-pad (pad0 before, pad1 after) then convolve (flipped kernel)
    channel by channel, as one grouped conv."""
    channels = x.shape[1]
    pad0, pad1 = pad
    x = F.pad(x, (max(pad0, 0), max(pad1, 0), max(pad0, 0), max(pad1, 0)))
    if pad0 < 0 or pad1 < 0:
        x = x[:, :, max(-pad0, 0):x.shape[2] - max(-pad1, 0), max(-pad0, 0):x.shape[3] - max(-pad1, 0)]
    weight = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=channels)


def fir_upsample2x(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """upfirdn2d with up=2: zero insertion, pad, FIR. A stride-2 transposed grouped conv does the
    zero insertion and the filtering in one op; the result is then cropped/padded to the same window."""
    channels, height, width = x.shape[1:]
    taps = kernel.shape[0]
    weight = kernel.to(x.dtype)[None, None].expand(channels, 1, *kernel.shape)
    full = F.conv_transpose2d(x, weight, stride=2, groups=channels)  # length 2(n-1)+taps
    pad0, pad1 = pad
    start = taps - 1 - pad0
    out_h, out_w = 2 * height + pad0 + pad1 - taps + 1, 2 * width + pad0 + pad1 - taps + 1
    if start < 0 or start + out_h > full.shape[2] or start + out_w > full.shape[3]:
        # Rare windows that reach past the transposed conv's support: pad with the zeros it implies.
        extra_before = max(0, -start)
        extra_after = max(0, start + max(out_h, out_w) - min(full.shape[2], full.shape[3]))
        full = F.pad(full, (extra_before, extra_after, extra_before, extra_after))
        start += extra_before
    return full[:, :, start:start + out_h, start:start + out_w]


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2,
                     scale: float = SQRT2) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * scale


# ------------------------------------------------------------------------------------------ layers
class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return fused_leaky_relu(x, self.bias)


class Blur(nn.Module):
    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        # The upsampling factor squared keeps the mean after zero insertion (official convention).
        self.register_buffer("kernel", make_blur_kernel(taps, upsample_factor ** 2))
        self.pad = pad

    def forward(self, x):
        return fir_filter(x, self.kernel, self.pad)


class Upsample(nn.Module):
    def __init__(self, taps: Sequence[float], factor: int = 2):
        super().__init__()
        if factor != 2:
            raise ValueError("only 2x upsampling is implemented")
        self.register_buffer("kernel", make_blur_kernel(taps, factor ** 2))
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return fir_upsample2x(x, self.kernel, self.pad)


class EqualConv2d(nn.Module):
    """Convolution with the equalised learning rate: weights stored ~N(0,1), scaled by 1/sqrt(fan_in)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    @torch.no_grad()
    def fold_scale(self, gain: float = 1.0) -> None:
        """Inference: store ``weight * scale * gain`` (and ``bias * gain``) so forward scales by 1."""
        self.weight.mul_(self.scale * gain)
        if self.bias is not None:
            self.bias.mul_(gain)
        self.scale = 1.0


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim, bias_init=0.0, lr_mul=1.0, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x):
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ConvLayer(nn.Sequential):
    """Encoder block: [blur], equalised conv (stride 2 when downsampling), bias + leaky ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, downsample=False, blur_taps=(1, 3, 3, 1)):
        layers = []
        if downsample:
            p = (len(blur_taps) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_taps, pad=((p + 1) // 2, p // 2)))
            layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=2, padding=0, bias=False))
        else:
            layers.append(EqualConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False))
        layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)
        self.folded = False

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        """leaky_relu(conv(x) + b) * sqrt2 == leaky_relu(conv_{sqrt2 w}(x) + sqrt2 b): fold the gain and
        the bias into the convolution, leaving one in-place activation."""
        if self.folded:
            return
        conv, activation = self[-2], self[-1]
        conv.fold_scale(SQRT2)
        conv.bias = nn.Parameter(activation.bias * SQRT2)
        self.folded = True

    def forward(self, x):
        if not self.folded:
            return super().forward(x)
        for layer in list(self)[:-1]:
            x = layer(x)
        return F.leaky_relu_(x, 0.2)


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, style_dim, demodulate=True, upsample=False,
                 blur_taps=(1, 3, 3, 1)):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            p = (len(blur_taps) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_taps, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.output_gain = 1.0  # inference: a positive gain folded in from the activation that follows
        # Inference (fold_for_inference): sum over the kernel of (scale * weight)^2, shape (out, in).
        self.register_buffer("squared_weight_sums", None, persistent=False)

    @torch.no_grad()
    def fold_for_inference(self, output_gain: float = 1.0) -> None:
        """Store ``scale * weight`` and its per-(out, in) squared kernel sums, so that a forward pass
        modulates the weight in one multiplication: the demodulation factor of output o is
        rsqrt(sum_i style_i^2 * sum_k w_oik^2), a matrix-vector product instead of a pass over the weight."""
        if self.squared_weight_sums is not None:
            return
        self.weight.mul_(self.scale)
        self.scale = 1.0
        self.squared_weight_sums = self.weight[0].pow(2).sum(dim=(2, 3))
        self.output_gain = float(output_gain)

    def modulated_weight(self, style: torch.Tensor) -> torch.Tensor:
        """(batch, out, in, k, k) weight of the folded layer for ``style`` (batch, in), gain included."""
        factor = style[:, None, :]  # (batch, 1, in)
        if self.demodulate:
            demodulation = torch.rsqrt(style.pow(2) @ self.squared_weight_sums.t() + 1e-8)  # (batch, out)
            factor = factor * demodulation[:, :, None]
        if self.output_gain != 1.0:
            factor = factor * self.output_gain
        return self.weight * factor[..., None, None]

    def forward(self, x, style):
        batch, in_channels, height, width = x.shape
        if self.squared_weight_sums is not None:
            weight = self.modulated_weight(self.modulation(style))
        else:
            style = self.modulation(style).view(batch, 1, in_channels, 1, 1)
            weight = self.weight * self.scale * style  # (batch, out, in, k, k)
            if self.demodulate:
                weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        k = self.kernel_size
        x = x.reshape(1, batch * in_channels, height, width)
        if self.upsample:
            # conv_transpose2d wants (in, out/groups, k, k) per group.
            weight = weight.transpose(1, 2).reshape(batch * in_channels, self.out_channels, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, padding=0, groups=batch)
            out = self.blur(out.reshape(batch, self.out_channels, *out.shape[2:]))
            return out
        out = F.conv2d(x, weight.reshape(batch * self.out_channels, in_channels, k, k),
                       padding=self.padding, groups=batch)
        return out.reshape(batch, self.out_channels, *out.shape[2:])


class NoiseInjection(nn.Module):
    """GPEN feeds encoder features here. Concatenated (isconcat) or added, after a learned scale."""

    def __init__(self, isconcat: bool = True):
        super().__init__()
        self.isconcat = isconcat
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise=None):
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, x.shape[2], x.shape[3]).normal_()
        if self.isconcat:
            return torch.cat((x, self.weight * noise), dim=1)
        return x + self.weight * noise


class StyledConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, style_dim, upsample=False,
                 blur_taps=(1, 3, 3, 1), isconcat=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, upsample=upsample,
                                    blur_taps=blur_taps)
        self.noise = NoiseInjection(isconcat)
        self.activate = FusedLeakyReLU(out_channels * (2 if isconcat else 1))
        self.folded = False
        self.register_buffer("scaled_bias", None, persistent=False)  # inference: sqrt(2) * activation bias

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        """Fold the activation gain sqrt(2) into the modulated weight and precompute sqrt(2) * bias."""
        if self.folded:
            return
        self.conv.fold_for_inference(output_gain=SQRT2)
        self.scaled_bias = self.activate.bias * SQRT2
        self.folded = True

    def forward(self, x, style, noise=None):
        if not self.folded or noise is None or not self.noise.isconcat:
            if self.folded:
                raise NotImplementedError("the folded StyledConv needs GPEN's concatenated noise input")
            return self.activate(self.noise(self.conv(x, style), noise))
        # [conv + b1, noise weight * noise + b2] written into one buffer, then one in-place leaky ReLU:
        # the same as cat -> + bias -> leaky ReLU -> * sqrt2 with sqrt2 folded into weights and biases.
        y = self.conv(x, style)
        channels = y.shape[1]
        memory_format = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) and not \
            y.is_contiguous() else torch.contiguous_format
        out = torch.empty((y.shape[0], 2 * channels, *y.shape[2:]), dtype=y.dtype, device=y.device,
                          memory_format=memory_format)
        bias = self.scaled_bias.view(1, -1, 1, 1)
        torch.add(y, bias[:, :channels], out=out[:, :channels])
        torch.addcmul(bias[:, channels:], noise, self.noise.weight * SQRT2, out=out[:, channels:])
        return F.leaky_relu_(out, 0.2)


class ToRGB(nn.Module):
    def __init__(self, in_channels, style_dim, upsample=True, blur_taps=(1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_taps)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        if self.conv.squared_weight_sums is not None:  # folded: in-place adds on the fresh conv output
            out = self.conv(x, style).add_(self.bias)
            return out if skip is None else out.add_(self.upsample(skip))
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int):
        return self.input.expand(batch, -1, -1, -1)


def channel_table(channel_multiplier: float, narrow: float) -> dict[int, int]:
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
             256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier,
             2048: 8 * channel_multiplier}
    return {res: int(c * narrow) for res, c in table.items()}


class Generator(nn.Module):
    """StyleGAN2 synthesis network with GPEN's concatenated noise inputs."""

    def __init__(self, size, style_dim, n_mlp, channel_multiplier=2, blur_kernel=(1, 3, 3, 1), lr_mlp=0.01,
                 isconcat=True, narrow=1):
        super().__init__()
        self.size, self.style_dim = size, style_dim
        self.log_size = int(math.log2(size))
        multiplier = 2 if isconcat else 1
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True)
                                                  for _ in range(n_mlp)])
        self.channels = channel_table(channel_multiplier, narrow)
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_taps=blur_kernel,
                                isconcat=isconcat)
        self.to_rgb1 = ToRGB(self.channels[4] * multiplier, style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channels = self.channels[4]
        for level in range(3, self.log_size + 1):
            out_channels = self.channels[2 ** level]
            self.convs.append(StyledConv(in_channels * multiplier, out_channels, 3, style_dim, upsample=True,
                                         blur_taps=blur_kernel, isconcat=isconcat))
            self.convs.append(StyledConv(out_channels * multiplier, out_channels, 3, style_dim,
                                         blur_taps=blur_kernel, isconcat=isconcat))
            self.to_rgbs.append(ToRGB(out_channels * multiplier, style_dim, blur_taps=blur_kernel))
            in_channels = out_channels
        self.n_latent = self.log_size * 2 - 2

    def forward(self, latent_w, noise, trace=None):
        """``latent_w`` (N, style_dim) mapped style (one for every layer); ``noise`` one map per StyledConv."""
        out = self.input(latent_w.shape[0])
        out = self.conv1(out, latent_w, noise[0])
        skip = self.to_rgb1(out, latent_w)
        if trace is not None:
            trace[f"rgb_{skip.shape[-1]}"] = skip
        for index, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * index](out, latent_w, noise[1 + 2 * index])
            out = self.convs[2 * index + 1](out, latent_w, noise[2 + 2 * index])
            skip = to_rgb(out, latent_w, skip)
            if trace is not None:
                trace[f"rgb_{skip.shape[-1]}"] = skip
        return skip


class FullGenerator(nn.Module):
    """GPEN: encoder + StyleGAN2 decoder. Input/output RGB in [-1, 1] (output raw, not clamped)."""

    def __init__(self, size, style_dim, n_mlp, channel_multiplier=2, narrow=1, blur_kernel=(1, 3, 3, 1),
                 lr_mlp=0.01, isconcat=True):
        super().__init__()
        blur_kernel = tuple(blur_kernel)
        self.size = size
        self.log_size = int(math.log2(size))
        if 2 ** self.log_size != size or size < 8:
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        self.generator = Generator(size, style_dim, n_mlp, channel_multiplier=channel_multiplier,
                                   blur_kernel=blur_kernel, lr_mlp=lr_mlp, isconcat=isconcat, narrow=narrow)
        channels = channel_table(channel_multiplier, narrow)
        self.ecd0 = nn.Sequential(ConvLayer(3, channels[size], 1))
        in_channels = channels[size]
        for index, level in enumerate(range(self.log_size, 2, -1), start=1):
            out_channels = channels[2 ** (level - 1)]
            setattr(self, f"ecd{index}", nn.Sequential(ConvLayer(in_channels, out_channels, 3, downsample=True,
                                                                 blur_taps=blur_kernel)))
            in_channels = out_channels
        self.final_linear = nn.Sequential(EqualLinear(channels[4] * 16, style_dim, activation=True))

    def forward(self, x, trace: dict | None = None):
        """``x`` (N, 3, size, size) RGB in [-1, 1] -> restored (N, 3, size, size). ``trace`` collects
        intermediate arrays (enc_i, style_code, latent_w, rgb_R) for parity checks."""
        features = []
        for index in range(self.log_size - 1):
            x = getattr(self, f"ecd{index}")(x)
            features.append(x)
            if trace is not None:
                trace[f"enc_{index}"] = x
        style_code = self.final_linear(x.reshape(x.shape[0], -1))
        latent_w = self.generator.style(style_code)
        if trace is not None:
            trace["style_code"] = style_code
            trace["latent_w"] = latent_w
        # Coarsest first; every resolution feeds two StyledConvs except 4x4 (one).
        noise = [features[-1]]
        for feature in reversed(features[:-1]):
            noise += [feature, feature]
        out = self.generator(latent_w, noise, trace)
        if trace is not None:
            trace["output"] = out
        return out


def prepare_for_inference(model: FullGenerator, channels_last: bool = True) -> FullGenerator:
    """The backend's fast CPU path, in place (load the weights first: scales are folded into the
    stored weights; calling it again changes nothing). eval(), no parameter gradients, folded layers
    (see the module docstring) and, by default, channels-last weights, which oneDNN's convolutions
    and the depthwise FIR filters run faster on. Same function within float rounding."""
    model.eval().requires_grad_(False)
    for module in model.modules():
        if isinstance(module, (ConvLayer, StyledConv)):
            module.fold_for_inference()
        elif isinstance(module, ToRGB):
            module.conv.fold_for_inference()
    if channels_last:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim == 4:  # the modulated weights are 5-d and rebuilt every call
                    parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
    return model


def blur_kernel_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buf for name, buf in model.state_dict().items() if name.endswith(".kernel")}


# ------------------------------------------------------------------------------------------ parity
def _build_for_parity(config: dict) -> FullGenerator:
    model = FullGenerator(**config["fixture_constructor"])
    return model.eval()


def _outputs_for_parity(model: FullGenerator, arrays: dict) -> dict:
    import numpy as np

    trace: dict = {}
    model(torch.from_numpy(np.asarray(arrays["input"], dtype=np.float32)), trace=trace)
    return {name: value.detach().cpu().numpy() for name, value in trace.items()}


def parity_model():
    from napari_faceedit.parity import ParityModel

    required = ("output", "style_code", "latent_w", "enc_0", "rgb_4")
    return ParityModel("gpen", _build_for_parity, _outputs_for_parity, required=required,
                       optimise=prepare_for_inference)
