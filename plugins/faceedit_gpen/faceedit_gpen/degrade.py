"""Synthetic degradation model for blind face restoration (after the GPEN paper, Yang et al. 2021):

    y = resize_back(JPEG_q(resize_down(x * k, 1/s) + n_sigma))

with k a Gaussian or motion blur kernel, s a downsampling factor in [1, 4], n Gaussian noise and a
JPEG round trip at a random quality. Works on uint8 (H, W, 3) RGB arrays with a numpy Generator.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass(frozen=True)
class DegradationConfig:
    blur_probability: float = 0.9
    motion_probability: float = 0.25  # share of blurs that are motion blur
    gaussian_sigma: tuple[float, float] = (0.2, 3.0)
    motion_length: tuple[int, int] = (3, 11)
    scale: tuple[float, float] = (1.0, 4.0)
    noise_probability: float = 0.8
    noise_sigma: tuple[float, float] = (1.0, 15.0)  # on the 0..255 scale
    jpeg_probability: float = 0.8
    jpeg_quality: tuple[int, int] = (25, 90)
    gray_probability: float = 0.1  # both target and input turned gray (old photos)


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


def motion_kernel(length: int, angle_deg: float) -> np.ndarray:
    """A straight line of ``length`` pixels at ``angle_deg``, drawn with sub-pixel sampling."""
    size = length if length % 2 == 1 else length + 1
    kernel = np.zeros((size, size), dtype=np.float64)
    centre = (size - 1) / 2.0
    theta = np.deg2rad(angle_deg)
    for t in np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, 4 * length):
        x, y = centre + t * np.cos(theta), centre + t * np.sin(theta)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                if 0 <= y0 + dy < size and 0 <= x0 + dx < size:
                    kernel[y0 + dy, x0 + dx] += wy * wx
    return kernel / kernel.sum()


def _blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        out[..., c] = ndimage.convolve(image[..., c], kernel, mode="reflect")
    return out


def _resize(image: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    method = [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS][rng.integers(3)]
    channels = [Image.fromarray(image[..., c].astype(np.float32), mode="F").resize((width, height), method)
                for c in range(image.shape[2])]
    return np.stack([np.asarray(c) for c in channels], axis=2)


def _jpeg(image_uint8: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image_uint8).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def to_gray(image_uint8: np.ndarray) -> np.ndarray:
    luma = image_uint8.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def degrade(image: np.ndarray, rng: np.random.Generator, config: DegradationConfig = DegradationConfig(),
            allow_gray: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(target, degraded)``, both uint8 (H, W, 3); the target is the input, or its gray version."""
    target = np.asarray(image, dtype=np.uint8)
    if allow_gray and rng.random() < config.gray_probability:
        target = to_gray(target)
    height, width = target.shape[:2]
    work = target.astype(np.float32)
    if rng.random() < config.blur_probability:
        if rng.random() < config.motion_probability:
            kernel = motion_kernel(int(rng.integers(config.motion_length[0], config.motion_length[1] + 1)),
                                   float(rng.uniform(0, 180)))
        else:
            kernel = gaussian_kernel(float(rng.uniform(*config.gaussian_sigma)))
        work = _blur(work, kernel)
    scale = float(rng.uniform(*config.scale))
    small_w, small_h = max(4, int(round(width / scale))), max(4, int(round(height / scale)))
    if (small_w, small_h) != (width, height):
        work = _resize(work, small_w, small_h, rng)
    if rng.random() < config.noise_probability:
        sigma = float(rng.uniform(*config.noise_sigma))
        if rng.random() < 0.3:  # luminance-only noise
            work = work + rng.normal(0.0, sigma, work.shape[:2])[..., None].astype(np.float32)
        else:
            work = work + rng.normal(0.0, sigma, work.shape).astype(np.float32)
    work_uint8 = np.clip(np.rint(work), 0, 255).astype(np.uint8)
    if rng.random() < config.jpeg_probability:
        work_uint8 = _jpeg(work_uint8, int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1)))
    if (small_w, small_h) != (width, height):
        work_uint8 = np.clip(np.rint(_resize(work_uint8.astype(np.float32), width, height, rng)), 0, 255).astype(np.uint8)
    if np.array_equal(target[..., 0], target[..., 1]) and np.array_equal(target[..., 1], target[..., 2]):
        work_uint8 = to_gray(work_uint8)  # colour noise / JPEG chroma must not tint a gray photo
    return target, work_uint8
