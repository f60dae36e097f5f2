"""Face restoration backends: GPEN-BFR-256/512/1024 (published weights) and ``restore-compact`` (ours, embedded).

Whole-photo pipeline shared by both: detect faces -> align each to the restorer's framing with the
5 landmarks -> restore the crop -> paste it back with a feathered soft mask (from the face parser
when one is installed) and colour matching. Only pixels under a face's paste mask change; a
grayscale photo stays grayscale. ``params``:

- ``upscale`` (1 or 2): 2 also returns ``extras["upscaled_image"]``, the whole photo upsampled 2x
  (bicubic) with the faces restored at that resolution (``Result.image`` keeps the input size).
- ``return_crops`` (bool): ``extras["crops_before"]`` / ``extras["crops_after"]`` (N, S, S, 3).
- ``mask`` ("auto" | "parser" | "soft"): paste mask; "auto" uses the face parser (``faceparse-compact``)
  when it is ready, "soft" a feathered box over the crop.
- ``color_match`` (bool, default True: the restored face's Lab mean is matched to the input face's), ``whole_image`` (bool, ``restore-compact`` only: run the
  network over the whole image instead of per face, e.g. for an already cropped face).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, ClassVar, Optional

import numpy as np

from napari_faceedit.backend import Backend
from napari_faceedit.tasks import ParseRequest, Provenance, RestoreRequest, Result, Task

COMPACT_FILE = "restore_compact.pt"
# Parser classes kept in the paste mask: skin, nose, glasses, eyes, brows, ears, mouth, lips, hair.
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)
GRAY_TOLERANCE = 2
# Images with an aspect ratio (height / width) in this range count as face crops when no face is detected.
CROP_ASPECT_RANGE = (0.6, 1.6)
FEATHER = 0.1  # soft edge of the paste mask, as a fraction of the crop size


# ----------------------------------------------------------------------------------------- helpers
def is_grayscale(image: np.ndarray, tolerance: int = GRAY_TOLERANCE) -> bool:
    spread = image.max(axis=2).astype(np.int16) - image.min(axis=2).astype(np.int16)
    return bool(np.percentile(spread, 99) <= tolerance)


def to_gray(image: np.ndarray) -> np.ndarray:
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def compact_weights_path() -> Path:
    """``resources/models/restore_compact.pt`` shipped with the core package."""
    from napari_faceedit.weights import bundled_path

    return bundled_path(COMPACT_FILE)


def match_mean_colour(restored: np.ndarray, reference: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Shift ``restored``'s Lab mean (weighted) to ``reference``'s: fixes a colour cast without
    flattening the restored contrast (a std match would undo part of the sharpening)."""
    from skimage import color

    w = weight[..., None] / max(float(weight.sum()), 1e-9)
    a = color.rgb2lab(restored / 255.0)
    b = color.rgb2lab(reference / 255.0)
    shifted = a + ((b * w).sum((0, 1)) - (a * w).sum((0, 1)))
    return np.clip(np.rint(color.lab2rgb(shifted) * 255.0), 0, 255).astype(np.uint8)


def parser_mask(crop: np.ndarray) -> Optional[np.ndarray]:
    """Face region of ``crop`` from the compact face parser (dilated, feathered), or None without one."""
    try:
        from scipy import ndimage

        from napari_faceedit.registry import get_registry
        from napari_faceedit.runner import execute

        parser = get_registry().get("faceparse-compact")
        if not parser.ready()[0]:
            return None
        result = execute(parser, ParseRequest(image=crop, params={"whole_image": True}))
    except Exception:  # noqa: BLE001 - the parser is optional: fall back to the square mask
        return None
    if result is None or result.labels is None:
        return None
    region = np.isin(result.labels, FACE_CLASSES)
    if region.mean() < 0.05:
        return None
    size = crop.shape[0]
    # Grown a little: paste_back feathers the mask inwards and outwards.
    return ndimage.binary_dilation(region, iterations=max(1, size // 32)).astype(np.float32)


def upsample_photo(image: np.ndarray, factor: int) -> np.ndarray:
    from PIL import Image

    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width * factor, height * factor), Image.Resampling.BICUBIC))


# ----------------------------------------------------------------------------------------- pipeline
class FaceRestorationBackend(Backend):
    """Shared detect/align/restore/paste pipeline; subclasses provide ``load`` and the framing."""

    tasks = frozenset({Task.RESTORE})
    uses_torch = True
    template: ClassVar[str] = "ffhq"

    def crop_size_for(self, photo: np.ndarray, landmarks: np.ndarray) -> int:
        raise NotImplementedError

    def load(self, device: str) -> tuple[Callable[[np.ndarray], np.ndarray], str, str]:
        """(restore_crop(uint8 crop) -> uint8 crop, weights id, sha256)."""
        raise NotImplementedError

    def restore_whole(self, image: np.ndarray, restore_crop) -> np.ndarray:
        """The whole image taken as one face crop: resized to the model size and back."""
        from PIL import Image

        size = self.crop_size_for(image, None)
        height, width = image.shape[:2]
        crop = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
        restored = restore_crop(crop)
        return np.asarray(Image.fromarray(restored).resize((width, height), Image.Resampling.BICUBIC))

    def run(self, request: RestoreRequest, progress, cancelled) -> Result:
        from napari_faceedit.face.align import align_face, paste_back, soft_box_mask
        from napari_faceedit.face.detect import detect_faces
        from napari_faceedit.face.pipeline import select_faces

        params = dict(request.params)
        upscale = int(params.get("upscale", 1))
        if upscale not in (1, 2):
            raise ValueError(f"upscale must be 1 or 2, got {upscale}")
        return_crops = bool(params.get("return_crops", False))
        mask_mode = str(params.get("mask", "auto"))
        if mask_mode not in ("auto", "parser", "soft"):
            raise ValueError(f"mask must be 'auto', 'parser' or 'soft', got {mask_mode!r}")
        color_match = bool(params.get("color_match", True))
        image = request.image
        gray = is_grayscale(image)

        progress(0, 1, "loading the restoration network")
        restore_crop, weights_id, sha = self.load(request.device)
        self.check(cancelled)
        notes = []

        def finish(out: np.ndarray, extras: dict, note: str) -> Result:
            notes.append(note)
            return Result(image=out, extras=extras, provenance=Provenance(
                backend=self.name, backend_version=self.version, task=request.task.value, parameters={},
                seed=request.seed, device=request.device, wall_time_s=0.0, weights_id=weights_id,
                weights_sha256=sha, notes="; ".join(notes)))

        if params.get("whole_image", False):
            out = self.restore_whole(image, restore_crop)
            progress(1, 1, "done")
            return finish(to_gray(out) if gray else out, {}, "whole image restored as one face crop")

        progress(0, 1, "detecting faces")
        faces = detect_faces(image)
        faces = [faces[i] for i in select_faces(faces, request.face_index)]
        self.check(cancelled)
        height, width = image.shape[:2]
        if not faces and CROP_ASPECT_RANGE[0] <= height / width <= CROP_ASPECT_RANGE[1]:
            # No face found in a face-shaped image: most likely an (aligned) face crop too degraded to detect.
            out = self.restore_whole(image, restore_crop)
            progress(1, 1, "done")
            return finish(to_gray(out) if gray else out, {},
                          "no face detected: the whole image was restored as one face crop")
        total = len(faces) + 1
        photos = {1: image}
        if upscale == 2:
            photos[2] = upsample_photo(image, 2)
        crops_before, crops_after = [], []
        for number, face in enumerate(faces, start=1):
            progress(number, total, f"restoring face {number} of {len(faces)}")
            by_size: dict[int, tuple[np.ndarray, Optional[np.ndarray]]] = {}
            for factor, photo in photos.items():
                landmarks = face.landmarks * factor
                size = self.crop_size_for(photo, landmarks)
                aligned = align_face(photo, landmarks, size, template=self.template)
                if size not in by_size:  # GPEN's fixed size: the 2x photo reuses the restored crop
                    restored = restore_crop(aligned.crop)
                    restored = to_gray(restored) if gray else restored
                    mask = parser_mask(restored) if mask_mode in ("auto", "parser") else None
                    if mask is None and mask_mode == "parser" and "face parser unavailable" not in notes[-1:]:
                        notes.append("face parser unavailable: soft box mask used")
                    by_size[size] = (restored, mask)
                restored, mask = by_size[size]
                if color_match and not gray:
                    weight = mask if mask is not None else soft_box_mask(size, FEATHER)
                    restored = match_mean_colour(restored, aligned.crop, weight)
                pasted = np.asarray(paste_back(photo, restored, aligned, mask=mask, feather=FEATHER))
                if gray:  # resampling/blending must not tint a gray photo
                    changed = np.any(pasted != photo, axis=2)
                    pasted = pasted.copy()
                    pasted[changed] = to_gray(pasted)[changed]
                photos[factor] = pasted
                if factor == 1:
                    crops_before.append(aligned.crop)
                    crops_after.append(restored)
            self.check(cancelled)  # between faces: a cancelled run returns nothing
        progress(total, total, "done")
        extras = {}
        if return_crops and crops_before:
            extras["crops_before"] = np.stack(crops_before)
            extras["crops_after"] = np.stack(crops_after)
        if upscale == 2:
            extras["upscaled_image"] = photos[2]
        return finish(photos[1], extras, f"{len(faces)} face(s) restored" if faces else "no face detected: image unchanged")


# ----------------------------------------------------------------------------------------- GPEN
@functools.lru_cache(maxsize=1)
def _load_gpen(weights_id: str, size: int, device: str):
    import torch

    from .model import BFR_CONFIGS, FullGenerator

    try:
        from napari_faceedit import weights
    except ImportError as exc:
        raise RuntimeError(f"cannot load '{weights_id}': the weights manager is not installed") from exc
    if weights.missing([weights_id]):
        raise RuntimeError(f"cannot run GPEN: {weights.how_to_get(weights_id)}")
    model = FullGenerator(**BFR_CONFIGS[size])
    sha = weights.load_state_dict(weights_id, model)
    return model.eval().to(torch.device(device)), sha


def gpen_restore_fn(model, device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """Official pre/post-processing on an RGB crop: [-1, 1] in, ``y * 0.5 + 0.5`` clipped out.
    (The official code reads BGR and flips to RGB before the network; we start from RGB.)"""
    import torch

    def restore(crop: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.array(crop, dtype=np.float32))  # a copy: crops may be read-only
            x = x.to(device)
            x = (x.permute(2, 0, 1)[None] / 255.0 - 0.5) / 0.5
            y = model(x)[0] * 0.5 + 0.5
            y = (y.clamp(0, 1) * 255.0).round().permute(1, 2, 0)
            return y.to(torch.uint8).cpu().numpy()

    return restore


class GPENBackend(FaceRestorationBackend):
    """Published GPEN-BFR weights. ``model`` injects a network (tests, experiments): its ``size`` is used."""

    version = "1"
    size: ClassVar[int] = 512
    priority = 80
    limitations = ("Needs the published GPEN weights (academic/non-commercial licence). Invents plausible "
                   "detail: identity may drift on very degraded faces. Faces smaller than about 20 px or in "
                   "profile may be missed by the detector. CPU: seconds per face.")

    def __init__(self, model=None):
        self._injected = model

    def crop_size_for(self, photo, landmarks) -> int:
        return int(self._injected.size) if self._injected is not None else self.size

    def load(self, device: str):
        if self._injected is not None:
            return gpen_restore_fn(self._injected.eval().to(device), device), "injected", ""
        model, sha = _load_gpen(self.weights[0], self.size, device)
        return gpen_restore_fn(model, device), self.weights[0], sha


class GPEN256(GPENBackend):
    name = "gpen-bfr-256"
    size = 256
    weights = ("gpen-bfr-256",)
    priority = 70
    description = "GPEN blind face restoration at 256 px (GAN prior, Yang et al. CVPR 2021); every detected face."


class GPEN512(GPENBackend):
    name = "gpen-bfr-512"
    size = 512
    weights = ("gpen-bfr-512",)
    priority = 80
    description = "GPEN blind face restoration at 512 px (GAN prior, Yang et al. CVPR 2021); every detected face."


class GPEN1024(GPENBackend):
    name = "gpen-bfr-1024"
    size = 1024
    weights = ("gpen-bfr-1024",)
    priority = 60
    description = ("GPEN blind face restoration at 1024 px (ModelScope release); slow on CPU "
                   "(tens of seconds per face).")


# ----------------------------------------------------------------------------------------- compact
@functools.lru_cache(maxsize=2)
def load_compact(path: str | None = None, device: str = "cpu"):
    """(CompactRestorer in eval mode, sha256); cached per file and device."""
    from napari_faceedit import weights

    from .restore_net import CompactRestorer

    model = CompactRestorer()
    sha = weights.load_bundled(COMPACT_FILE, model, path)
    return model.float().eval().to(device), sha


class CompactRestoration(FaceRestorationBackend):
    """Our compact restorer (``restore_net.py``), trained on CelebA faces with synthetic degradations.

    Runs on aligned face crops in the CelebA framing, at the face's own resolution in the photo but
    never below 96 px (the training scale: CelebA crops of 89 px). Small faces are thus enlarged
    to the scale the network learned its face prior at; large faces are not shrunk (no detail lost)."""

    name = "restore-compact"
    version = "1"
    template = "celeba"
    priority = 20
    description = ("Our compact restoration U-Net (0.4 M parameters) trained on CelebA faces against blur, "
                   "downsampling, noise and JPEG; embedded, no download. Restores each detected face.")
    limitations = ("Small network trained on low-resolution CelebA faces: removes noise, blocking and mild blur "
                   "but cannot invent fine detail like GPEN. Faces far from frontal are restored less well.")
    bundled = (COMPACT_FILE,)
    min_crop = 96
    max_crop = 1024  # bigger faces would lose detail when the crop is pasted back enlarged

    def __init__(self, model=None):
        self._injected = model

    def crop_size_for(self, photo, landmarks) -> int:
        from napari_faceedit.face.align import similarity_transform, template_points

        matrix = similarity_transform(landmarks, template_points(self.template, self.min_crop))
        photo_to_crop_scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        native = self.min_crop / max(photo_to_crop_scale, 1e-6)
        return int(np.clip(4 * round(native / 4), self.min_crop, self.max_crop))

    def load(self, device: str):
        from .restore_net import restore_image

        if self._injected is not None:
            model, weights_id, sha = self._injected.eval().to(device), "injected", ""
        else:
            model, sha = load_compact(None, device)
            weights_id = COMPACT_FILE
        return (lambda crop: restore_image(model, crop, device)), weights_id, sha

    def restore_whole(self, image, restore_crop) -> np.ndarray:
        return restore_crop(image)
