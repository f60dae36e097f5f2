"""Face label and attribute vocabularies: the one place that knows class orders and colours.

Our canonical label order is CelebAMask-HQ's (19 classes). ``l_*``/``r_*`` are the
*subject's* left/right, so on a frontal photo ``l_eye`` lies on the image's right.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FaceClass:
    index: int
    name: str  # CelebAMask-HQ short name, as in its annotation files
    description: str
    color: tuple[int, int, int]


FACE_CLASSES: tuple[FaceClass, ...] = (
    FaceClass(0, "background", "background", (0, 0, 0)),
    FaceClass(1, "skin", "skin", (204, 0, 0)),
    FaceClass(2, "nose", "nose", (76, 153, 0)),
    FaceClass(3, "eye_g", "eyeglasses", (204, 204, 0)),
    FaceClass(4, "l_eye", "left eye", (51, 51, 255)),
    FaceClass(5, "r_eye", "right eye", (204, 0, 204)),
    FaceClass(6, "l_brow", "left brow", (0, 255, 255)),
    FaceClass(7, "r_brow", "right brow", (255, 204, 204)),
    FaceClass(8, "l_ear", "left ear", (102, 51, 0)),
    FaceClass(9, "r_ear", "right ear", (255, 0, 0)),
    FaceClass(10, "mouth", "mouth interior", (102, 204, 0)),
    FaceClass(11, "u_lip", "upper lip", (255, 255, 0)),
    FaceClass(12, "l_lip", "lower lip", (0, 0, 153)),
    FaceClass(13, "hair", "hair", (0, 0, 204)),
    FaceClass(14, "hat", "hat", (255, 51, 153)),
    FaceClass(15, "ear_r", "earring", (0, 204, 204)),
    FaceClass(16, "neck_l", "necklace", (0, 51, 0)),
    FaceClass(17, "neck", "neck", (255, 153, 51)),
    FaceClass(18, "cloth", "cloth", (0, 204, 0)),
)
N_CLASSES = len(FACE_CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in FACE_CLASSES)
CLASS_INDEX: dict[str, int] = {c.name: c.index for c in FACE_CLASSES}
PALETTE = np.array([c.color for c in FACE_CLASSES], dtype=np.uint8)  # (19, 3)

# The 13 "major" classes used for the headline mIoU (all but eyeglasses, ears, hat, earring, necklace).
MAJOR_CLASSES: tuple[int, ...] = (0, 1, 2, 4, 5, 6, 7, 10, 11, 12, 13, 17, 18)

# Horizontal flip swaps the subject's left and right.
# What a user means by a face component (component transfer, completion holes, text requests).
FACE_COMPONENTS: dict[str, tuple[int, ...]] = {
    "eyes": (CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"]),
    "brows": (CLASS_INDEX["l_brow"], CLASS_INDEX["r_brow"]),
    "nose": (CLASS_INDEX["nose"],),
    "mouth": (CLASS_INDEX["mouth"], CLASS_INDEX["u_lip"], CLASS_INDEX["l_lip"]),
    "ears": (CLASS_INDEX["l_ear"], CLASS_INDEX["r_ear"]),
    "hair": (CLASS_INDEX["hair"],),
    "skin": (CLASS_INDEX["skin"],),
}

FLIP_PERMUTATION = np.arange(N_CLASSES)
for _a, _b in ((4, 5), (6, 7), (8, 9)):
    FLIP_PERMUTATION[_a], FLIP_PERMUTATION[_b] = _b, _a

# BiSeNet face parser (face-parsing.PyTorch, 79999_iter.pth) output order, by CelebAMask-HQ name.
BISENET_ORDER: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
BISENET_TO_CELEBAMASK = np.array([CLASS_INDEX[n] for n in BISENET_ORDER], dtype=np.uint8)
CELEBAMASK_TO_BISENET = np.argsort(BISENET_TO_CELEBAMASK).astype(np.uint8)

# Helen 11-class order (Smith et al. 2013), used by mask-guided portrait editing (Gu et al. 2019).
HELEN_ORDER: tuple[str, ...] = (
    "background", "face_skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "u_lip", "mouth",
    "l_lip", "hair",
)
# CelebAMask-HQ -> Helen, as the mask-guided model was trained (checked against the authors' test
# pipeline by the maskguided_helen parity fixture). Helen's l_* classes lie on the image-left side;
# CelebAMask-HQ's l_* are the subject's left, i.e. image right, so eyes and brows swap. Helen skin is
# the face only: ears, neck, hat and cloth are background; glasses sit on skin.
_CELEBAMASK_TO_HELEN_BY_NAME = {
    "background": "background", "skin": "face_skin", "nose": "nose", "eye_g": "face_skin",
    "l_eye": "r_eye", "r_eye": "l_eye", "l_brow": "r_brow", "r_brow": "l_brow",
    "l_ear": "background", "r_ear": "background", "mouth": "mouth", "u_lip": "u_lip", "l_lip": "l_lip",
    "hair": "hair", "hat": "background", "ear_r": "background", "neck_l": "background", "neck": "background",
    "cloth": "background",
}
CELEBAMASK_TO_HELEN = np.array(
    [HELEN_ORDER.index(_CELEBAMASK_TO_HELEN_BY_NAME[n]) for n in CLASS_NAMES], dtype=np.uint8
)
# Helen -> CelebAMask-HQ: each Helen class has one counterpart (sides swapped back).
_HELEN_TO_CELEBAMASK_BY_NAME = {
    "background": "background", "face_skin": "skin", "l_brow": "r_brow", "r_brow": "l_brow", "l_eye": "r_eye",
    "r_eye": "l_eye", "nose": "nose", "u_lip": "u_lip", "mouth": "mouth", "l_lip": "l_lip", "hair": "hair",
}
HELEN_TO_CELEBAMASK = np.array([CLASS_INDEX[_HELEN_TO_CELEBAMASK_BY_NAME[n]] for n in HELEN_ORDER], dtype=np.uint8)


def remap(labels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Map an integer label map through a lookup table (e.g. ``BISENET_TO_CELEBAMASK``)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(table)):
        raise ValueError(f"label values must lie in 0..{len(table) - 1}, got {labels.min()}..{labels.max()}")
    return table[labels]


def colorize(labels: np.ndarray) -> np.ndarray:
    """(H, W) CelebAMask-HQ indices -> (H, W, 3) uint8 with the official colours."""
    return remap(labels, PALETTE)


# The 40 CelebA attributes, in list_attr_celeba.txt order.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
HAIR_COLOR_ATTRIBUTES: tuple[str, ...] = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")


def check_attributes(values: dict[str, float], supported: tuple[str, ...], backend: str) -> None:
    """Raise a clear error for unknown or unsupported attribute names."""
    unknown = sorted(set(values) - set(CELEBA_ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; names are the 40 CelebA attributes, e.g. 'Blond_Hair'")
    unsupported = sorted(set(values) - set(supported))
    if unsupported:
        raise ValueError(
            f"backend '{backend}' does not support attribute(s) {unsupported}; it supports {list(supported)}"
        )
