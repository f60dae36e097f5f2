"""Face-parsing backends: ``faceparse-compact`` (ours, embedded) and ``bisenet`` (79999_iter.pth).

Both run on the core face pipeline: each face is aligned to the CelebAMask-HQ framing, parsed at
the model's size and its labels are warped back into the photo (a later, smaller face never
overwrites an earlier face's pixels). The faces' landmarks and boxes come back as extras.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_faceedit.backend import CropResult, FaceBackend, FaceCrop, Paste, RunContext
from napari_faceedit.params import Param
from napari_faceedit.tasks import Task
from napari_faceedit.vocab import BISENET_TO_CELEBAMASK

COMPACT_FILE = "faceparse_compact.pt"


def compact_weights_path() -> Path:
    """Our compact parser's shipped weights."""
    from napari_faceedit.weights import bundled_path

    return bundled_path(COMPACT_FILE)


def load_compact(path: str | None = None, device: str = "cpu"):
    """(model in eval mode, sha256) from the shipped file or another export (evaluation, training)."""
    from napari_faceedit import weights

    from .compact import CompactParser

    model = CompactParser()
    sha = weights.load_bundled(COMPACT_FILE, model, path)
    return model.float().to(device).eval(), sha


class _Parser(FaceBackend):
    tasks = frozenset({Task.PARSE})
    uses_torch = True
    template = "celebamask"
    paste = Paste.LABELS
    face_layers = True


class CompactParserBackend(_Parser):
    name = "faceparse-compact"
    version = "1"
    bundled = (COMPACT_FILE,)
    description = ("Our compact face parser (0.6 M parameters, MobileNetV2-style U-Net) trained on CelebAMask-HQ "
                   "pairs; embedded, no download. 19 CelebAMask-HQ classes.")
    limitations = ("Trained on 750 aligned CelebAMask-HQ faces at 256 px: rare classes (hat, earrings, necklace, "
                   "eyeglasses) are weak; faces far from frontal or very small faces parse less well.")
    priority = 50
    crop_size = 256  # the size it is trained and evaluated at
    parameters = (Param("tta", "multiscale", "test-time augmentation: none, flip, or flip at 224/256/320 px",
                        choices=("none", "flip", "multiscale")),)

    def prepare(self, request, ctx: RunContext) -> None:
        from napari_faceedit.folding import fold_batchnorm

        from .compact import CompactParser

        # Batch norm folded into the convolutions: a third fewer ops per pass, same labels (logits
        # within float rounding).
        self.model = ctx.load_bundled(COMPACT_FILE, CompactParser,
                                      prepare=lambda model: fold_batchnorm(model.requires_grad_(False)))

    def process_crop(self, face: FaceCrop, ctx: RunContext) -> CropResult:
        from .compact import TTA_MODES, predict

        return CropResult(labels=predict(self.model, face.image, **TTA_MODES[ctx.params["tta"]]))


class BiSeNetParser(_Parser):
    name = "bisenet"
    version = "1"
    description = ("BiSeNet face parser (ResNet-18) with the published 79999_iter.pth weights "
                   "(face-parsing.PyTorch), labels mapped to CelebAMask-HQ order.")
    limitations = "Needs the bisenet-79999 download (53 MB); non-commercial research use (CelebAMask-HQ terms)."
    weights = ("bisenet-79999",)
    priority = 40
    crop_size = 512  # the official preprocessing resizes every face crop to 512x512

    def prepare(self, request, ctx: RunContext) -> None:
        from .bisenet import BiSeNet, prepare_for_inference

        # Folded, channels-last inference path (parity-checked).
        self.model = ctx.load_weights(self.weights[0], lambda config: BiSeNet(n_classes=19),
                                      prepare=prepare_for_inference)

    def process_crop(self, face: FaceCrop, ctx: RunContext) -> CropResult:
        return CropResult(labels=bisenet_parse_crop(self.model, face.image))


def bisenet_parse_crop(model, crop: np.ndarray) -> np.ndarray:
    """Official preprocessing: resize to 512 (bilinear), ImageNet normalisation, argmax; then our class order."""
    import torch
    from torch.nn import functional as F

    from .bisenet import INPUT_SIZE, imagenet_normalize

    h, w = crop.shape[:2]
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float().to(device) / 255.0
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        x = imagenet_normalize(x)
        # The main head alone where the network offers it (BiSeNet.parse_logits), else forward()[0].
        logits = model.parse_logits(x) if hasattr(model, "parse_logits") else model(x)[0]
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return BISENET_TO_CELEBAMASK[logits.argmax(1)[0].cpu().numpy()].astype(np.int64)
