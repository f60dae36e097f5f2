"""The CelebA attributes the completion generator is conditioned on, and the user-dict -> vector code.

Each attribute gets one conditioning value in [-1, 1]: +1 "has it", -1 "has it not", 0 "not
specified" (the generator then completes from the context alone). User values follow the project's
convention for attributes (1 = has, 0 = has not; anything in between is a weaker request), so a user
value v becomes 2v - 1. In training, known CelebA labels are coded +-1 and some are randomly set to 0
so that "not specified" is a state the generator has seen; CelebAMask-HQ faces, whose attributes are
unknown, are all 0.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from napari_faceedit.vocab import CELEBA_ATTRIBUTES

if TYPE_CHECKING:  # torch is imported where used: the backend listing imports this module
    import torch

# Attributes whose evidence lies in the parts a user typically completes (mouth, eyes, brows, nose,
# make-up) plus the two global ones the paper shows (Male) and that shape the whole face (Young).
# Order matters: it is the order of the generator's conditioning channels and of the
# discriminator's classification logits, so appending changes the checkpoint layout.
SUPPORTED_ATTRIBUTES: tuple[str, ...] = (
    "Smiling", "Mouth_Slightly_Open", "Eyeglasses", "Male", "Young", "Heavy_Makeup",
    "Bushy_Eyebrows", "Narrow_Eyes", "Arched_Eyebrows", "Big_Lips", "Big_Nose", "Wearing_Lipstick",
)
N_ATTRIBUTES = len(SUPPORTED_ATTRIBUTES)
assert set(SUPPORTED_ATTRIBUTES) <= set(CELEBA_ATTRIBUTES)


def check_supported(attributes: Mapping[str, float]) -> None:
    """Raise ValueError naming the supported attributes for any other name or a bad value."""
    unsupported = sorted(set(attributes) - set(SUPPORTED_ATTRIBUTES))
    if unsupported:
        kind = "unknown" if set(unsupported) - set(CELEBA_ATTRIBUTES) else "unsupported"
        raise ValueError(
            f"{kind} attribute(s) {unsupported} for face completion; supported attributes are "
            f"{list(SUPPORTED_ATTRIBUTES)} (values: 1 = has, 0 = has not)"
        )
    for name, value in attributes.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"attribute {name!r} needs a number in [0, 1], got {value!r}") from None
        if not 0.0 <= number <= 1.0:
            raise ValueError(f"attribute {name!r} must lie in [0, 1] (1 = has, 0 = has not), got {number}")


def attribute_vector(attributes: Mapping[str, float] | None = None) -> np.ndarray:
    """User dict {name: value in [0, 1]} -> conditioning vector (N_ATTRIBUTES,) float32 in [-1, 1];
    attributes not in the dict are 0 ("not specified")."""
    attributes = dict(attributes or {})
    check_supported(attributes)
    vector = np.zeros(N_ATTRIBUTES, np.float32)
    for name, value in attributes.items():
        vector[SUPPORTED_ATTRIBUTES.index(name)] = 2.0 * float(value) - 1.0
    return vector


def attribute_tensor(attributes: Mapping[str, float] | None = None, device=None) -> torch.Tensor:
    """Like :func:`attribute_vector`, as a (1, N_ATTRIBUTES) tensor."""
    import torch

    vector = torch.from_numpy(attribute_vector(attributes))[None]
    return vector if device is None else vector.to(device)


def columns_in(names: list[str] | tuple[str, ...]) -> list[int]:
    """Column of each supported attribute in a table whose header is ``names``."""
    missing = [a for a in SUPPORTED_ATTRIBUTES if a not in names]
    if missing:
        raise ValueError(f"attribute table lacks {missing}")
    return [list(names).index(a) for a in SUPPORTED_ATTRIBUTES]
