"""Train our compact mask-guided editing model (``faceedit train maskguided``).

``faceedit train maskguided --data DIR --out RUN [--unlabeled DIR] [--resume] [--device cuda]
[--steps N] [--max-minutes M] [--export PATH]``

``--data``: the CelebAMask-HQ folder with ``train/`` (or a folder with ``images/`` and ``masks/``);
``val/`` is the project's test set and is refused. The last ``--dev`` pairs (sorted by name) are
held out for model selection. ``--unlabeled``: faces without labels (``celebamask_hq/unlabeled``),
labelled once at start by our compact parser.

The losses of Gu et al. (CVPR 2019), on batches of faces whose target layout is, per sample:

* ``same``: the face's own labels (reconstruction);
* ``edit``: its labels changed by a random ``label_edits`` operation (mouth wider or narrower, eyes
  larger or smaller, hairline moved, brows moved);
* ``swap``: one component (eyes, mouth, skin, hair) taken from another face, both its code and, for
  eyes, mouth and hair, its shape;
* ``layout``: another face's whole label map.

Generator side: local reconstruction (each component's image decoder reconstructs the component from
its sampled code: the autoencoder branch), KL divergence of the codes, global reconstruction (L1 to
the source photo: the whole image for ``same`` samples, the pixels the edit cannot have changed for
the others), a parsing loss (our frozen compact parser on the render, cross-entropy against the
target labels grouped into the model's 11 classes), and an adversarial loss from two-scale PatchGAN
discriminators conditioned on the label map (LSGAN or hinge), with feature matching on ``same``
samples. Adam (2e-4, betas 0.5/0.999) with a linear decay over the last ``--decay`` share of steps.

Run folder: ``checkpoint_last.pt`` (weights-only: model, image decoders, discriminator, optimisers,
step, best dev score, torch RNG state, config; every random draw of step ``k`` comes from generators
seeded with (seed, k), so ``--resume`` continues the same run), ``history.json`` (loss averages per
logging window and dev records), ``maskguided_best.pt`` (float16 export with the best dev label
fidelity). Dev evaluation: PSNR of the face region when rendering each dev face from its own labels,
and parsing mIoU (our parser) of renders of scripted edits of the dev labels.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from napari_faceedit import label_edits
from napari_faceedit.synthesis import with_components
from napari_faceedit.training import (CheckpointError, TrainingLeg, celebamask_training_folder,
                                       read_training_checkpoint, save_atomically)
from napari_faceedit.vocab import CELEBAMASK_TO_HELEN, FLIP_PERMUTATION, MAJOR_CLASSES, N_CLASSES

from . import preprocess as pp
from .learned import (ARCHITECTURE_KEYS, MODEL_COMPONENTS, CompactMaskGuided, ComponentImageDecoders,
                      component_image_targets, export_state_dict, n_parameters, render, transfer)
from .model import COMPONENTS

CHECKPOINT_NAME = "checkpoint_last.pt"
HISTORY_NAME = "history.json"
BEST_NAME = "maskguided_best.pt"
DEV_PAIRS = 50
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
KINDS = ("same", "edit", "swap", "layout")
SWAP_COMPONENTS = tuple(MODEL_COMPONENTS)
# Pixels within this distance of a label change are not held to the source photo.
EDIT_MARGIN = 8
# Face region (skin..hair in the CelebAMask-HQ order) for the dev PSNR.
FACE_REGION_CLASSES = tuple(range(1, 14))

DEFAULTS = {
    **{k: v for k, v in zip(ARCHITECTURE_KEYS, (16, 4, 32, 128, 32))},
    "disc_width": 32,
    "steps": 6000,
    "batch": 4,
    "lr": 2e-4,
    "beta1": 0.5,
    "beta2": 0.999,
    "decay": 0.3,
    "gan_loss": "lsgan",
    "lambda_gan": 1.0,
    "lambda_fm": 10.0,
    "lambda_rec": 10.0,
    "lambda_parse": 1.0,
    "lambda_local": 10.0,
    "lambda_kl": 0.01,
    "p_same": 0.4,
    "p_edit": 0.3,
    "p_swap": 0.2,
    "p_layout": 0.1,
    "seed": 0,
}
ARCHITECTURE_FLAGS = ARCHITECTURE_KEYS + ("disc_width",)


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Face:
    name: str
    image: np.ndarray  # (256, 256, 3) uint8
    labels: np.ndarray  # (256, 256) uint8, CelebAMask-HQ classes




def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    if image.shape != (pp.IMAGE_SIZE, pp.IMAGE_SIZE, 3):
        raise ValueError(f"{path}: expected a {pp.IMAGE_SIZE} px aligned face, got {image.shape}")
    return image


def usable(labels19: np.ndarray) -> bool:
    """Whether the model can take this layout (its eyes and mouth far enough from the border)."""
    try:
        pp.component_centres(pp.celebamask_to_helen(labels19))
    except ValueError:
        return False
    return True


def load_pairs(folder: Path, names: list[str]) -> list[Face]:
    from PIL import Image

    faces = []
    for name in names:
        image_path = next(p for p in (folder / "images" / (name + s) for s in IMAGE_SUFFIXES) if p.is_file())
        labels = np.asarray(Image.open(folder / "masks" / (name + ".png")))
        faces.append(Face(name, _read_image(image_path), labels.astype(np.uint8)))
    return faces


def split_names(folder: Path, dev: int) -> tuple[list[str], list[str]]:
    names = sorted(p.stem for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                   and (folder / "masks" / (p.stem + ".png")).is_file())
    if len(names) <= dev:
        raise ValueError(f"{folder}: {len(names)} pairs, not enough for a dev split of {dev}")
    return (names[:-dev], names[-dev:]) if dev else (names, [])


def parse_unlabeled(folder: Path, limit: int = 0) -> list[Face]:
    """Faces without labels, labelled by our compact parser (flip test-time augmentation)."""
    from faceedit_parsing.backend import load_compact
    from faceedit_parsing.compact import predict

    parser, _ = load_compact()
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if Path(folder).resolve().name == "val" or Path(folder).resolve().parent.name == "val":
        raise ValueError(f"{folder} is part of the val split, the project's test set")
    faces = []
    for path in paths[:limit or None]:
        image = _read_image(path)
        faces.append(Face(path.stem, image, predict(parser, image, flip_tta=True).astype(np.uint8)))
    return faces


def flipped(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror image and labels (the subject's left and right swap classes)."""
    return np.ascontiguousarray(image[:, ::-1]), FLIP_PERMUTATION[labels[:, ::-1]].astype(np.uint8)


def random_view(face: Face, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() < 0.5:
        image, labels = flipped(face.image, face.labels)
        if usable(labels):
            return image, labels
    return face.image, face.labels


def random_edit(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One ``label_edits`` operation with a random strength (either direction)."""
    choice = rng.integers(4)
    if choice == 0:
        return label_edits.widen_mouth(labels, float(rng.uniform(0.75, 1.4)))
    if choice == 1:
        return label_edits.enlarge_eyes(labels, float(rng.uniform(0.8, 1.35)))
    if choice == 2:
        return label_edits.move_hairline(labels, float(rng.choice([-1, 1]) * rng.uniform(4, 16)))
    return label_edits.raise_eyebrows(labels, float(rng.uniform(-5, 8)))


@dataclass
class Sample:
    kind: str
    image: np.ndarray  # (3, 256, 256) float32 [-1, 1], the source photo (components unless swapped, background)
    inputs: dict[str, np.ndarray]  # component encoder inputs
    source_helen: np.ndarray  # (256, 256) raw Helen labels of the source
    target: pp.PreparedLayout  # Helen target layout (raw, enlarged, centres)
    rec_mask: np.ndarray  # (256, 256) float32: pixels held to the source photo


def _helen(labels19: np.ndarray) -> np.ndarray:
    return pp.celebamask_to_helen(labels19)


def make_sample(faces: list[Face], index: int, kind: str, rng: np.random.Generator) -> Sample:
    image, labels = random_view(faces[index], rng)
    own = pp.prepare_face(image, _helen(labels))
    inputs = pp.component_inputs(own.image, own.layout.labels, own.layout.centres)
    source_helen = own.layout.labels_raw
    target19 = labels
    donor_index = (index + 1 + int(rng.integers(len(faces) - 1))) % len(faces) if len(faces) > 1 else index
    component = None
    try:
        if kind == "edit":
            target19 = random_edit(labels, rng)
        elif kind == "swap":
            donor_image, donor_labels = random_view(faces[donor_index], rng)
            component = SWAP_COMPONENTS[int(rng.integers(len(SWAP_COMPONENTS)))]
            target19 = with_components(labels, donor_labels, (component,))
            donor = pp.prepare_face(donor_image, _helen(donor_labels))
            donor_inputs = pp.component_inputs(donor.image, donor.layout.labels, donor.layout.centres)
            for part in MODEL_COMPONENTS[component]:
                inputs[part] = donor_inputs[part]
        elif kind == "layout":
            _, target19 = random_view(faces[donor_index], rng)
        target = pp.prepare_layout(_helen(target19))
    except ValueError:  # an edit that leaves the model's bounds (or finds no brows): reconstruct instead
        return make_sample(faces, index, "same", rng)
    target_helen = target.labels_raw
    if kind == "same":
        rec_mask = np.ones(target_helen.shape, bool)
    elif kind == "edit" or (kind == "swap" and component in ("eyes", "mouth")):
        changed = target_helen != source_helen
        if kind == "swap":  # the taken parts change appearance even where their shape does not
            parts = [pp.L_EYE, pp.R_EYE] if component == "eyes" else list(pp.MOUTH_CLASSES)
            changed |= np.isin(target_helen, parts) | np.isin(source_helen, parts)
        rec_mask = ~ndimage.binary_dilation(changed, iterations=EDIT_MARGIN) if changed.any() else np.ones_like(changed)
    else:  # skin or hair taken from a donor, or a whole other layout: only the shared background stays
        rec_mask = (target_helen == pp.BACKGROUND) & (source_helen == pp.BACKGROUND)
    return Sample(kind, own.image, inputs, source_helen, target, rec_mask.astype(np.float32))


@dataclass
class Batch:
    is_same: torch.Tensor  # (B,) bool
    image: torch.Tensor
    inputs: dict[str, torch.Tensor]
    source_one_hot: torch.Tensor  # raw source labels (the discriminator's real condition)
    target_one_hot: torch.Tensor  # raw target labels (the discriminator's fake condition)
    target_input: torch.Tensor  # enlarged target labels (G's input)
    target_labels: torch.Tensor  # (B, 256, 256) int64 raw target labels (the parsing loss)
    centres: np.ndarray  # (B, 6)
    background_mask: torch.Tensor
    rec_mask: torch.Tensor  # (B, 1, 256, 256)


def collate(samples: list[Sample], device) -> Batch:
    def stack(arrays) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays).astype(np.float32)).to(device)

    return Batch(
        is_same=torch.tensor([s.kind == "same" for s in samples], device=device),
        image=stack([s.image for s in samples]),
        inputs={c: stack([s.inputs[c] for s in samples]) for c in COMPONENTS},
        source_one_hot=stack([pp.one_hot(s.source_helen) for s in samples]),
        target_one_hot=stack([pp.one_hot(s.target.labels_raw) for s in samples]),
        target_input=stack([pp.one_hot(s.target.labels) for s in samples]),
        target_labels=torch.from_numpy(np.stack([s.target.labels_raw for s in samples]).astype(np.int64)).to(device),
        centres=np.stack([s.target.centres for s in samples]),
        background_mask=stack([pp.background_mask(s.target.labels)[None] for s in samples]),
        rec_mask=stack([s.rec_mask[None] for s in samples]),
    )


def sample_batch(faces: list[Face], size: int, config: dict, rng: np.random.Generator, device) -> Batch:
    weights = np.array([config[f"p_{k}"] for k in KINDS], dtype=np.float64)
    kinds = rng.choice(KINDS, size=size, p=weights / weights.sum())
    indices = rng.choice(len(faces), size=size, replace=len(faces) < size)
    return collate([make_sample(faces, int(i), str(k), rng) for i, k in zip(indices, kinds)], device)


# ------------------------------------------------------------------------------------------------ networks
class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pixHD's, 3 strided layers): conv 4x4 -> LeakyReLU 0.2, then conv + InstanceNorm +
    LeakyReLU; returns every layer's output (the last is the patch score map) for feature matching."""

    def __init__(self, in_channels: int, width: int, n_layers: int = 3):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True))]
        channels = width
        for i in range(1, n_layers + 1):
            out = min(width * 2 ** i, width * 4)
            stride = 2 if i < n_layers else 1
            layers.append(nn.Sequential(nn.Conv2d(channels, out, 4, stride, 1), nn.InstanceNorm2d(out),
                                        nn.LeakyReLU(0.2, True)))
            channels = out
        layers.append(nn.Sequential(nn.Conv2d(channels, 1, 4, 1, 1)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return outputs


class MultiScaleDiscriminator(nn.Module):
    """Two PatchGANs: on the input and on a half-size copy (3x3 average pooling, as pix2pixHD)."""

    def __init__(self, in_channels: int, width: int, scales: int = 2):
        super().__init__()
        self.discriminators = nn.ModuleList(PatchDiscriminator(in_channels, width) for _ in range(scales))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for i, discriminator in enumerate(self.discriminators):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(discriminator(x))
        return outputs


def load_parser(device) -> nn.Module:
    """Our compact parser, frozen (the parsing loss and the dev evaluation)."""
    from faceedit_parsing.backend import load_compact

    parser, _ = load_compact(device=str(device))
    return parser.eval().requires_grad_(False)


# Sums the parser's 19 CelebAMask-HQ class probabilities into the model's 11 Helen classes.
HELEN_GROUPS = torch.from_numpy((np.arange(pp.N_HELEN)[:, None] == CELEBAMASK_TO_HELEN[None]).astype(np.float32))


# ------------------------------------------------------------------------------------------------ losses
def adversarial_d(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]], kind: str) -> torch.Tensor:
    total = 0.0
    for r, f in zip(real, fake):
        if kind == "hinge":
            total = total + F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean()
        else:
            total = total + 0.5 * (((r[-1] - 1) ** 2).mean() + (f[-1] ** 2).mean())
    return total / len(real)


def adversarial_g(fake: list[list[torch.Tensor]], kind: str) -> torch.Tensor:
    total = 0.0
    for f in fake:
        total = total + (-f[-1].mean() if kind == "hinge" else ((f[-1] - 1) ** 2).mean())
    return total / len(fake)


def feature_matching(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]], select: torch.Tensor
                     ) -> torch.Tensor:
    """L1 between the discriminators' intermediate features of real and rendered ``same`` samples."""
    if not select.any():
        return fake[0][0].new_zeros(())
    total = 0.0
    for r, f in zip(real, fake):
        for r_layer, f_layer in zip(r[:-1], f[:-1]):
            total = total + F.l1_loss(f_layer[select], r_layer[select].detach()) / (len(r) - 1)
    return total / len(real)


def parsing_loss(parser: nn.Module, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the parse of ``image`` against the Helen ``target`` (our parser's 19 classes
    summed per Helen class)."""
    probabilities = parser(image).softmax(1)
    helen = F.conv2d(probabilities, HELEN_GROUPS[:, :, None, None].to(image.device))
    return F.nll_loss(torch.log(helen.clamp(min=1e-6)), target)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * torch.mean(1 + logvar - mu ** 2 - logvar.exp())


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weight = mask.expand_as(a)
    return ((a - b).abs() * weight).sum() / weight.sum().clamp(min=1.0)


def train_step(model: CompactMaskGuided, image_decoders: ComponentImageDecoders, D: MultiScaleDiscriminator,
               parser: nn.Module, g_opt, d_opt, batch: Batch, noise: dict[str, torch.Tensor], config: dict
               ) -> dict[str, float]:
    # Codes (sampled: reparameterisation), the autoencoder branch, and the render of the target layout.
    codes, kl, local = {}, 0.0, 0.0
    for component, (mu, logvar) in model.encode(batch.inputs).items():
        codes[component] = mu + noise[component] * torch.exp(0.5 * logvar)
        kl = kl + kl_divergence(mu, logvar) / len(COMPONENTS)
    targets = component_image_targets(batch.inputs)
    for component, decoded in image_decoders(codes).items():
        local = local + F.l1_loss(decoded, targets[component]) / len(COMPONENTS)
    fake = model.compose(batch.target_input, model.decode_features(codes), batch.centres, batch.image,
                         batch.background_mask)

    # Discriminator: real photos with their own labels vs renders with the target labels.
    real_in = torch.cat([batch.image, batch.source_one_hot], 1)
    d_real = D(real_in)
    d_fake = D(torch.cat([fake.detach(), batch.target_one_hot], 1))
    d_loss = adversarial_d(d_real, d_fake, config["gan_loss"])
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()

    D.requires_grad_(False)
    g_fake = D(torch.cat([fake, batch.target_one_hot], 1))
    D.requires_grad_(True)
    g_gan = adversarial_g(g_fake, config["gan_loss"])
    g_fm = feature_matching(d_real, g_fake, batch.is_same)
    g_rec = masked_l1(fake, batch.image, batch.rec_mask)
    g_parse = parsing_loss(parser, fake, batch.target_labels)
    g_loss = (config["lambda_gan"] * g_gan + config["lambda_fm"] * g_fm + config["lambda_rec"] * g_rec
              + config["lambda_parse"] * g_parse + config["lambda_local"] * local + config["lambda_kl"] * kl)
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    g_opt.step()
    values = {"D/adv": d_loss, "G/adv": g_gan, "G/fm": g_fm, "G/rec": g_rec, "G/parse": g_parse,
              "G/local": local, "G/kl": kl, "G/total": g_loss}
    out = {k: float(v.detach()) for k, v in values.items()}
    if not all(math.isfinite(v) for v in out.values()):
        raise FloatingPointError(f"non-finite loss: {out}")
    return out


# ------------------------------------------------------------------------------------------------ evaluation
def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    if not where.any():
        return float("nan")
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2)[where].mean())
    return 99.0 if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def iou_counts(predicted: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (intersection, union) pixel counts over the 19 classes."""
    intersection = np.bincount(expected[predicted == expected].ravel(), minlength=N_CLASSES)[:N_CLASSES]
    area_p = np.bincount(predicted.ravel(), minlength=N_CLASSES)[:N_CLASSES]
    area_e = np.bincount(expected.ravel(), minlength=N_CLASSES)[:N_CLASSES]
    return intersection, area_p + area_e - intersection


def mean_iou(intersection: np.ndarray, union: np.ndarray, classes=None) -> float:
    classes = np.arange(N_CLASSES) if classes is None else np.asarray(classes)
    present = classes[union[classes] > 0]
    return float(np.mean(intersection[present] / union[present])) if len(present) else float("nan")


def dev_edit(faces: list[Face], i: int):
    """The scripted edit of dev face ``i`` (cycling through EDIT_SCRIPT; swaps take the next face's part)."""
    edit = label_edits.EDIT_SCRIPT[i % len(label_edits.EDIT_SCRIPT)]
    donor = faces[(i + 1) % len(faces)]
    return edit, donor


@torch.no_grad()
def parse_plain(parser: nn.Module, image: np.ndarray) -> np.ndarray:
    """Labels of a 256 px uint8 face by one plain pass of the parser (on the parser's device)."""
    from faceedit_parsing.compact import normalize

    x = normalize(torch.from_numpy(np.array(image))[None]).to(next(parser.parameters()).device)
    return parser(x).argmax(1)[0].cpu().numpy().astype(np.int64)


@torch.no_grad()
def evaluate(model: CompactMaskGuided, parser: nn.Module, faces: list[Face], limit: int = 0) -> dict:
    """Dev metrics: face-region PSNR of renders from the face's own labels (the whole render, no
    blending), and the parse (our parser, one plain pass) of renders of scripted edits against the
    edited labels: mIoU over the 13 major and all 19 classes, pixels pooled over the dev faces."""
    model.eval()
    psnrs, skipped = [], 0
    intersection = np.zeros(N_CLASSES)
    union = np.zeros(N_CLASSES)
    subset = faces[:limit or None]
    for i, face in enumerate(subset):
        try:
            own = render(model, face.image, face.labels, face.labels, "face")
            edit, donor = dev_edit(subset, i)
            if edit.needs_donor:
                component = edit.params["component"]
                edited_image, edited = transfer(model, face.image, face.labels, donor.image, donor.labels,
                                                (component,), "face")
            else:
                edited = edit.apply(face.labels)
                edited_image = render(model, face.image, face.labels, edited, "face")
        except ValueError:  # parts too close to the border for the model
            skipped += 1
            continue
        psnrs.append(psnr(own, face.image, np.isin(face.labels, FACE_REGION_CLASSES)))
        counts = iou_counts(parse_plain(parser, edited_image), edited.astype(np.int64))
        intersection += counts[0]
        union += counts[1]
    model.train()
    return {"dev_faces": len(psnrs), "dev_skipped": skipped,
            "dev_psnr_face": round(float(np.mean(psnrs)), 3) if psnrs else float("nan"),
            "dev_miou_major_edit": round(mean_iou(intersection, union, MAJOR_CLASSES), 4),
            "dev_miou_all_edit": round(mean_iou(intersection, union), 4)}


# ------------------------------------------------------------------------------------------------ checkpoints
def export_model(model: CompactMaskGuided, path: Path) -> str:
    """Write the float16 test-time state dict; return its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(export_state_dict(model), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faceedit train maskguided", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True,
                   help="CelebAMask-HQ folder with train/ (or images/ + masks/); val/ is refused")
    p.add_argument("--unlabeled", type=Path, help="faces without labels (labelled by our parser), e.g. "
                   "celebamask_hq/unlabeled")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, history, best model)")
    p.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT_NAME}")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--steps", type=int, help=f"total steps (default {DEFAULTS['steps']})")
    p.add_argument("--batch", type=int, help=f"batch size (default {DEFAULTS['batch']})")
    for name in ARCHITECTURE_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"default {DEFAULTS[name]}")
    for name in ("lr", "beta1", "beta2", "decay", "lambda_gan", "lambda_fm", "lambda_rec", "lambda_parse",
                 "lambda_local", "lambda_kl", "p_same", "p_edit", "p_swap", "p_layout"):
        p.add_argument("--" + name.replace("_", "-"), type=float, help=f"default {DEFAULTS[name]}")
    p.add_argument("--gan-loss", choices=("lsgan", "hinge"), help="default lsgan")
    p.add_argument("--seed", type=int)
    p.add_argument("--dev", type=int, default=DEV_PAIRS, help="last N training pairs held out for model selection")
    p.add_argument("--limit", type=int, default=0, help="use only the first N training pairs (tests; 0 = all)")
    p.add_argument("--dev-every", type=int, default=250, help="dev evaluation every N steps (and at the end)")
    p.add_argument("--dev-limit", type=int, default=0, help="evaluate only N dev faces (0 = all)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, default=0, help="checkpoint and stop after this wall time")
    p.add_argument("--export", type=Path, help="write the float16 model (for shipping) here at the end")
    p.add_argument("--export-from", choices=("last", "best"), default="last",
                   help=f"export the last model or the best dev one ({BEST_NAME})")
    return p


def resolve_config(args: argparse.Namespace, saved: dict | None) -> dict:
    config = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key, None)
        config[key] = given if given is not None else (saved or {}).get(key, default)
    if saved:
        for key in ARCHITECTURE_FLAGS:
            if config[key] != saved[key]:
                raise CheckpointError(f"--{key.replace('_', '-')} {config[key]} differs from the checkpoint's "
                                      f"{saved[key]}")
    if any(config[f"p_{k}"] < 0 for k in KINDS) or sum(config[f"p_{k}"] for k in KINDS) <= 0:
        raise ValueError("--p-same/--p-edit/--p-swap/--p-layout must be >= 0 and not all 0")
    return config


def _step_generators(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """Every random draw of a step comes from these, so a resumed run repeats it exactly."""
    return np.random.default_rng([seed, step]), torch.Generator().manual_seed(seed * 1_000_003 + step)


def learning_rate(config: dict, step: int) -> float:
    """Constant, then linear decay to 0 over the last ``decay`` share of the steps."""
    total = config["steps"]
    decay_start = total * (1.0 - config["decay"])
    if step < decay_start or total <= decay_start:
        return config["lr"]
    return config["lr"] * max(0.0, (total - step) / (total - decay_start))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _train(args)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    out = Path(args.out)
    checkpoint_path = out / CHECKPOINT_NAME
    saved = None
    if args.resume:
        if not checkpoint_path.is_file():
            print(f"--resume: no checkpoint at {checkpoint_path}", file=sys.stderr)
            return 2
        saved = read_training_checkpoint(checkpoint_path)
    config = resolve_config(args, saved["config"] if saved else None)
    out.mkdir(parents=True, exist_ok=True)

    folder = celebamask_training_folder(args.data)
    train_names, dev_names = split_names(folder, args.dev)
    faces = [f for f in load_pairs(folder, train_names[:args.limit or None]) if usable(f.labels)]
    if args.unlabeled:
        faces += [f for f in parse_unlabeled(args.unlabeled, args.limit) if usable(f.labels)]
    dev_faces = load_pairs(folder, dev_names[:args.dev_limit or None])
    if not faces:
        raise ValueError(f"no usable training faces in {folder}")

    torch.manual_seed(config["seed"])
    architecture = {k: config[k] for k in ARCHITECTURE_KEYS}
    model = CompactMaskGuided(**architecture, variational=True).to(device)
    image_decoders = ComponentImageDecoders(config["code_size"], config["encoder_width"]).to(device)
    D = MultiScaleDiscriminator(3 + pp.N_HELEN, config["disc_width"]).to(device)
    parser = load_parser(device)
    betas = (float(config["beta1"]), float(config["beta2"]))
    g_opt = torch.optim.Adam(list(model.parameters()) + list(image_decoders.parameters()), config["lr"], betas)
    d_opt = torch.optim.Adam(D.parameters(), config["lr"], betas)

    step, best, records = 0, -1.0, []
    history_path = out / HISTORY_NAME
    if saved:
        try:
            model.load_state_dict(saved["model"])
            image_decoders.load_state_dict(saved["image_decoders"])
            D.load_state_dict(saved["discriminator"])
            g_opt.load_state_dict(saved["g_optimizer"])
            d_opt.load_state_dict(saved["d_optimizer"])
            step, best = int(saved["step"]), float(saved["best_dev_miou"])
            torch.set_rng_state(saved["torch_rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{checkpoint_path} does not match this network: {exc}") from None
        if history_path.is_file():  # drop what was logged after the checkpoint (a crash, a stop)
            records = [r for r in json.loads(history_path.read_text())["records"] if r["step"] <= step]
        print(f"resumed at step {step}", flush=True)

    exported = sum(p.numel() for n, p in model.named_parameters() if ".logvar." not in n)
    print(f"model {n_parameters(model):,} parameters ({exported:,} exported), image decoders {n_parameters(image_decoders):,}, discriminator {n_parameters(D):,}; "
          f"{len(faces)} training faces, {len(dev_faces)} dev; steps {step} -> {config['steps']} on {device}",
          flush=True)
    history_config = {**config, "data": str(folder), "unlabeled": str(args.unlabeled or ""),
                      "dev_names": dev_names[:3] + ["..."]}

    def save(step: int) -> None:
        save_atomically({"model": model.state_dict(), "image_decoders": image_decoders.state_dict(),
                      "discriminator": D.state_dict(), "g_optimizer": g_opt.state_dict(),
                      "d_optimizer": d_opt.state_dict(), "step": step, "best_dev_miou": best,
                      "torch_rng": torch.get_rng_state(), "config": config}, checkpoint_path)

    def dev_record(step: int) -> dict:
        nonlocal best
        record = {"step": step, "kind": "dev", **evaluate(model, parser, dev_faces)}
        if record["dev_miou_major_edit"] > best:
            best = record["dev_miou_major_edit"]
            export_model(model, out / BEST_NAME)
            record["best"] = True
        print("dev", json.dumps(record), flush=True)
        return record

    leg = TrainingLeg(args, config["steps"], records, history_path, history_config, save,
                      dev_record if dev_faces else None)
    model.train()
    image_decoders.train()
    D.train()
    while step < config["steps"]:
        for opt in (g_opt, d_opt):
            for group in opt.param_groups:
                group["lr"] = learning_rate(config, step)
        rng, torch_gen = _step_generators(config["seed"], step)
        batch = sample_batch(faces, config["batch"], config, rng, device)
        noise = {c: torch.randn(config["batch"], config["code_size"], generator=torch_gen).to(device)
                 for c in COMPONENTS}
        values = train_step(model, image_decoders, D, parser, g_opt, d_opt, batch, noise, config)
        step += 1
        leg.add({**values, "same_share": float(batch.is_same.float().mean())})
        if leg.end_of_step(step, lr=learning_rate(config, step - 1)):
            break
    leg.finish(step, checkpoint_path)

    if args.export:
        source = model
        if args.export_from == "best":
            if not (out / BEST_NAME).is_file():
                print(f"--export-from best: no {BEST_NAME} yet in {out}", file=sys.stderr)
                return 2
            state = read_training_checkpoint(out / BEST_NAME)
            source = CompactMaskGuided.for_state(state)
            source.load_state_dict(state)
        print("exported", args.export, "sha256", export_model(source, args.export), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
