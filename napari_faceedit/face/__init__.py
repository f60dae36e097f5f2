"""Face analysis shared by every backend: detection with 5 landmarks, alignment, paste-back.

* :mod:`.detect`: ``detect_faces(image) -> [DetectedFace]`` (MTCNN in our own PyTorch code).
* :mod:`.align`: ``align_face``, ``paste_back``, ``warp_labels_back`` and the crop templates.
* :mod:`.pipeline`: ``for_each_face`` (detect, align, process, paste back) for backends.
* :mod:`.cli`: ``faceedit detect`` (boxes and landmarks as JSON).

Importing this package does not import torch; the detector does, when first used.
"""
from .align import TEMPLATES, AlignedFace, align_face, paste_back, template_points, warp_labels_back
from .detect import DetectedFace, WeightsMissing, detect_faces, faces_to_json
from .pipeline import FaceIndexError, NoFaceFound, for_each_face

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
    "for_each_face",
    "paste_back",
    "template_points",
    "warp_labels_back",
]
