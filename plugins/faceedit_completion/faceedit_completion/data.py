"""Training and dev data for the completion GAN.

Two sources, both read from folders outside the repository (never copied into it):

* CelebA (``--data-celeba DIR``: ``DIR/images/*.jpg`` + ``DIR/attributes.csv`` with 1/-1 values, e.g.
  ``shared/data/celeba``): aligned faces (89x109 here, CelebA's 178x218 halved). The centred square
  (89x89, i.e. the "celeba" alignment template's 178 px crop) is kept; attributes are known.
* CelebAMask-HQ (``--data-celebamask DIR``: the folder with ``train/``, or a folder with ``images/``
  and ``masks/``): 256 px faces with 19-class label maps, which give the face-component holes.
  Their attributes are unknown, so their attribute loss is masked out and their conditioning vector
  is all 0 ("not specified"). ``val/`` is the project's test set: it is refused here.

A fixed dev split is held out of training for model selection: the last ``dev_celeba`` CelebA
images (by file name) and the last ``dev_celebamask`` CelebAMask-HQ training pairs.

Faces are decoded once at their own size (cached as .npz) and resized per batch to the stage
resolution. Holes are drawn on a grid that is a power-of-two multiple of the stage resolution and
pooled down with "any pixel is hole", as the generator itself downsamples holes.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from napari_faceedit.training import celebamask_training_folder
from napari_faceedit.vocab import FLIP_PERMUTATION

from .attributes import N_ATTRIBUTES, columns_in
from .holes import random_hole

DEV_CELEBA = 250
DEV_CELEBAMASK = 50
DEV_HOLE_SEED = 20180123  # the dev holes are the same in every run
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ------------------------------------------------------------------------------------ folders
def celeba_paths(root: Path) -> tuple[Path, Path]:
    """(images folder, attributes.csv) for a CelebA folder (or its images/ subfolder)."""
    root = Path(root)
    for folder in (root, root.parent):
        if (folder / "images").is_dir() and (folder / "attributes.csv").is_file():
            return folder / "images", folder / "attributes.csv"
    raise FileNotFoundError(f"{root}: expected images/ and attributes.csv (as in shared/data/celeba)")




# ------------------------------------------------------------------------------------ decoding
def centre_square(image, size: int | None = None):
    """Centre crop to the largest square (PIL image), optionally resized to ``size``."""
    from PIL import Image

    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return image


def read_celeba(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """-> (file names sorted, images (N, S, S, 3) uint8, labels (N, N_ATTRIBUTES) float32 in {0, 1})."""
    from PIL import Image

    image_dir, table = celeba_paths(root)
    with open(table, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        rows = {r[0].strip(): r[1:] for r in reader if r and r[0].strip()}
    columns = columns_in(header[1:])
    names = sorted(n for n in rows if (image_dir / n).is_file())
    if not names:
        raise FileNotFoundError(f"none of the images in {table} is in {image_dir}")
    images, labels = [], []
    side = None
    for name in names:
        image = Image.open(image_dir / name).convert("RGB")
        side = side or min(image.size)
        images.append(np.asarray(centre_square(image, side), np.uint8))
        values = rows[name]
        labels.append([float(values[c]) > 0 for c in columns])
    return names, np.stack(images), np.asarray(labels, np.float32)


def read_celebamask(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """-> (stems sorted, images (N, S, S, 3) uint8, label maps (N, S, S) uint8)."""
    from PIL import Image

    folder = celebamask_training_folder(root)
    stems, images, masks = [], [], []
    for path in sorted((folder / "images").iterdir()):
        mask_path = folder / "masks" / (path.stem + ".png")
        if path.suffix.lower() not in IMAGE_SUFFIXES or not mask_path.is_file():
            continue
        image = centre_square(Image.open(path).convert("RGB"))
        mask = Image.open(mask_path)
        if mask.mode not in ("L", "P"):
            mask = mask.convert("L")
        mask = centre_square(mask)
        if mask.size != image.size:
            mask = mask.resize(image.size, Image.NEAREST)
        stems.append(path.stem)
        images.append(np.asarray(image, np.uint8))
        masks.append(np.asarray(mask, np.uint8))
    if not stems:
        raise FileNotFoundError(f"no image/mask pairs under {folder}")
    return stems, np.stack(images), np.stack(masks)


def _cached(kind: str, root: Path, cache_dir: Path | None, reader):
    """Decode once, then reuse an .npz keyed by the folder, its file names and sizes."""
    if cache_dir is None:
        return reader(root)
    folder = celeba_paths(root)[0] if kind == "celeba" else celebamask_training_folder(root) / "images"
    listing = "\n".join(f"{p.name}:{p.stat().st_size}" for p in sorted(folder.iterdir()))
    key = hashlib.sha1(f"{kind}|{folder.resolve()}|{listing}".encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"faceedit_completion_{kind}_{key}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            return [str(n) for n in data["names"]], data["images"], data["extra"]
    names, images, extra = reader(root)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, names=np.array(names), images=images, extra=extra)
    os.replace(tmp, cache)
    return names, images, extra


# ------------------------------------------------------------------------------------ face sets
@dataclass
class FaceSet:
    """Faces of one source at their stored size. ``labels``/``known``: (N, N_ATTRIBUTES) {0, 1};
    ``label_maps``: (N, S, S) class indices or None."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    known: np.ndarray
    label_maps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> FaceSet:
        maps = None if self.label_maps is None else self.label_maps[index]
        return FaceSet(self.name, self.images[index], self.labels[index], self.known[index], maps)


@dataclass
class Batch:
    """Tensors at one stage resolution: ``image`` (B, 3, r, r) in [-1, 1], ``hole`` (B, 1, r, r)
    {0, 1}, ``labels``/``known`` (B, N_ATTRIBUTES) {0, 1}, ``source`` names per sample."""

    image: torch.Tensor
    hole: torch.Tensor
    labels: torch.Tensor
    known: torch.Tensor
    source: list[str]

    def to(self, device) -> Batch:
        return Batch(self.image.to(device), self.hole.to(device), self.labels.to(device),
                     self.known.to(device), self.source)


def load_sources(celeba: Path | None, celebamask: Path | None, cache_dir: Path | None = None,
                 dev_celeba: int = DEV_CELEBA, dev_celebamask: int = DEV_CELEBAMASK
                 ) -> tuple[list[FaceSet], list[FaceSet]]:
    """(training sets, dev sets): the last ``dev_*`` faces of each source are the dev split."""
    if celeba is None and celebamask is None:
        raise ValueError("give at least one of --data-celeba and --data-celebamask")
    train, dev = [], []
    if celeba is not None:
        _, images, labels = _cached("celeba", Path(celeba), cache_dir, read_celeba)
        full = FaceSet("celeba", images, labels, np.ones_like(labels))
        _split(full, dev_celeba, train, dev)
    if celebamask is not None:
        _, images, maps = _cached("celebamask", Path(celebamask), cache_dir, read_celebamask)
        unknown = np.zeros((len(images), N_ATTRIBUTES), np.float32)
        full = FaceSet("celebamask", images, unknown, unknown.copy(), maps)
        _split(full, dev_celebamask, train, dev)
    return train, dev


def _split(full: FaceSet, n_dev: int, train: list, dev: list) -> None:
    if n_dev >= len(full):
        raise ValueError(f"{full.name}: {len(full)} faces cannot spare {n_dev} for the dev split")
    cut = len(full) - n_dev
    train.append(full.subset(slice(0, cut)))
    if n_dev > 0:
        dev.append(full.subset(slice(cut, None)))


def to_resolution(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float (B, 3, size, size) in [-1, 1] (bicubic up, antialiased down)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if x.shape[-1] != size:
        mode = "bicubic" if size > x.shape[-1] else "bilinear"
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=size < x.shape[-1])
        x = x.clamp(-1, 1)
    return x


def pool_hole(hole: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, 1, S, S) -> (B, 1, r, r) for S a power-of-two multiple of r: a pixel is hole if any of
    its S/r x S/r block is, exactly as the generator's own downsampling treats holes."""
    factor = hole.shape[-1] // resolution
    if factor * resolution != hole.shape[-1]:
        raise ValueError(f"stage resolution {resolution} does not divide the hole size {hole.shape[-1]}")
    return F.max_pool2d(hole, factor) if factor > 1 else hole


def hole_size(full_resolution: int, resolution: int) -> int:
    """Where training holes are drawn: the network's full resolution at the last stages, coarser
    (but at least 32 px and 2x the stage) early on, where drawing at full size would only cost time."""
    return min(full_resolution, max(32, 2 * resolution))


def make_batch(sets: list[FaceSet], picks: list[tuple[int, int]], flips: np.ndarray, holes: list[np.ndarray],
               resolution: int) -> Batch:
    """Assemble a batch at ``resolution`` from (set index, face index) picks, horizontal flips and
    holes (all of one size, a power-of-two multiple of ``resolution``)."""
    image = torch.empty(len(picks), 3, resolution, resolution)
    for s, face in enumerate(sets):  # one resize per source (faces of a source share their size)
        rows = [k for k, (pick_set, _) in enumerate(picks) if pick_set == s]
        if rows:
            chosen = face.images[[picks[k][1] for k in rows]]
            flipped = np.where(flips[rows][:, None, None, None], chosen[:, :, ::-1], chosen)
            image[rows] = to_resolution(flipped, resolution)
    labels = [sets[s].labels[i] for s, i in picks]
    known = [sets[s].known[i] for s, i in picks]
    source = [sets[s].name for s, _ in picks]
    hole = pool_hole(torch.from_numpy(np.stack(holes)[:, None].astype(np.float32)), resolution)
    return Batch(image, hole, torch.from_numpy(np.stack(labels)), torch.from_numpy(np.stack(known)), source)


def _label_map(face: FaceSet, index: int, flip: bool) -> np.ndarray | None:
    if face.label_maps is None:
        return None
    labels = face.label_maps[index]
    # A mirrored face's left eye is on the other side: swap the l_/r_ classes too.
    return FLIP_PERMUTATION[labels[:, ::-1]] if flip else labels


def sample_batch(rng: np.random.Generator, sets: list[FaceSet], batch_size: int, full_resolution: int,
                 resolution: int, celebamask_fraction: float = 0.3) -> Batch:
    """A random training batch: each sample from CelebAMask-HQ with probability
    ``celebamask_fraction`` (when both sources are present), a random face, a random flip and a
    :func:`~faceedit_completion.holes.random_hole` (component holes where a label map exists)."""
    by_name = {s.name: k for k, s in enumerate(sets)}
    size = hole_size(full_resolution, resolution)
    picks, flips, holes = [], [], []
    for _ in range(batch_size):
        if len(sets) == 1:
            s = 0
        else:
            s = by_name["celebamask"] if rng.random() < celebamask_fraction else by_name["celeba"]
        i = int(rng.integers(len(sets[s])))
        flip = bool(rng.random() < 0.5)
        picks.append((s, i))
        flips.append(flip)
        holes.append(random_hole(rng, size, _label_map(sets[s], i, flip)))
    return make_batch(sets, picks, np.array(flips), holes, resolution)


def dev_batches(sets: list[FaceSet], full_resolution: int, resolution: int, batch_size: int = 25,
                limit: int = 0):
    """The fixed dev split in batches: same faces and same holes (seeded per face, drawn at the
    network's full resolution) every time."""
    picks = [(s, i) for s, face in enumerate(sets) for i in range(len(face))]
    if limit:
        picks = picks[:: max(1, len(picks) // limit)][:limit]
    for start in range(0, len(picks), batch_size):
        chunk = picks[start:start + batch_size]
        holes = [random_hole(np.random.default_rng([DEV_HOLE_SEED, s, i]), full_resolution,
                             _label_map(sets[s], i, False)) for s, i in chunk]
        yield make_batch(sets, chunk, np.zeros(len(chunk), bool), holes, resolution)
