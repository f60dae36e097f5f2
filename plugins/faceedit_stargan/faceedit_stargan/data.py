"""CelebA-style training data: a folder of aligned faces plus an attribute table.

Attribute tables accepted:
* CSV with a header ``filename,<attr>,...`` and values 1/-1 (or 1/0), e.g. shared/data/celeba/attributes.csv;
* the original ``list_attr_celeba.txt``: first line the image count, second line the 40 names,
  then ``filename v1 ... v40`` separated by whitespace.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from .model import CELEBA_ATTRIBUTES_5


def read_attribute_table(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Return (filenames, attribute names, values (N, A) float32 in {0, 1})."""
    path = Path(path)
    text = path.read_text()
    first = text.split("\n", 1)[0]
    if "," in first:
        reader = csv.reader(text.splitlines())
        header = next(reader)
        names = [h.strip() for h in header[1:]]
        rows = [r for r in reader if r and r[0].strip()]
        filenames = [r[0].strip() for r in rows]
        values = np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float32)
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        start = 1 if len(lines[0].split()) == 1 and lines[0].strip().isdigit() else 0
        names = lines[start].split()
        filenames, rows = [], []
        for line in lines[start + 1:]:
            cells = line.split()
            filenames.append(cells[0])
            rows.append([float(v) for v in cells[1:]])
        values = np.array(rows, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(f"{path}: rows do not have one value per attribute ({len(names)} names)")
    return filenames, names, (values > 0).astype(np.float32)


def centre_crop_resize(image: Image.Image, crop_size: int | None, image_size: int) -> Image.Image:
    """The authors' preprocessing: centre crop (default: the largest square), then resize."""
    width, height = image.size
    crop = min(width, height) if crop_size is None else min(crop_size, width, height)
    left, top = (width - crop) // 2, (height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BICUBIC)
    return image


class AttributeFaces:
    """Images (cached in memory as uint8 after first use) and their selected binary labels."""

    def __init__(self, image_dir: Path, attribute_file: Path, image_size: int,
                 selected: tuple[str, ...] = CELEBA_ATTRIBUTES_5, crop_size: int | None = None,
                 max_images: int | None = None, skip_last: int = 0):
        filenames, names, values = read_attribute_table(attribute_file)
        unknown = [s for s in selected if s not in names]
        if unknown:
            raise ValueError(f"attribute(s) {unknown} not in {attribute_file}")
        columns = [names.index(s) for s in selected]
        image_dir = Path(image_dir)
        keep = [i for i, f in enumerate(filenames) if (image_dir / f).exists()]
        if not keep:
            raise FileNotFoundError(f"none of the images listed in {attribute_file} is in {image_dir}")
        if skip_last:
            keep = keep[:-skip_last]
        if max_images:
            keep = keep[:max_images]
        self.paths = [image_dir / filenames[i] for i in keep]
        self.labels = values[np.array(keep)][:, columns]
        self.selected = tuple(selected)
        self.image_size, self.crop_size = image_size, crop_size
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        if index not in self._cache:
            with Image.open(self.paths[index]) as img:
                img = centre_crop_resize(img.convert("RGB"), self.crop_size, self.image_size)
                self._cache[index] = np.asarray(img, dtype=np.uint8)
        return self._cache[index]

    def batch(self, indices, flip: np.ndarray | None = None):
        """Float tensors: images (B, 3, S, S) in [-1, 1] and labels (B, A)."""
        import torch

        images = np.stack([self.image(int(i)) for i in indices])
        if flip is not None:
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        return x, torch.from_numpy(self.labels[np.asarray(indices)])
