"""StarGAN generator and discriminator (Choi et al., CVPR 2018), key-compatible with the authors'
published CelebA checkpoints (``main.0.weight`` ... ``main.21.weight``, 103 generator keys).

Generator layout (indices of ``main``, which the checkpoint keys follow)::

    0 conv7x7(3+c -> d)  1 IN  2 ReLU                       stem
    3 conv4x4/2(d -> 2d) 4 IN  5 ReLU                       down 1
    6 conv4x4/2(2d->4d)  7 IN  8 ReLU                       down 2
    9..8+R  residual blocks (conv3x3 IN ReLU conv3x3 IN) + skip
    convT4x4/2, IN, ReLU  (x2)                              up
    conv7x7(d -> 3), tanh

Normalisation. The official layers are ``InstanceNorm2d(affine=True, track_running_stats=True)``.
The authors' test script never calls ``eval()``, so the published results normalise every image with
its own statistics; in eval mode the same layers would use the stored running statistics and give
very different pictures. We make that choice explicit and independent of train()/eval():

* ``norm_mode="instance"`` (default): per-image statistics, i.e. the published behaviour;
* ``norm_mode="running"``: the stored running mean/variance.

Running buffers are updated only while training with gradients enabled, never at inference.

:func:`prepare_for_inference` switches a loaded generator to the backend's fast CPU path (the same
function within float rounding; the parity fixture is checked on it too).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attributes import CELEBA_ATTRIBUTES_5, HAIR_COLORS_5, NORM_MODES  # noqa: F401 (re-exported)


class StarInstanceNorm(nn.Module):
    """Instance norm with affine parameters and running statistics, whose normalisation statistics
    are chosen by ``mode`` rather than by train()/eval(). State-dict layout equals
    ``nn.InstanceNorm2d(n, affine=True, track_running_stats=True)``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, mode: str = "instance"):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.mode = mode
        # Set by prepare_for_inference: same statistics, computed by faster kernels.
        self.fast_kernels = False
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in NORM_MODES:
            raise ValueError(f"norm_mode must be one of {NORM_MODES}, got {value!r}")
        self._mode = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mode == "running":
            if self.fast_kernels:
                # Stored statistics per channel: eval batch norm, without instance_norm's per-sample copies.
                return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                    training=False, eps=self.eps)
            return F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                   use_input_stats=False, eps=self.eps)
        # Keep the running estimates meaningful for checkpoints we train ourselves (as the official
        # training does), but never touch them at inference (no_grad / inference_mode).
        update = self.training and torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        if update:
            self.num_batches_tracked.add_(1)
            return F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                   use_input_stats=True, momentum=self.momentum, eps=self.eps)
        if self.fast_kernels:
            # Group norm with one channel per group is instance norm; its CPU kernel is several times
            # faster than instance_norm (which runs batch norm over an N*C-channel copy).
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        return F.instance_norm(x, None, None, self.weight, self.bias, use_input_stats=True, eps=self.eps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Checkpoints written before PyTorch 0.4.1 have no num_batches_tracked; the value is unused here.
        key = prefix + "num_batches_tracked"
        if key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, mode={self._mode}"


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            StarInstanceNorm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            StarInstanceNorm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class Generator(nn.Module):
    """``Generator(conv_dim=64, c_dim=5, repeat_num=6)`` is the official CelebA 128 and 256 model.

    ``forward(x, c)``: ``x`` (N, 3, H, W) RGB in [-1, 1], H and W multiples of 4; ``c`` (N, c_dim)
    target labels (1 = has the attribute, 0 = has not; fractional values interpolate). Returns
    (N, 3, H, W) in [-1, 1].
    """

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6, norm_mode: str = "instance"):
        super().__init__()
        self.conv_dim, self.c_dim, self.repeat_num = conv_dim, c_dim, repeat_num
        layers: list[nn.Module] = [
            nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False),
            StarInstanceNorm(conv_dim),
            nn.ReLU(inplace=True),
        ]
        channels = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
                       StarInstanceNorm(channels * 2), nn.ReLU(inplace=True)]
            channels *= 2
        layers += [ResidualBlock(channels) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                       StarInstanceNorm(channels // 2), nn.ReLU(inplace=True)]
            channels //= 2
        layers += [nn.Conv2d(channels, 3, 7, 1, 3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.norm_mode = norm_mode

    # Indices into ``main`` of the tapped intermediate outputs (see the parity fixture's README).
    @property
    def feature_indices(self) -> dict[str, int]:
        last_res = 8 + self.repeat_num
        return {"feat_down": 8, "feat_bottleneck": last_res, "pre_tanh": len(self.main) - 2}

    @property
    def norm_mode(self) -> str:
        return self._norm_mode

    @norm_mode.setter
    def norm_mode(self, value: str) -> None:
        if value not in NORM_MODES:
            raise ValueError(f"norm_mode must be one of {NORM_MODES}, got {value!r}")
        self._norm_mode = value
        for module in self.modules():
            if isinstance(module, StarInstanceNorm):
                module.mode = value

    @staticmethod
    def with_labels(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Tile the label vector over the image and append it after the RGB channels."""
        c = c.to(dtype=x.dtype, device=x.device).view(c.size(0), c.size(1), 1, 1)
        return torch.cat([x, c.expand(-1, -1, x.size(2), x.size(3))], dim=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.main(self.with_labels(x, c))

    def forward_with_features(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Output plus the intermediate arrays named in ``feature_indices`` (for parity debugging)."""
        taps = {index: name for name, index in self.feature_indices.items()}
        features: dict[str, torch.Tensor] = {}
        h = self.with_labels(x, c)
        for index, layer in enumerate(self.main):
            h = layer(h)
            if index in taps:
                features[taps[index]] = h.clone()  # later in-place ReLUs must not alter the tap
        return h, features


def prepare_for_inference(generator: Generator, channels_last: bool = True) -> Generator:
    """Switch a loaded generator to the fast CPU inference path, in place, and return it: eval(), no
    parameter gradients, group-norm / eval-batch-norm kernels for the normalisation layers (both modes)
    and channels-last convolution weights (oneDNN's preferred layout; inputs may stay NCHW). Weights
    and state-dict keys are unchanged, so it may be called before or after loading a checkpoint."""
    generator.eval().requires_grad_(False)
    for module in generator.modules():
        if isinstance(module, StarInstanceNorm):
            module.fast_kernels = True
    if channels_last:
        generator.to(memory_format=torch.channels_last)
    return generator


class Discriminator(nn.Module):
    """PatchGAN critic with an attribute-classification head (official layout: ``main.{0,2,..}``,
    ``conv1`` real/fake map, ``conv2`` class logits). ``image_size / 2**repeat_num`` must be an
    integer >= 1 (128 and 256 with repeat_num 6 in the paper)."""

    def __init__(self, image_size: int = 128, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6):
        super().__init__()
        if image_size % (2 ** repeat_num) != 0:
            raise ValueError(f"image_size {image_size} is not divisible by 2**repeat_num = {2 ** repeat_num}")
        layers: list[nn.Module] = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
        channels = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            channels *= 2
        kernel_size = image_size // (2 ** repeat_num)
        self.main = nn.Sequential(*layers)
        self.conv1 = nn.Conv2d(channels, 1, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, c_dim, kernel_size, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.main(x)
        return self.conv1(h), self.conv2(h).view(h.size(0), -1)


def default_d_repeat_num(image_size: int) -> int:
    """The paper's 6 for 128/256; fewer for small test sizes so the class head keeps a >= 2 px kernel."""
    return max(1, min(6, int(math.log2(image_size)) - 1))
