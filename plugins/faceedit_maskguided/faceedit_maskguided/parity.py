"""Parity model for ``python -m napari_faceedit.parity maskguided_helen shared/parity/maskguided_helen``.

Runs the same path a backend uses: uint8 photo + un-enlarged Helen labels -> our preprocessing ->
BatchNorm-folded networks -> edit (plus the authors' style reconstruction), recording every
intermediate the fixture stores."""
from __future__ import annotations

import numpy as np

from napari_faceedit.parity import ParityModel

from . import preprocess as pp
from .inference import edit_prepared, prepare_for_inference
from .model import COMPONENTS, EditingNetworks

# The fixture's inputs the model derives itself (from the photos and the raw label maps).
PREPROCESSED = ("image", "label", "mask_list", "content_image", "label2", "mask2_list")
# Raw label maps are inputs; tests check them against our CelebAMask-HQ -> Helen mapping.
RAW_INPUTS = ("label_raw", "label2_raw")
NETWORK_OUTPUTS = (
    ("output_content", "output_style_s4", "crop_mouth", "crop_left_eye", "crop_right_eye")
    + tuple(f"{kind}_{c}" for c in COMPONENTS for kind in ("mu", "logvar"))
    + tuple(f"dec_{c}_{stat}" for c in COMPONENTS for stat in ("chmean", "chsum"))
    + tuple(f"{kind}_{tag}{suffix}" for tag in ("style", "content")
            for kind, suffix in (("feat_label", "_chmean"), ("feat_label", "_chsum"), ("g_in", "_placed"),
                                 ("g_out", "_chmean"), ("bgfeat", "_chmean")))
)


def build(config: dict) -> EditingNetworks:
    return EditingNetworks()


def fixture_image_to_uint8(image: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) float in [-1, 1] (exactly k/255*2-1) -> the (H, W, 3) uint8 photo it came from."""
    return np.rint((np.asarray(image[0], dtype=np.float64) + 1) / 2 * 255).astype(np.uint8).transpose(1, 2, 0)


def fixture_labels(labels: np.ndarray) -> np.ndarray:
    return np.asarray(labels[0, 0]).astype(np.uint8)


def outputs(model: EditingNetworks, arrays: dict, fast: bool = True) -> dict:
    """``fast`` (the backend's path): BatchNorm folded, channels-last; otherwise the checkpoint's layers."""
    networks = prepare_for_inference(model, fold=fast, channels_last=fast)
    style = pp.prepare_face(fixture_image_to_uint8(arrays["image"]), fixture_labels(arrays["label_raw"]))
    content = pp.prepare_face(fixture_image_to_uint8(arrays["content_image"]), fixture_labels(arrays["label2_raw"]))
    record: dict = {}
    edit_prepared(networks, style, content.layout, content.image, reconstruct=True, record=record)
    for prefix, face in (("", style), ("2", content)):
        record[f"label{prefix}"] = face.layout.labels[None, None].astype(np.float32)
        record[f"mask{prefix}_list"] = face.layout.centres[None].astype(np.float32)
    record["image"] = style.image[None]
    record["content_image"] = content.image[None]
    return record


PARITY_MODEL = ParityModel("maskguided_helen", build=build, outputs=outputs,
                           required=PREPROCESSED + NETWORK_OUTPUTS, inputs=RAW_INPUTS)
