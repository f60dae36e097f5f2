"""StarGAN attribute editing of faces in a photograph, on the core face pipeline.

Each face is aligned to the "celeba" framing at the model size (the authors' preprocessing: 178 px
centre crop of an aligned CelebA image, resized to 128 or 256), edited under ``torch.inference_mode()``
with the label vector below, and pasted back through a feathered ellipse, so pixels away from the
face are untouched.

Label vector (order Black_Hair, Blond_Hair, Brown_Hair, Male, Young; 1 = has, 0 = has not):
* source: the ``source_attributes`` parameter where given, else our attribute classifier
  (thresholded at 0.5), else 0.5 (unknown);
* target: the source with the requested attributes set; setting a hair colour clears the others;
* the generator gets ``source + strength * (target - source)``.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from napari_faceedit.backend import CropResult, FaceBackend, FaceCrop, RunContext
from napari_faceedit.params import Param
from napari_faceedit.tasks import EditAttributesRequest, Task
from napari_faceedit.vocab import check_attributes

from .attributes import CELEBA_ATTRIBUTES_5, HAIR_COLORS_5, NORM_MODES
UNKNOWN_SOURCE = 0.5
PASTE_FEATHER = 0.05  # extra blur of our already feathered mask, as a fraction of the crop


def label_vectors(requested: dict[str, float], source: dict[str, float], strength: float = 1.0,
                  attributes: tuple[str, ...] = CELEBA_ATTRIBUTES_5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source vector, target vector, interpolated vector fed to the generator)."""
    hair_on = [a for a in requested if a in HAIR_COLORS_5 and float(requested[a]) >= 0.5]
    if len(hair_on) > 1:
        raise ValueError(f"hair colours are exclusive: asked for {hair_on} at once; pick one")
    src = np.array([float(np.clip(source.get(a, UNKNOWN_SOURCE), 0, 1)) for a in attributes], np.float32)
    trg = src.copy()
    for name, value in requested.items():
        trg[attributes.index(name)] = float(np.clip(value, 0.0, 1.0))
    if hair_on:
        for name in HAIR_COLORS_5:
            if name in attributes and name != hair_on[0]:
                trg[attributes.index(name)] = 0.0
    return src, trg, src + float(strength) * (trg - src)


def parse_source_attributes(value) -> dict[str, float]:
    """``{name: value}`` or the CLI form ``"Male=1,Young=0"``."""
    if not value:
        return {}
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.replace(";", ",").split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"source_attributes must look like 'Male=1,Young=0', got {value!r}")
        return {name.strip(): float(number) for name, number in pairs}
    return {str(name): float(number) for name, number in dict(value).items()}


def classifier_source(probabilities: np.ndarray, attributes: tuple[str, ...]) -> dict[str, float]:
    """Binary source labels from classifier probabilities; at most one hair colour (the likeliest)."""
    values = {a: float(p >= 0.5) for a, p in zip(attributes, probabilities)}
    hair = [(probabilities[i], a) for i, a in enumerate(attributes) if a in HAIR_COLORS_5 and values[a]]
    if len(hair) > 1:
        best = max(hair)[1]
        for _, name in hair:
            values[name] = float(name == best)
    return values


def face_ellipse(size: int, scale: float = 1.0) -> np.ndarray:
    """Feathered ellipse over the aligned crop (face and hair), 1 inside, falling to 0 at the crop edge,
    so the pasted region has no visible seam and the crop's corners are never pasted."""
    coords = (np.arange(size) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    radius = np.sqrt((xx / (0.5 * scale)) ** 2 + (yy / (0.5 * scale)) ** 2)
    return np.clip((1.0 - radius) / 0.25, 0.0, 1.0).astype(np.float32)


class StarGANBackend(FaceBackend):
    name = "stargan"
    version = "1.0"
    tasks = frozenset({Task.EDIT_ATTRIBUTES})
    description = ("StarGAN (Choi et al., CVPR 2018), official CelebA 128x128 generator: changes hair colour "
                   "(black/blond/brown), gender and age of every face, or of the selected one.")
    limitations = ("Works on a 128 px crop of each face, so fine detail is lost inside the edited region; "
                   "trained on CelebA (mostly frontal celebrities), weak on profiles, children and unusual lighting.")
    supported_attributes = CELEBA_ATTRIBUTES_5
    weights = ("stargan-celeba-128",)
    priority = 10
    uses_torch = True
    template = "celeba"
    crop_size: ClassVar[int] = 128
    feather = PASTE_FEATHER
    parameters = (
        Param("norm_mode", "instance", "batch-norm statistics: per image (the authors' test script) or stored",
              choices=NORM_MODES),
        Param("source_attributes", "", "the face's current attributes, e.g. 'Male=1,Young=0' "
              "(default: estimated by our attribute classifier)"),
        Param("ellipse_scale", 1.0, "size of the pasted ellipse relative to the crop", min=0.3, max=2.0),
    )

    def __init__(self):
        self._model = None  # injected generator (tests, our own trained models)
        self._classifier = "auto"

    @classmethod
    def from_model(cls, generator, image_size: int = 128, classifier="auto") -> "StarGANBackend":
        """A backend around an already built generator (our own trained model, or a test network).
        ``classifier``: "auto" (ours, bundled), None (source attributes unknown unless given) or a model."""
        backend = cls()
        backend._model = generator
        backend._classifier = classifier
        backend.crop_size = image_size
        backend.ready = lambda: (True, "ready (generator supplied by the caller)")  # type: ignore[method-assign]
        return backend

    def prepare(self, request: EditAttributesRequest, ctx: RunContext) -> None:
        from .classifier import CLASSIFIER_FILE, AttributeClassifier, default_classifier_path
        from .model import Generator, prepare_for_inference

        check_attributes(request.attributes, self.supported_attributes, self.name)
        self.given_source = parse_source_attributes(ctx.params["source_attributes"])
        check_attributes(self.given_source, self.supported_attributes, self.name)
        label_vectors(request.attributes, self.given_source, request.strength)  # fail early on bad requests
        if self._model is not None:
            self.generator = self._model.to(ctx.device)
        else:
            # The parity-checked fast path (group-norm kernels, channels-last).
            self.generator = ctx.load_weights(self.weights[0], lambda config: Generator(
                int(config.get("conv_dim", 64)), int(config.get("c_dim", 5)), int(config.get("repeat_num", 6))),
                prepare=prepare_for_inference)
        self.generator.norm_mode = ctx.params["norm_mode"]
        self.classifier = None
        if len(self.given_source) < len(self.supported_attributes):
            if self._classifier == "auto" and default_classifier_path().is_file():
                self.classifier = ctx.load_bundled(CLASSIFIER_FILE, AttributeClassifier)
            elif self._classifier == "auto":
                ctx.note("our attribute classifier is not installed: unknown source attributes count as 0.5")
            elif self._classifier is not None:
                self.classifier = self._classifier
        ctx.note(f"norm_mode={ctx.params['norm_mode']}; {self.crop_size} px celeba-aligned crops; "
                 f"label order {list(self.supported_attributes)}")

    def process_crop(self, face: FaceCrop, ctx: RunContext) -> CropResult:
        import torch

        from .classifier import predict_probabilities

        source = dict(self.given_source)
        if self.classifier is not None:
            estimated = classifier_source(predict_probabilities(self.classifier, face.image)[0],
                                          self.supported_attributes)
            source = {**estimated, **self.given_source}
        request = face.request
        _, _, vector = label_vectors(request.attributes, source, request.strength)
        device = torch.device(ctx.device)
        x = torch.from_numpy(face.image).permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(device)
        with torch.inference_mode():
            y = self.generator(x, torch.from_numpy(vector)[None].to(device))
        edited = ((y[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return CropResult(image=edited, extras={"label_vectors": vector})

    def paste_weights(self, face: FaceCrop, edited: CropResult, ctx: RunContext) -> np.ndarray:
        return face_ellipse(face.size, ctx.params["ellipse_scale"])


class StarGAN256Backend(StarGANBackend):
    name = "stargan-256"
    description = ("StarGAN (Choi et al., CVPR 2018), official CelebA 256x256 generator: hair colour "
                   "(black/blond/brown), gender and age; finer than the 128 px model, about 4x slower.")
    limitations = ("Works on a 256 px crop of each face; trained on CelebA (mostly frontal celebrities), "
                   "weak on profiles, children and unusual lighting.")
    weights = ("stargan-celeba-256",)
    priority = 11
    crop_size: ClassVar[int] = 256
