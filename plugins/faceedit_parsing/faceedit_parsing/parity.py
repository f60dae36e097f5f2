"""Parity spec for BiSeNet (``python -m napari_faceedit.parity bisenet DIR``)."""
from __future__ import annotations

import numpy as np

from napari_faceedit.parity import ParityModel

# Label maps are compared only where the decision is not a near-tie (random weights leave some).
TIE_MARGIN = 1e-3


def _build(config: dict):
    from .bisenet import BiSeNet

    return BiSeNet(**config["fixture_constructor"]).eval()


def _optimise(model):
    from .bisenet import prepare_for_inference

    model = prepare_for_inference(model)
    model.inference_path = True  # _outputs then takes the logits from the backend's parse_logits
    return model


def _outputs(model, arrays: dict) -> dict:
    import torch

    model.eval()
    x = torch.from_numpy(arrays["input"])
    with torch.no_grad():
        out = model.features(x)
        if getattr(model, "inference_path", False):
            out["logits"] = model.parse_logits(x)
    produced = {name: value.numpy() for name, value in out.items()}
    produced["parsing"] = out["logits"].argmax(1).numpy()
    return produced


def compare_parsing(ours: np.ndarray, expected: np.ndarray, arrays: dict) -> tuple[float, bool]:
    """Fraction of disagreeing pixels among those whose expected top-2 logit margin exceeds TIE_MARGIN."""
    if ours.shape != expected.shape:
        return float("inf"), False
    top2 = np.sort(arrays["logits"], axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > TIE_MARGIN
    wrong = float(np.mean(ours[decided] != expected[decided])) if decided.any() else 0.0
    return wrong, wrong == 0.0


BISENET_PARITY = ParityModel(
    name="bisenet",
    build=_build,
    outputs=_outputs,
    required=("logits", "logits16", "logits32", "parsing", "feat_res8", "feat_cp8", "feat_cp16", "feat_fuse"),
    compare={"parsing": compare_parsing},
    optimise=_optimise,
)
