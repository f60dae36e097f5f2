"""A small CelebA attribute classifier of our own (trained by ``benchmarks/stargan_eval.py`` on
shared/data/celeba), used to estimate a face's source attributes and to score StarGAN edits.

Input: the aligned CelebA framing (178 px centre crop of an aligned CelebA image, i.e. what the
"celeba" alignment template gives) resized to 64x64, RGB in [-1, 1]. Output: one logit per attribute
of ``CLASSIFIER_ATTRIBUTES`` (> 0 means "has it").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import CELEBA_ATTRIBUTES_5

CLASSIFIER_ATTRIBUTES = CELEBA_ATTRIBUTES_5
CLASSIFIER_SIZE = 64
CLASSIFIER_FILE = "celeba_attr_classifier.pt"


def _conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class AttributeClassifier(nn.Module):
    """Five 3x3 conv layers (strided stem, then conv + max-pool), global average pool, linear head:
    about 0.4 M parameters and 25 M multiply-adds per 64 px image, cheap enough to train on a CPU."""

    def __init__(self, n_attributes: int = len(CLASSIFIER_ATTRIBUTES), width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv(3, w, stride=2),                          # 32x32
            *_conv(w, w), nn.MaxPool2d(2),                   # 16x16
            *_conv(w, 2 * w), nn.MaxPool2d(2),               # 8x8
            *_conv(2 * w, 4 * w), nn.MaxPool2d(2),           # 4x4
            *_conv(4 * w, 8 * w),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(8 * w, n_attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (CLASSIFIER_SIZE, CLASSIFIER_SIZE):
            x = F.interpolate(x, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="bilinear",
                              align_corners=False, antialias=True)
        h = self.features(x).mean(dim=(2, 3))
        return self.head(self.dropout(h))


def default_classifier_path() -> Path:
    """models/celeba_attr_classifier.pt, shipped inside this plugin's package (may be absent)."""
    return Path(__file__).resolve().parent / "models" / CLASSIFIER_FILE


def load_classifier(path: Path | None = None) -> AttributeClassifier | None:
    """Our trained classifier in eval mode, or None when the file is absent."""
    path = Path(path) if path else default_classifier_path()
    if not path.exists():
        return None
    from napari_faceedit import weights

    model = AttributeClassifier()
    weights.load_state_dict(path, model)  # stored float16; copied into the float32 model
    return model.eval()


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) or (H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def predict_probabilities(model: AttributeClassifier, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Probabilities (N, A) for uint8 images (N, H, W, 3) or a [-1, 1] tensor (N, 3, H, W)."""
    x = images if isinstance(images, torch.Tensor) else images_to_tensor(images)
    with torch.inference_mode():
        return torch.sigmoid(model.eval()(x.float().cpu())).numpy()
