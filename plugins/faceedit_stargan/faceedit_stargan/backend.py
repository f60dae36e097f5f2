"""StarGAN attribute editing of faces in a photograph.

Per face: detect (or take ``params["landmarks"]``), align to the "celeba" framing at the model size
(the authors' preprocessing: 178 px centre crop of an aligned CelebA image, resized to 128 or 256),
build the label vector, run the generator under ``torch.inference_mode()``, and paste the result
back with a feathered elliptical mask, so pixels away from the face are untouched.

Label vector (order Black_Hair, Blond_Hair, Brown_Hair, Male, Young; 1 = has, 0 = has not):
* source: ``params["source_attributes"]`` where given, else our attribute classifier
  (resources/models/celeba_attr_classifier.pt, thresholded at 0.5), else 0.5 (unknown);
* target: the source with the requested attributes set; setting a hair colour clears the others;
* the generator gets ``source + strength * (target - source)``.

Request params: ``norm_mode`` ("instance", default = the published behaviour, or "running"),
``landmarks`` (list of (5, 2) arrays, skips detection), ``source_attributes`` ({name: 0..1}),
``min_score`` (detector threshold), ``mask_scale`` (size of the pasted ellipse, default 1).
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from napari_faceedit.backend import Backend, CancelledCallback, ProgressCallback
from napari_faceedit.tasks import EditAttributesRequest, Provenance, Result, Task
from napari_faceedit.vocab import check_attributes

from .model import CELEBA_ATTRIBUTES_5, HAIR_COLOURS_5, NORM_MODES

UNKNOWN_SOURCE = 0.5
PASTE_FEATHER = 0.05  # extra blur of our already feathered mask, as a fraction of the crop


def label_vectors(requested: dict[str, float], source: dict[str, float], strength: float = 1.0,
                  attributes: tuple[str, ...] = CELEBA_ATTRIBUTES_5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source vector, target vector, interpolated vector fed to the generator)."""
    hair_on = [a for a in requested if a in HAIR_COLOURS_5 and float(requested[a]) >= 0.5]
    if len(hair_on) > 1:
        raise ValueError(f"hair colours are exclusive: asked for {hair_on} at once; pick one")
    src = np.array([float(np.clip(source.get(a, UNKNOWN_SOURCE), 0, 1)) for a in attributes], np.float32)
    trg = src.copy()
    for name, value in requested.items():
        trg[attributes.index(name)] = float(np.clip(value, 0.0, 1.0))
    if hair_on:
        for name in HAIR_COLOURS_5:
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
    hair = [(probabilities[i], a) for i, a in enumerate(attributes) if a in HAIR_COLOURS_5 and values[a]]
    if len(hair) > 1:
        best = max(hair)[1]
        for _, name in hair:
            values[name] = float(name == best)
    return values


def face_mask(size: int, scale: float = 1.0) -> np.ndarray:
    """Feathered ellipse over the aligned crop (face and hair), 1 inside, falling to 0 at the crop edge,
    so the pasted region has no visible seam and the crop's corners are never pasted."""
    coords = (np.arange(size) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    radius = np.sqrt((xx / (0.5 * scale)) ** 2 + (yy / (0.5 * scale)) ** 2)
    return np.clip((1.0 - radius) / 0.25, 0.0, 1.0).astype(np.float32)


class StarGANBackend(Backend):
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
    image_size: ClassVar[int] = 128
    _generators: ClassVar[dict] = {}  # weights id -> (generator on cpu, sha256); loaded once per process

    def __init__(self):
        self._model = None  # injected generator (tests, our own trained models)
        self._classifier = "auto"

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_model(cls, generator, image_size: int = 128, classifier="auto") -> "StarGANBackend":
        """A backend around an already built generator (our own trained model, or a test network).
        ``classifier``: "auto" (ours if installed), None (source attributes unknown unless given) or a model."""
        backend = cls()
        backend._model = generator
        backend._classifier = classifier
        backend.image_size = image_size
        backend.ready = lambda: (True, "ready (generator supplied by the caller)")  # type: ignore[method-assign]
        return backend

    def _generator(self):
        """(generator, weights id, sha256)."""
        if self._model is not None:
            return self._model, None, None
        weights_id = self.weights[0]
        if weights_id not in self._generators:
            ok, why = self.ready()
            if not ok:
                raise RuntimeError(f"StarGAN cannot run: {why}")
            from napari_faceedit import weights

            from .model import Generator

            config = weights.entry(weights_id).config or {}
            generator = Generator(int(config.get("conv_dim", 64)), int(config.get("c_dim", 5)),
                                  int(config.get("repeat_num", 6)))
            sha = weights.load_state_dict(weights_id, generator)
            self._generators[weights_id] = (generator.eval(), sha)
        generator, sha = self._generators[weights_id]
        return generator, weights_id, sha

    def _attribute_classifier(self):
        if self._classifier == "auto":
            from .classifier import load_classifier

            self._classifier = load_classifier()
        return self._classifier

    # -- pipeline -------------------------------------------------------------------------------
    @staticmethod
    def _face_landmarks(request: EditAttributesRequest) -> list[np.ndarray]:
        given = request.params.get("landmarks")
        if given is not None:
            landmarks = [np.asarray(points, dtype=np.float64).reshape(5, 2) for points in given]
        else:
            from napari_faceedit.face.detect import detect_faces

            kwargs = {"min_score": float(request.params["min_score"])} if "min_score" in request.params else {}
            landmarks = [face.landmarks for face in detect_faces(request.image, **kwargs)]
        if not landmarks:
            raise ValueError("no face found in the image (give params['landmarks'] to place one by hand)")
        from napari_faceedit.face.pipeline import select_faces

        return [landmarks[i] for i in select_faces(landmarks, request.face_index)]

    def run(self, request: EditAttributesRequest, progress: ProgressCallback, cancelled: CancelledCallback) -> Result:
        import torch

        from napari_faceedit.face.align import align_face, paste_back

        from .classifier import predict_probabilities

        check_attributes(request.attributes, self.supported_attributes, self.name)
        norm_mode = request.params.get("norm_mode", "instance")
        if norm_mode not in NORM_MODES:
            raise ValueError(f"params['norm_mode'] must be one of {NORM_MODES}, got {norm_mode!r}")
        given_source = parse_source_attributes(request.params.get("source_attributes"))
        check_attributes(given_source, self.supported_attributes, self.name)
        label_vectors(request.attributes, given_source, request.strength)  # fail early on bad requests

        progress(0, 1, "finding faces")
        all_landmarks = self._face_landmarks(request)
        total = len(all_landmarks) + 1
        self.check(cancelled)
        progress(1, total, "loading StarGAN")
        generator, weights_id, sha = self._generator()
        device = torch.device(request.device)
        generator = generator.to(device)
        generator.norm_mode = norm_mode
        classifier = None if len(given_source) == len(self.supported_attributes) else self._attribute_classifier()
        mask_crop = face_mask(self.image_size, float(request.params.get("mask_scale", 1.0)))

        photo = request.image.copy()
        pasted = np.zeros(photo.shape[:2], np.float32)
        inputs, outputs, labels = [], [], []
        for number, landmarks in enumerate(all_landmarks):
            self.check(cancelled)
            progress(1 + number, total, f"editing face {number + 1} of {len(all_landmarks)}")
            aligned = align_face(request.image, landmarks, self.image_size, template="celeba")
            source = dict(given_source)
            if classifier is not None:
                estimated = classifier_source(predict_probabilities(classifier, aligned.crop)[0],
                                              self.supported_attributes)
                source = {**estimated, **given_source}
            _, _, vector = label_vectors(request.attributes, source, request.strength)
            x = torch.from_numpy(aligned.crop).permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(device)
            c = torch.from_numpy(vector)[None].to(device)
            with torch.inference_mode():
                y = generator(x, c)
            edited = ((y[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            photo = paste_back(photo, edited, aligned, mask=mask_crop, feather=PASTE_FEATHER)
            # Where this face was pasted (for display/evaluation): the mask warped into the photo.
            white = np.full_like(edited, 255)
            footprint = paste_back(np.zeros_like(photo), white, aligned, mask=mask_crop, feather=PASTE_FEATHER)[..., 0] / 255.0
            pasted = np.maximum(pasted, footprint.astype(np.float32))
            inputs.append(aligned.crop)
            outputs.append(edited)
            labels.append(vector)
        self.check(cancelled)
        progress(total, total, "done")
        notes = (f"norm_mode={norm_mode}; {self.image_size} px celeba-aligned crops; label order "
                 f"{list(self.supported_attributes)}; label vectors {[np.round(v, 3).tolist() for v in labels]}")
        result = Result(image=photo, extras={
            "aligned_faces": np.stack(inputs), "edited_faces": np.stack(outputs),
            "label_vectors": np.stack(labels), "paste_mask": pasted})
        result.provenance = Provenance(
            backend=self.name, backend_version=self.version, task=request.task.value,
            parameters=request.parameters(), seed=request.seed, device=request.device, wall_time_s=0.0,
            weights_id=weights_id, weights_sha256=sha, notes=notes)
        return result


class StarGAN256Backend(StarGANBackend):
    name = "stargan-256"
    description = ("StarGAN (Choi et al., CVPR 2018), official CelebA 256x256 generator: hair colour "
                   "(black/blond/brown), gender and age; finer than the 128 px model, about 4x slower.")
    limitations = ("Works on a 256 px crop of each face; trained on CelebA (mostly frontal celebrities), "
                   "weak on profiles, children and unusual lighting.")
    weights = ("stargan-celeba-256",)
    priority = 11
    image_size: ClassVar[int] = 256
    _generators: ClassVar[dict] = {}
