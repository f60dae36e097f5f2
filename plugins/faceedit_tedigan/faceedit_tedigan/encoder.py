"""TediGAN's image encoder: the domain-guided encoder of In-Domain GAN Inversion (Zhu et al., ECCV 2020),
image (N, 3, 256, 256) in [-1, 1] -> W+ code (N, 14, 512) of the StyleGAN generator in ``stylegan.py``.

State-dict compatible with the published ``styleganinv_ffhq256_encoder.pth`` (FFHQ-256 setting:
``use_wscale=False``, ``use_bn=True``):
* block0: 3x3 conv 3->64 (no bias) -> BatchNorm -> LeakyReLU 0.2;
* blocks 1..6: 2x2 average pooling, then a residual block whose main path is two 3x3 convs (each +bias
  held in ``wscale{1,2}.bias``, -> BatchNorm -> LeakyReLU) and whose shortcut is a 1x1 conv -> BatchNorm
  -> LeakyReLU when the channel count changes (identity otherwise); the sum gets no activation;
* last block: flatten (C, H, W order) -> dense 16384 -> 7168 scaled by 1/sqrt(16384) (equalised LR,
  gain 1, no bias) -> BatchNorm over the 7168 features.
BatchNorms run on their running statistics (eval mode, eps 1e-5), also when TediGAN back-propagates
through the encoder for its regulariser. Keys are ``block{i}.bn.bn.*``: a wrapper around the BatchNorm.

:func:`prepare_for_inference` switches a loaded encoder to the backend's fast path: every BatchNorm
(and the conv bias / dense scale before it) folded into the convolution or dense layer, in-place
LeakyReLUs, channels-last weights, and the 1024-channel 3x3 convolutions on 8x8 and 4x4 maps as im2col +
one matrix product. Same function within float rounding (parity fixtures pass on it).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from napari_faceedit.folding import fold_batchnorm_into

from .stylegan import LRELU_SLOPE, load_strict, num_synthesis_layers


class WrappedBatchNorm(nn.Module):
    """BatchNorm inside a ``bn`` attribute (official key layout ``<name>.bn.<param>``)."""

    def __init__(self, features: int, dims: int = 2):
        super().__init__()
        self.bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


# im2col + GEMM instead of oneDNN's direct convolution: small maps with many channels, where the direct
# convolution runs at about half MKL's GEMM speed (measured on CPU: 1024 channels at 8x8, 26 vs 15 ms).
GEMM_CONV_MIN_CHANNELS = 1024
GEMM_CONV_MAX_PIXELS = 64


def conv3x3_as_gemm(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a 3x3, stride-1, padding-1 convolution with bias and an NCHW-contiguous weight."""
    batch, _, height, width = x.shape
    columns = F.unfold(x, 3, padding=1)  # (N, C_in * 9, H * W), the weight's (C_in, kh, kw) order
    weight = conv.weight.view(conv.out_channels, -1)
    if batch == 1:  # addmm: MKL's GEMM directly (baddbmm with an expanded weight is slower)
        return torch.addmm(conv.bias.view(-1, 1), weight, columns[0]).view(1, conv.out_channels, height, width)
    out = torch.baddbmm(conv.bias.view(1, -1, 1), weight.expand(batch, -1, -1), columns)
    return out.view(batch, conv.out_channels, height, width)


class ConvBias(nn.Module):
    """The ``wscale`` module of the official code with ``use_wscale=False``: scale 1, holds the bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(1, -1, 1, 1)


class InputBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = WrappedBatchNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.bn, nn.Identity):  # folded: conv (+ bias) -> in-place LeakyReLU
            return F.leaky_relu_(self.conv(x), LRELU_SLOPE)
        return F.leaky_relu(self.bn(self.conv(x)), LRELU_SLOPE)

    def fold_for_inference(self) -> None:
        if not isinstance(self.bn, nn.Identity):
            fold_batchnorm_into(self.conv, self.bn.bn)
            self.bn = nn.Identity()


class ResidualDownBlock(nn.Module):
    """2x2 average pool, then main path + shortcut (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.projects_shortcut = in_channels != out_channels
        if self.projects_shortcut:
            self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
            self.bn = WrappedBatchNorm(out_channels)
        hidden = min(in_channels, out_channels)
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.wscale1 = ConvBias(hidden)
        self.bn1 = WrappedBatchNorm(hidden)
        self.conv2 = nn.Conv2d(hidden, out_channels, 3, padding=1, bias=False)
        self.wscale2 = ConvBias(out_channels)
        self.bn2 = WrappedBatchNorm(out_channels)

        self.folded = False
        self.gemm_convs = False  # prepare_for_inference: 3x3 convolutions as GEMMs on small maps

    def conv3x3(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        if self.gemm_convs and x.shape[-2] * x.shape[-1] <= GEMM_CONV_MAX_PIXELS:
            return conv3x3_as_gemm(x, conv)
        return conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, 2)
        if self.folded:  # every norm and bias inside the convolutions; activations in place
            h = F.leaky_relu_(self.conv3x3(self.conv1, x), LRELU_SLOPE)
            h = F.leaky_relu_(self.conv3x3(self.conv2, h), LRELU_SLOPE)
            return h.add_(F.leaky_relu_(self.conv(x), LRELU_SLOPE) if self.projects_shortcut else x)
        shortcut = F.leaky_relu(self.bn(self.conv(x)), LRELU_SLOPE) if self.projects_shortcut else x
        h = F.leaky_relu(self.bn1(self.wscale1(self.conv1(x))), LRELU_SLOPE)
        h = F.leaky_relu(self.bn2(self.wscale2(self.conv2(h))), LRELU_SLOPE)
        return h + shortcut

    def fold_for_inference(self) -> None:
        if self.folded:
            return
        if self.projects_shortcut:
            fold_batchnorm_into(self.conv, self.bn.bn)
        fold_batchnorm_into(self.conv1, self.bn1.bn, self.wscale1.bias)
        fold_batchnorm_into(self.conv2, self.bn2.bn, self.wscale2.bias)
        self.folded = True


class LatentHead(nn.Module):
    """Flatten -> equalised-LR dense (gain 1, no bias) -> BatchNorm1d, no activation."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features, bias=False)
        self.bn = WrappedBatchNorm(out_features, dims=1)
        self.weight_scale = 1.0 / math.sqrt(in_features)

        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            return self.fc(x.flatten(1))
        return self.bn(self.fc(x.flatten(1)) * self.weight_scale)

    def fold_for_inference(self) -> None:
        if not self.folded:
            fold_batchnorm_into(self.fc, self.bn.bn, weight_scale=self.weight_scale)
            self.folded = True


class StyleGANEncoder(nn.Module):
    def __init__(self, resolution: int = 256, w_dim: int = 512, image_channels: int = 3,
                 channels_base: int = 64, channels_max: int = 1024):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        self.resolution, self.w_dim, self.image_channels = resolution, w_dim, image_channels
        self.num_layers = num_synthesis_layers(resolution)
        num_conv_blocks = int(math.log2(resolution)) - 1  # 256 px -> 7 blocks, the last at 4x4
        channels = [min(channels_base * 2 ** i, channels_max) for i in range(num_conv_blocks)]
        self.block0 = InputBlock(image_channels, channels[0])
        for index in range(1, num_conv_blocks):
            self.add_module(f"block{index}", ResidualDownBlock(channels[index - 1], channels[index]))
        self.add_module(f"block{num_conv_blocks}", LatentHead(channels[-1] * 4 * 4, self.num_layers * w_dim))
        self.num_blocks = num_conv_blocks + 1

    @classmethod
    def from_official_config(cls, constructor: dict) -> "StyleGANEncoder":
        """Build from the official constructor arguments (``config.json['constructor']``)."""
        if constructor.get("use_wscale", False) or not constructor.get("use_bn", True):
            raise NotImplementedError("only the FFHQ-256 encoder setting (use_wscale=False, use_bn=True) is supported")
        return cls(resolution=constructor["resolution"], w_dim=constructor.get("w_space_dim", 512),
                   image_channels=constructor.get("image_channels", 3),
                   channels_base=constructor.get("encoder_channels_base", 64),
                   channels_max=constructor.get("encoder_channels_max", 1024))

    def forward_flat(self, image: torch.Tensor) -> torch.Tensor:
        """image (N, 3, res, res) in [-1, 1] -> flat code (N, num_layers*w_dim), the raw network output."""
        expected = (self.image_channels, self.resolution, self.resolution)
        if image.ndim != 4 or tuple(image.shape[1:]) != expected:
            raise ValueError(f"image must be (N, {', '.join(map(str, expected))}), got {tuple(image.shape)}")
        x = image
        for index in range(self.num_blocks):
            x = getattr(self, f"block{index}")(x)
        return x

    def flat_to_wp(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(flat.shape[0], self.num_layers, self.w_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (N, 3, res, res) in [-1, 1] -> W+ code (N, num_layers, w_dim)."""
        return self.flat_to_wp(self.forward_flat(image))

    def load_official_state_dict(self, state: dict) -> None:
        """Strict load; ``num_batches_tracked`` (unused in eval) may be absent, as in old checkpoints.
        Load before :func:`prepare_for_inference` (folding changes the weights and keys)."""
        state = dict(state)
        for name in self.state_dict():
            if name.endswith(".num_batches_tracked") and name not in state:
                state[name] = torch.zeros((), dtype=torch.long)
        load_strict(self, state, "TediGAN StyleGAN encoder")


def prepare_for_inference(encoder: StyleGANEncoder, channels_last: bool = True,
                          gemm_small_convs: bool = True) -> StyleGANEncoder:
    """The backend's fast path, in place (load the weights first; calling it again changes nothing):
    eval(), no parameter gradients, batch norms folded (see the module docstring), channels-last
    weights (on which the 2x2 average pooling and the convolutions run faster) and, with
    ``gemm_small_convs``, the 1024-channel 3x3 convolutions as im2col + GEMM."""
    encoder.eval().requires_grad_(False)
    for index in range(encoder.num_blocks):
        getattr(encoder, f"block{index}").fold_for_inference()
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    for index in range(1, encoder.num_blocks - 1):
        block = getattr(encoder, f"block{index}")
        if gemm_small_convs and block.conv1.in_channels >= GEMM_CONV_MIN_CHANNELS:
            block.gemm_convs = True
            with torch.no_grad():  # the GEMM reads the weight as an (out, in * 9) matrix
                for conv in (block.conv1, block.conv2):
                    conv.weight.data = conv.weight.data.contiguous()
    return encoder
