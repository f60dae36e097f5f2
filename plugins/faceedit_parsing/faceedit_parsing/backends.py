"""Face-parsing backends: ``faceparse-compact`` (ours, embedded) and ``bisenet`` (79999_iter.pth).

Whole-photo parsing: detect -> align each face to the parser's framing -> parse the crop at the
model's size -> warp the labels back into the photo -> one label map (a later face never
overwrites an earlier face's non-background pixels). If no face is found (or no detector is
installed) and the image looks like a face crop, the whole image is parsed.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np

from napari_faceedit.backend import Backend
from napari_faceedit.tasks import ParseRequest, Provenance, Result, Task
from napari_faceedit.vocab import BISENET_TO_CELEBAMASK

COMPACT_FILE = "faceparse_compact.pt"


def compact_weights_path() -> Path:
    """``resources/models/faceparse_compact.pt`` shipped with the core package."""
    from napari_faceedit.weights import bundled_path

    return bundled_path(COMPACT_FILE)


@functools.lru_cache(maxsize=2)
def load_compact(path: str | None = None, device: str = "cpu"):
    """(model in eval mode, sha256). Cached: one load per process and file."""
    from napari_faceedit import weights

    from .compact import CompactParser

    model = CompactParser()
    sha = weights.load_bundled(COMPACT_FILE, model, path)
    return model.float().to(device).eval(), sha


@functools.lru_cache(maxsize=1)
def load_bisenet(device: str = "cpu"):
    from napari_faceedit import weights

    from .bisenet import BiSeNet

    model = BiSeNet(n_classes=19)
    sha = weights.load_state_dict(BiSeNetParser.weights[0], model)
    return model.to(device).eval(), sha


def looks_like_face_crop(image: np.ndarray) -> bool:
    """Treated as a face crop when no face is detected: the face pipeline's aspect rule."""
    from napari_faceedit.face.pipeline import ASSUMED_CROP_ASPECT

    h, w = image.shape[:2]
    return ASSUMED_CROP_ASPECT[0] <= w / h <= ASSUMED_CROP_ASPECT[1]


def find_faces(image: np.ndarray) -> tuple[list, str]:
    """Detected faces (largest first) and a note; an absent detector means "no faces" with a note."""
    try:
        from napari_faceedit.face.detect import detect_faces
    except ImportError as exc:
        return [], f"no face detector ({exc})"
    try:
        return detect_faces(image), ""
    except Exception as exc:  # noqa: BLE001 - e.g. detector weights not installed: fall back to the crop path
        return [], f"face detection unavailable: {exc}"


def parse_photo(
    image: np.ndarray,
    parse_crop: Callable[[np.ndarray], np.ndarray],
    crop_size: int,
    template: str,
    progress,
    cancelled,
    face_index: int | None = None,
    whole_image: bool = False,
) -> tuple[np.ndarray, dict, list[str]]:
    """-> (labels HxW int64 CelebAMask-HQ order, extras, notes). ``parse_crop`` maps an RGB crop to labels."""
    notes: list[str] = []
    faces = []
    if not whole_image:
        progress(0, 2, "detecting faces")
        faces, note = find_faces(image)
        if note:
            notes.append(note)
        Backend.check(cancelled)
    if face_index is not None and faces:
        from napari_faceedit.face.pipeline import select_faces

        faces = [faces[i] for i in select_faces(faces, face_index)]

    h, w = image.shape[:2]
    labels = np.zeros((h, w), np.int64)
    extras: dict[str, np.ndarray] = {}
    if not faces:
        if not (whole_image or looks_like_face_crop(image)):
            notes.append("no face found; the image does not look like a face crop, so nothing was parsed")
            progress(1, 1, "no face found")
            return labels, extras, notes
        notes.append("parsed the whole image as one face crop")
        progress(1, 2, "parsing the whole image")
        labels = parse_crop(image).astype(np.int64)
        progress(2, 2, "done")
        return labels, extras, notes

    from napari_faceedit.face.align import align_face, warp_labels_back

    total = len(faces) + 1
    extras["landmarks"] = np.stack([f.landmarks for f in faces]).astype(np.float32)
    extras["boxes"] = np.stack([f.box for f in faces]).astype(np.float32)
    for i, face in enumerate(faces):
        Backend.check(cancelled)
        progress(i + 1, total, f"parsing face {i + 1} of {len(faces)}")
        aligned = align_face(image, face.landmarks, crop_size, template=template)
        face_labels = np.asarray(warp_labels_back(parse_crop(aligned.crop), aligned, (h, w))).astype(np.int64)
        free = labels == 0  # earlier faces keep their pixels
        labels[free] = face_labels[free]
    progress(total, total, "done")
    notes.append(f"{len(faces)} face(s) parsed")
    return labels, extras, notes


class CompactParserBackend(Backend):
    name = "faceparse-compact"
    version = "1"
    bundled = (COMPACT_FILE,)
    tasks = frozenset({Task.PARSE})
    description = ("Our compact face parser (0.6 M parameters, MobileNetV2-style U-Net) trained on CelebAMask-HQ "
                   "pairs; embedded, no download. 19 CelebAMask-HQ classes.")
    limitations = ("Trained on 750 aligned CelebAMask-HQ faces at 256 px: rare classes (hat, earrings, necklace, "
                   "eyeglasses) are weak; faces far from frontal or very small faces parse less well.")
    priority = 50
    uses_torch = True
    template = "celebamask"

    def run(self, request: ParseRequest, progress, cancelled) -> Result:
        from .compact import INPUT_SIZE, TTA_MODES, predict

        model, sha = load_compact(None, "cpu" if request.device.startswith("mps") else request.device)
        tta = str(request.params.get("tta", "multiscale"))
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")

        def parse_crop(crop):
            return predict(model, crop, **TTA_MODES[tta])

        labels, extras, notes = parse_photo(
            request.image, parse_crop, INPUT_SIZE, self.template, progress, cancelled,
            request.face_index, bool(request.params.get("whole_image", False)),
        )
        return Result(labels=labels, extras=extras, provenance=Provenance(
            weights_id=COMPACT_FILE, weights_sha256=sha, notes="; ".join(notes)))


class BiSeNetParser(Backend):
    name = "bisenet"
    version = "1"
    tasks = frozenset({Task.PARSE})
    description = ("BiSeNet face parser (ResNet-18) with the published 79999_iter.pth weights "
                   "(face-parsing.PyTorch), labels mapped to CelebAMask-HQ order.")
    limitations = "Needs the bisenet-79999 download (53 MB); non-commercial research use (CelebAMask-HQ terms)."
    weights = ("bisenet-79999",)
    priority = 40
    uses_torch = True
    template = "celebamask"

    def run(self, request: ParseRequest, progress, cancelled) -> Result:
        model, sha = load_bisenet(request.device)

        def parse_crop(crop):
            return bisenet_parse_crop(model, crop)

        from .bisenet import INPUT_SIZE

        labels, extras, notes = parse_photo(
            request.image, parse_crop, INPUT_SIZE, self.template, progress, cancelled,
            request.face_index, bool(request.params.get("whole_image", False)),
        )
        return Result(labels=labels, extras=extras, provenance=Provenance(
            weights_id=self.weights[0], weights_sha256=sha, notes="; ".join(notes)))


def bisenet_parse_crop(model, crop: np.ndarray) -> np.ndarray:
    """Official preprocessing: resize to 512 (bilinear), ImageNet normalisation, argmax; then our class order."""
    import torch
    from torch.nn import functional as F

    from .bisenet import INPUT_SIZE, imagenet_normalize

    h, w = crop.shape[:2]
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float().to(device) / 255.0
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = model(imagenet_normalize(x))[0]
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return BISENET_TO_CELEBAMASK[logits.argmax(1)[0].cpu().numpy()].astype(np.int64)
