"""A compact restoration U-Net (our embedded default restorer).

Space-to-depth by 2 at the input so that every convolution runs at half resolution or less (cheap on
CPU), residual blocks at 1/2 and 1/4 resolution with a skip, depth-to-space at the output, and the
network predicts a correction added to the degraded input. Fully convolutional; the input side must
be a multiple of 4 (``restore_image`` pads).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_CONFIG = {"width": 32, "blocks_high": 2, "blocks_low": 4}


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.1))


class CompactRestorer(nn.Module):
    def __init__(self, width: int = 32, blocks_high: int = 2, blocks_low: int = 4):
        super().__init__()
        self.head = nn.Conv2d(12, width, 3, padding=1)
        self.encoder = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks_high)])
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.middle = nn.Sequential(*[ResidualBlock(2 * width) for _ in range(blocks_low)])
        self.up = nn.Conv2d(2 * width, 4 * width, 1)
        self.decoder = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks_high)])
        self.tail = nn.Conv2d(width, 12, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # start as the identity: training only learns the correction
        nn.init.zeros_(self.tail.bias)

    def forward(self, x):
        """``x`` (N, 3, H, W) in [0, 1], H and W multiples of 4 -> restored image, same range and size."""
        features = F.leaky_relu(self.head(F.pixel_unshuffle(x, 2)), 0.1)
        skip = self.encoder(features)
        low = self.middle(F.leaky_relu(self.down(skip), 0.1))
        high = skip + F.pixel_shuffle(self.up(low), 2)
        return x + F.pixel_shuffle(self.tail(self.decoder(high)), 2)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def restore_image(model: CompactRestorer, image_uint8: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Restore one uint8 (H, W, 3) image (any size; reflect-padded to a multiple of 4)."""
    height, width = image_uint8.shape[:2]
    x = torch.from_numpy(np.array(image_uint8, dtype=np.float32)).to(device)  # a copy: inputs may be read-only
    x = x.permute(2, 0, 1)[None] / 255.0
    pad_h, pad_w = (-height) % 4, (-width) % 4
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if min(height, width) > max(pad_h, pad_w) else "replicate")
    y = model(x)[0, :, :height, :width].clamp(0, 1)
    return (y.permute(1, 2, 0) * 255.0).round().to(torch.uint8).cpu().numpy()
