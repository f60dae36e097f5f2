"""Train our compact face parser (``faceedit train parser ...``).

Data: a folder with ``images/*.jpg|png`` and ``masks/<same stem>.png`` (class indices 0..18,
CelebAMask-HQ order). The decoded set is cached as one .npz so restarts are cheap. Augmentation
runs on whole batches with one affine warp each (scale, rotation, shift, horizontal flip with the
left/right label swap) plus colour jitter. Loss: cross-entropy + soft dice (dice lifts the small
classes: eyes, brows, lips). Checkpoints every ``--ckpt-every`` steps (tensors and plain values
only, read back with ``weights_only=True``); ``--resume`` continues from the last one with the same
per-step random draws.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from napari_faceedit.vocab import FLIP_PERMUTATION, MAJOR_CLASSES, N_CLASSES
from napari_faceedit.weights import WeightsError, read_checkpoint

from .compact import CompactParser, n_parameters, normalize, normalize_float

CHECKPOINT_NAME = "checkpoint_last.pt"


# ---------------------------------------------------------------- data
def list_pairs(root: Path) -> list[tuple[Path, Path]]:
    root = Path(root)
    pairs = []
    for image in sorted((root / "images").iterdir()):
        if image.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        mask = root / "masks" / (image.stem + ".png")
        if mask.exists():
            pairs.append((image, mask))
    if not pairs:
        raise FileNotFoundError(f"no image/mask pairs under {root} (expected images/ and masks/ with matching stems)")
    return pairs


def load_pairs(root: Path, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> images (N,H,W,3) uint8, masks (N,H,W) uint8. ``size`` resizes (bilinear / nearest)."""
    from PIL import Image

    images, masks = [], []
    for image_path, mask_path in list_pairs(root):
        image = Image.open(image_path).convert("RGB")
        mask = Image.open(mask_path)
        if mask.mode not in ("L", "P"):
            mask = mask.convert("L")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
            mask = mask.resize((size, size), Image.NEAREST)
        images.append(np.asarray(image, dtype=np.uint8))
        masks.append(np.asarray(mask, dtype=np.uint8))
    return np.stack(images), np.stack(masks)


def cached_pairs(root: Path, cache_dir: Path | None, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    if cache_dir is None:
        return load_pairs(root, size)
    names = "\n".join(p.name for p, _ in list_pairs(root))
    key = hashlib.sha1(f"{Path(root).resolve()}|{size}|{names}".encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"faceparse_{key}.npz"
    if cache.exists():
        with np.load(cache) as data:
            return data["images"], data["masks"]
    images, masks = load_pairs(root, size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, images=images, masks=masks)
    os.replace(tmp, cache)
    return images, masks


# ---------------------------------------------------------------- augmentation
def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    crop: int,
    scale: tuple[float, float] = (0.8, 1.25),
    max_rotation_deg: float = 15.0,
    max_shift: float = 0.1,
    flip_probability: float = 0.5,
    color_jitter: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N,H,W,3), uint8 (N,H,W) -> normalised float (N,3,crop,crop), int64 (N,crop,crop).

    One affine warp per sample: an output pixel at normalised (u, v) samples the input at
    A @ (u, v) + t. A flipped sample mirrors x and then swaps l/r classes (FLIP_PERMUTATION),
    because the subject's left eye becomes the image-left one.
    """
    n, h, w = masks.shape
    g = generator

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    zoom = torch.exp(uniform(math.log(scale[0]), math.log(scale[1])))
    angle = uniform(-max_rotation_deg, max_rotation_deg) * math.pi / 180
    flip = torch.rand(n, generator=g) < flip_probability
    view = (crop / w) / zoom  # fraction of the input the output window spans
    reach = (1 - view).clamp(min=0) + max_shift
    shift = torch.stack([uniform(-1, 1) * reach, uniform(-1, 1) * reach], 1)
    cos, sin = torch.cos(angle) * view, torch.sin(angle) * view
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta[:, :, 0] *= torch.where(flip, -1.0, 1.0)[:, None]
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, (n, 3, crop, crop), align_corners=False)

    x = images.permute(0, 3, 1, 2).float() / 255.0
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    y = y[:, 0].round().long()
    permutation = torch.from_numpy(FLIP_PERMUTATION).long()
    y = torch.where(flip[:, None, None], permutation[y], y)

    if color_jitter > 0:
        j = color_jitter
        brightness = uniform(1 - j, 1 + j).view(n, 1, 1, 1)
        contrast = uniform(1 - j, 1 + j).view(n, 1, 1, 1)
        saturation = uniform(1 - j, 1 + j).view(n, 1, 1, 1)
        channel_gain = 1 + (torch.rand(n, 3, 1, 1, generator=g) - 0.5) * (j / 2.5)
        x = x * brightness * channel_gain
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray.mean((2, 3), keepdim=True)) * contrast + gray.mean((2, 3), keepdim=True)
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = gray + (x - gray) * saturation
        x = x.clamp(0, 1)
    return normalize_float(x), y


# ---------------------------------------------------------------- loss and metrics
def parsing_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.5) -> torch.Tensor:
    ce = F.cross_entropy(logits, target)
    if dice_weight <= 0:
        return ce
    prob = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (prob * onehot).sum((0, 2, 3))
    total = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = 1 - (2 * inter + 1) / (total + 1)
    return ce + dice_weight * dice[present].mean()


def confusion(pred: np.ndarray, target: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    index = target.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(index, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU; NaN for a class absent from both prediction and target."""
    inter = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def major_miou(iou: np.ndarray) -> float:
    return float(np.nanmean(iou[list(MAJOR_CLASSES)]))


@torch.no_grad()
def evaluate(model, images: np.ndarray, masks: np.ndarray, batch: int = 10) -> np.ndarray:
    """Dataset-level confusion matrix at the images' own size."""
    model.eval()
    matrix = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    for start in range(0, len(images), batch):
        x = normalize(torch.from_numpy(images[start:start + batch]))
        pred = model(x).argmax(1).numpy()
        matrix += confusion(pred, masks[start:start + batch])
    return matrix


# ---------------------------------------------------------------- training
def parse_args(argv):
    p = argparse.ArgumentParser(prog="faceedit train parser", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="training folder with images/ and masks/")
    p.add_argument("--dev", type=int, default=0,
                   help="hold out the last N pairs of --data (by name) as the dev split, evaluated at each "
                        "checkpoint: the split for every choice (checkpoint, schedule, test-time augmentation)")
    p.add_argument("--val", help="validation folder (same layout), evaluated at each checkpoint; a set that "
                                 "informs no choice must not be given here")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log, exported weights")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=192, help="training crop (multiple of 32)")
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--dice-weight", type=float, default=0.5)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="/tmp", help="folder for the decoded-data cache ('' = none)")
    p.add_argument("--export", help="write the final float16 state dict here")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last.pt")
    p.add_argument("--max-minutes", type=float, default=0, help="stop (after checkpointing) after this wall time")
    return p.parse_args(argv)


def learning_rate(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_checkpoint(path: Path, model, optimizer, step: int, args, history: list) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
         "args": vars(args), "history": history},
        tmp,
    )
    os.replace(tmp, path)


def export_half(model, path: Path) -> str:
    """Save a float16 state dict (BatchNorm counters stay int64); return its sha256."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    checkpoint = out / CHECKPOINT_NAME
    resumed = None
    if args.resume:  # read before the data: a checkpoint that cannot be resumed fails at once
        if not checkpoint.exists():
            print(f"--resume: no checkpoint at {checkpoint}", file=sys.stderr)
            return 2
        try:
            resumed = read_checkpoint(checkpoint)
        except WeightsError as exc:
            print(f"--resume: {exc}", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else None
    images, masks = cached_pairs(Path(args.data), cache)
    if not 0 <= args.dev < len(images):
        print(f"--dev {args.dev}: {args.data} has {len(images)} pairs", file=sys.stderr)
        return 2
    dev = (images[-args.dev:], masks[-args.dev:]) if args.dev else None
    if args.dev:
        images, masks = images[: -args.dev], masks[: -args.dev]
    val = cached_pairs(Path(args.val), cache) if args.val else None
    images_t, masks_t = torch.from_numpy(images), torch.from_numpy(masks)

    torch.manual_seed(args.seed)
    model = CompactParser()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    step, history = 0, []
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        step, history = resumed["step"], resumed.get("history", [])
        print(f"resumed at step {step}", flush=True)
    print(f"{len(images)} training pairs, {n_parameters(model)} parameters, steps {step}->{args.steps}", flush=True)

    started = time.time()
    running = []
    while step < args.steps:
        model.train()
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # per-step draws: resume-exact
        pick = torch.randint(0, len(images_t), (args.batch,), generator=g)
        x, y = augment_batch(images_t[pick], masks_t[pick], g, args.crop)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        loss = parsing_loss(model(x), y, args.dice_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running.append(loss.item())
        if step % args.log_every == 0:
            print(f"step {step} loss {np.mean(running):.4f} lr {learning_rate(step - 1, args):.2e} "
                  f"{time.time() - started:.0f}s", flush=True)
            running = []
        out_of_time = args.max_minutes and (time.time() - started) > args.max_minutes * 60
        if step % args.ckpt_every == 0 or step == args.steps or out_of_time:
            record = {"step": step, "seconds": round(time.time() - started, 1)}
            for name, pairs in (("dev", dev), ("val", val)):
                if pairs is not None:
                    iou = iou_from_confusion(evaluate(model, *pairs))
                    record[f"{name}_major_miou"] = round(major_miou(iou), 4)
                    record[f"{name}_all_miou"] = round(float(np.nanmean(iou)), 4)
            history.append(record)
            save_checkpoint(checkpoint, model, optimizer, step, args, history)
            print("checkpoint", json.dumps(record), flush=True)
        if out_of_time:
            print("stopping: --max-minutes reached", flush=True)
            break
    if args.export:
        print("exported", args.export, "sha256", export_half(model, Path(args.export)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
