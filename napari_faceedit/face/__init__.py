"""Face analysis shared by every backend: detection with 5 landmarks, alignment, paste-back.

* :mod:`.detect`: ``detect_faces(image) -> [DetectedFace]`` (MTCNN in our own PyTorch code).
* :mod:`.align`: ``align_face``, ``paste_back``, ``warp_labels_back`` and the crop templates.
* :mod:`.pipeline`: ``run_face_pipeline`` (find faces, align, process, paste back): the one face loop.
* :mod:`.cli`: ``faceedit detect`` (boxes and landmarks as JSON).

Importing this package does not import torch; the detector does, when first used.
"""
from .align import TEMPLATES, AlignedFace, align_face, paste_back, template_points, warp_labels_back
from .detect import DetectedFace, WeightsMissing, detect_faces, faces_to_json
from .pipeline import FaceIndexError, NoFaceFound, run_face_pipeline

__all__ = [
    "TEMPLATES",
    "AlignedFace",
    "DetectedFace",
    "FaceIndexError",
    "NoFaceFound",
    "WeightsMissing",
    "align_face",
    "detect_faces",
    "faces_to_json",
    "paste_back",
    "run_face_pipeline",
    "template_points",
    "warp_labels_back",
]
