"""Reading and writing images and label maps (PNG, atomically): the CLI's file side."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def read_image(path: Path) -> np.ndarray:
    """RGB uint8, EXIF orientation applied, alpha dropped, grayscale expanded."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return np.asarray(image.convert("RGB"))


def read_index_map(path: Path) -> np.ndarray:
    """A single-channel map of integers (label indices, or a mask where non-zero/white = set)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("RGB", "RGBA"):
            return np.asarray(image.convert("L"))
        return np.asarray(image)


def write_atomic(path: Path, array: np.ndarray) -> None:
    """Write a PNG via a temporary file in the same folder, so a failure never leaves half a file."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if array.ndim == 2:
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"label values {array.min()}..{array.max()} do not fit an 8-bit PNG")
        image = Image.fromarray(array.astype(np.uint8), mode="L")
    else:
        image = Image.fromarray(array.astype(np.uint8), mode="RGB")
    fd, tmp = tempfile.mkstemp(suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_images(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    return [path]


def companion(path_or_dir: Path | None, image_path: Path) -> Path | None:
    """The mask/labels file that goes with ``image_path``: the file itself, or the same stem in a folder."""
    if path_or_dir is None:
        return None
    path_or_dir = Path(path_or_dir)
    if path_or_dir.is_dir():
        for suffix in (".png", image_path.suffix):
            candidate = path_or_dir / (image_path.stem + suffix)
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"no file for '{image_path.stem}' in {path_or_dir}")
    if not path_or_dir.exists():
        raise FileNotFoundError(f"not found: {path_or_dir}")
    return path_or_dir
