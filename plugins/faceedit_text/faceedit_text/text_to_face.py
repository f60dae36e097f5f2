"""Offline text-to-face: a 64x64 DCGAN face whose latent code is optimised until our CelebA
attribute classifier sees the attributes a text asked for.

``generate_face({"Blond_Hair": 1, "Male": 0}, seed=3)`` draws a latent ``z`` from the seed, then runs
Adam on ``z`` to minimise

    binary cross-entropy(classifier(generator(z)), targets)  +  NORM_WEIGHT * (|z| / sqrt(100) - 1)^2

The second term keeps ``z`` on the shell where the generator's Gaussian prior puts almost all of its
mass (|z| close to sqrt(100)), so the face stays one the generator can draw well. Targets are the
requested values pulled into [TARGET_MARGIN, 1 - TARGET_MARGIN]: the loss is smallest at a clear but
not saturated decision, so ``z`` is not pushed further than needed. The classifier scores each image
both as drawn and mirrored, shifted by a few pixels that change every step: a change that only fools
the classifier at one exact pixel position (an adversarial pattern) earns less than a change of the
face itself (on 8 seeds this gave visibly blonder, longer hair and fewer dark blotches).

What it can and cannot do (measured by ``benchmarks/text_to_face_eval.py``): it only knows the five
attributes our classifier scores (black / blond / brown hair, male, young), and "success" means our
own classifier agrees, which is the very thing that was optimised, not a human judgement. The
generator was trained on synthetic DigiFace1M renders and is tightly cropped (measured with our MTCNN:
eyes 20 px apart in 64, where aligned CelebA has 14), so the classifier sees faces unlike its
training data; the image is 64x64, upsampled to 256 with bicubic interpolation, so it stays blurry.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from napari_faceedit.context import RunCancelled

from .dcgan import DISTRIBUTION, DISTRIBUTION_VERSION, IMAGE_SIZE, LATENT_SIZE, load_dcgan

DEFAULT_STEPS = 150
LEARNING_RATE = 0.05
NORM_WEIGHT = 5.0
TARGET_MARGIN = 0.05  # a requested 1 becomes a target probability of 0.95, a 0 becomes 0.05
MAX_SHIFT = 4  # px (of 64): random translation of the image the classifier scores at each step
OUTPUT_SIZE = 256  # the 64x64 result is upsampled (bicubic) to this size
HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair")

ProgressCallback = Callable[[int, int, str], None]  # (step, total, message), as RunContext.progress
CancelledCallback = Callable[[], bool]


@functools.lru_cache(maxsize=1)
def _classifier():
    """Our CelebA attribute classifier (frozen, eval mode), located as a bundled plugin model."""
    from faceedit_stargan.classifier import CLASSIFIER_FILE, load_classifier
    from napari_faceedit import weights

    model = load_classifier(weights.bundled_path(CLASSIFIER_FILE))  # raises a clear error when absent
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # only the latent code is optimised
    return model.eval()


@functools.lru_cache(maxsize=1)
def _generator():
    model = load_dcgan()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def supported_attributes() -> tuple[str, ...]:
    """The CelebA attributes a request may name: those our classifier can judge."""
    from faceedit_stargan.classifier import CLASSIFIER_ATTRIBUTES

    return tuple(CLASSIFIER_ATTRIBUTES)


def validate_attributes(attributes: Mapping[str, float]) -> dict[str, float]:
    """The request as {attribute: target in [0, 1]}; a ValueError names what is wrong and what is possible."""
    supported = supported_attributes()
    unsupported = [name for name in attributes if name not in supported]
    if unsupported:
        raise ValueError(f"text-to-face cannot judge {', '.join(map(repr, unsupported))}: our attribute "
                         f"classifier only scores {', '.join(supported)}")
    request: dict[str, float] = {}
    for name, value in attributes.items():
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: value must lie in [0, 1] (1 = has it, 0 = has not), got {value}")
        request[name] = value
    wanted_colours = [name for name in HAIR_COLOURS if request.get(name, 0.0) > 0.5]
    if len(wanted_colours) > 1:  # the classifier's heads are independent, but a face has one hair colour
        raise ValueError(f"asked for more than one hair colour at once ({', '.join(wanted_colours)}); choose one")
    return request


def latent_for_seed(seed: int) -> torch.Tensor:
    """The starting latent (100,) of a seed: a standard normal draw from its own generator, so the
    same seed gives the same face whatever else ran before."""
    return torch.randn(LATENT_SIZE, generator=torch.Generator().manual_seed(int(seed)))


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    scaled = ((images.detach().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _shifted_and_mirrored(images: torch.Tensor, step: int) -> torch.Tensor:
    """(2N, 3, 64, 64): the images shifted by up to MAX_SHIFT px (edges replicated), then their mirror
    images. The shift depends only on the step, so results are reproducible and the same for a face
    whether it is optimised alone or in a batch."""
    dy, dx = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,), generator=torch.Generator().manual_seed(step)).tolist()
    padded = F.pad(images, (MAX_SHIFT,) * 4, mode="replicate")
    size = images.shape[-1]
    shifted = padded[:, :, MAX_SHIFT + dy:MAX_SHIFT + dy + size, MAX_SHIFT + dx:MAX_SHIFT + dx + size]
    return torch.cat([shifted, shifted.flip(3)])


def optimise_latents(latents: torch.Tensor, attributes: Mapping[str, float], *, steps: int = DEFAULT_STEPS,
                     progress: Optional[ProgressCallback] = None,
                     cancelled: Optional[CancelledCallback] = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Optimise a batch of latents (N, 100) for one request; returns (optimised latents, classifier
    probabilities before (N, 5), after (N, 5), columns in ``supported_attributes()`` order).

    Every face has its own loss term and Adam works element by element, so optimising N faces
    together gives each the result it would get alone (up to float rounding)."""
    request = validate_attributes(attributes)
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    generator, classifier = _generator(), _classifier()
    columns = [supported_attributes().index(name) for name in request]
    targets = torch.tensor([min(max(v, TARGET_MARGIN), 1 - TARGET_MARGIN) for v in request.values()])
    latent = latents.detach().clone().float().requires_grad_(True)
    optimiser = torch.optim.Adam([latent], lr=LEARNING_RATE)
    expected_norm = math.sqrt(LATENT_SIZE)

    def probabilities(z: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(classifier(generator(z))).numpy()

    before = probabilities(latent)
    for step in range(steps if request else 0):
        if cancelled is not None and cancelled():
            raise RunCancelled()
        logits = classifier(_shifted_and_mirrored(generator(latent), step))[:, columns]
        # mean over attributes and the two views, sum over faces: each face's gradient does not
        # depend on the batch size
        attribute_loss = F.binary_cross_entropy_with_logits(
            logits, targets.expand_as(logits), reduction="none").mean(dim=1).view(2, -1).mean(dim=0)
        norm_loss = NORM_WEIGHT * (latent.norm(dim=1) / expected_norm - 1.0) ** 2
        optimiser.zero_grad()
        (attribute_loss + norm_loss).sum().backward()
        optimiser.step()
        if progress is not None:
            progress(step + 1, steps, f"text-to-face: step {step + 1}/{steps}, "
                                      f"attribute loss {attribute_loss.mean().item():.3f}")
    return latent.detach(), before, probabilities(latent)


def generate_face(attributes: Mapping[str, float], *, steps: int = DEFAULT_STEPS, seed: int = 0,
                  progress: Optional[ProgressCallback] = None,
                  cancelled: Optional[CancelledCallback] = None) -> tuple[np.ndarray, dict]:
    """A face with the requested attributes, as far as our classifier can tell.

    ``attributes``: CelebA names of ``supported_attributes()`` -> 1 (has it) or 0 (has not); values in
    between are taken as target probabilities. Returns (uint8 image (256, 256, 3): the generator's
    64x64 output upsampled with bicubic interpolation, report). ``progress(step, total, message)`` is
    called after every step; ``cancelled()`` is asked before every step and True raises
    :class:`napari_faceedit.context.RunCancelled`.
    """
    request = validate_attributes(attributes)
    latent, before, after = optimise_latents(latent_for_seed(seed)[None], request, steps=steps,
                                             progress=progress, cancelled=cancelled)
    with torch.no_grad():
        small = _generator()(latent)
    image64 = _to_uint8(small)[0]
    from PIL import Image

    image = np.asarray(Image.fromarray(image64).resize((OUTPUT_SIZE, OUTPUT_SIZE), Image.BICUBIC))
    names = supported_attributes()
    report = {
        "attributes": {name: {"target": target,
                              "before": float(before[0, names.index(name)]),
                              "after": float(after[0, names.index(name)])} for name, target in request.items()},
        "all_probabilities_before": {name: float(p) for name, p in zip(names, before[0])},
        "all_probabilities_after": {name: float(p) for name, p in zip(names, after[0])},
        "steps": int(steps) if request else 0,
        "seed": int(seed),
        "generator": f"DCGAN 64x64 from {DISTRIBUTION} {DISTRIBUTION_VERSION} (trained on synthetic DigiFace1M faces)",
        "generated_size": IMAGE_SIZE,
        "output_size": OUTPUT_SIZE,
        "note": (f"generated at {IMAGE_SIZE}x{IMAGE_SIZE} and upsampled to {OUTPUT_SIZE}x{OUTPUT_SIZE} (bicubic); "
                 "probabilities are our own attribute classifier's, the quantity that was optimised"),
    }
    return image, report
