"""Face restoration backends: GPEN-BFR-256/512/1024 (published weights) and ``restore-compact`` (ours, embedded).

Both run on the core face pipeline: each detected face is aligned to the restorer's framing,
restored, and pasted back through the face region the parse service finds (a soft box without a
parser) with its Lab mean matched to the photo's. Only pixels under a face's paste weights change;
a grayscale photo stays grayscale. ``upscale=2`` also returns ``extras["upscaled_image"]``: the
photo upsampled 2x (bicubic) with the restored faces pasted at that resolution.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Optional

import numpy as np

from napari_faceedit.backend import FaceBackend, FaceCrop, Paste, RunContext
from napari_faceedit.params import Param
from napari_faceedit.tasks import Task

COMPACT_FILE = "restore_compact.pt"


def compact_weights_path() -> Path:
    """Our compact restorer's shipped weights."""
    from napari_faceedit.weights import bundled_path

    return bundled_path(COMPACT_FILE)


def upsample_photo(image: np.ndarray, factor: int) -> np.ndarray:
    from PIL import Image

    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width * factor, height * factor), Image.Resampling.BICUBIC))


class FaceRestorationBackend(FaceBackend):
    """What both restorers share; subclasses set the framing and implement ``load``."""

    tasks = frozenset({Task.RESTORE})
    uses_torch = True
    template: ClassVar[str] = "ffhq"
    paste = Paste.FACE_REGION
    color_match = True
    parameters = (
        Param("paste", "face-region", "paste the face region found by the face parser, or a soft box over the crop",
              choices=("face-region", "soft-box")),
        Param("color_match", True, "shift the restored face's mean colour to the photo's"),
        Param("upscale", 1, "also return the whole photo upsampled this many times with the faces restored",
              choices=(1, 2)),
    )

    def load(self, ctx: RunContext) -> Callable[[np.ndarray], np.ndarray]:
        """restore_crop(uint8 crop) -> uint8 crop."""
        raise NotImplementedError

    def prepare(self, request, ctx: RunContext) -> None:
        self.restore_crop = self.load(ctx)

    def process_crop(self, face: FaceCrop, ctx: RunContext) -> np.ndarray:
        return self.restore_crop(face.image)

    def finish(self, run, ctx: RunContext):
        result = run.result
        if ctx.params["upscale"] == 2 and result.image is not None:
            result.extras["upscaled_image"] = run.paste_all(upsample_photo(run.source, 2), 2.0, self, ctx)
        return result


# ----------------------------------------------------------------------------------------- GPEN
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
        if model is not None:
            self.ready = lambda: (True, "ready (network supplied by the caller)")  # type: ignore[method-assign]

    def crop_size_for(self, landmarks, ctx) -> int:
        return int(self._injected.size) if self._injected is not None else self.size

    def load(self, ctx: RunContext):
        from .model import BFR_CONFIGS, FullGenerator, prepare_for_inference

        if self._injected is not None:
            return gpen_restore_fn(self._injected.eval().to(ctx.device), ctx.device)
        # The parity-checked fast path (folded scales and activations, channels-last).
        model = ctx.load_weights(self.weights[0], lambda config: FullGenerator(**BFR_CONFIGS[self.size]),
                                 prepare=prepare_for_inference)
        return gpen_restore_fn(model, ctx.device)


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
def load_compact(path: str | None = None, device: str = "cpu"):
    """(CompactRestorer in eval mode, sha256) from the shipped file or another export (evaluation)."""
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
        if model is not None:
            self.ready = lambda: (True, "ready (network supplied by the caller)")  # type: ignore[method-assign]

    def crop_size_for(self, landmarks, ctx) -> int:
        from napari_faceedit.face.align import similarity_transform, template_points

        matrix = similarity_transform(landmarks, template_points(self.template, self.min_crop))
        photo_to_crop_scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        native = self.min_crop / max(photo_to_crop_scale, 1e-6)
        return int(np.clip(4 * round(native / 4), self.min_crop, self.max_crop))

    def load(self, ctx: RunContext):
        from .restore_net import CompactRestorer, restore_image

        if self._injected is not None:
            model = self._injected.eval().to(ctx.device)
        else:
            model = ctx.load_bundled(COMPACT_FILE, CompactRestorer)
        return lambda crop: restore_image(model, crop, ctx.device)
