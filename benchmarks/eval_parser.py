"""Validation IoU of our compact face parser on CelebAMask-HQ val (100 pairs, 256 px).

Writes ``benchmarks/results/parser_val.json`` and ``parser_val.md``: IoU per class (accumulated over
the whole set), the mean over the 13 major classes (``vocab.MAJOR_CLASSES``, the headline number)
and over all classes present. ``--overlays DIR`` also writes colour overlays of a few val faces
(dataset pixels: keep them out of the repository).

    .venv/bin/python benchmarks/eval_parser.py [--split val|dev] [--weights PATH] [--data DIR] [--tta MODE]
                                               [--figure PNG] [--overlays DIR]

``--split dev`` scores the trainer's dev split instead (the last 100 train pairs by name, held out by
``faceedit train parser --dev 100``): the split for choices (checkpoint, fine-tuning, test-time
augmentation). The val faces are for the figures, measured once the choices are made.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from faceedit_parsing.backend import compact_weights_path, load_compact
from faceedit_parsing.compact import TTA_MODES, TTA_SIZES, n_parameters, predict
from faceedit_parsing.train import confusion, iou_from_confusion, load_pairs, major_miou
from napari_faceedit.vocab import CLASS_NAMES, MAJOR_CLASSES, N_CLASSES, colorize

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "celebamask_hq" / "val"
TRAIN_DATA = REPO.parent / "shared" / "data" / "celebamask_hq" / "train"
DEV_PAIRS = 100
SELECTION_NOTES = {
    "dev": "the dev split: these faces chose the checkpoint, the fine-tuning and the test-time augmentation",
    "val": ("held out: the shipped weights were trained with the dev split carved from train, every choice was "
            "made there, and these faces informed none"),
}  # the shipped parser's run: faceedit train parser --dev 100 (the last 100 train pairs by name)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha-blend the label colours over the image (background left as is)."""
    colours = colorize(labels).astype(np.float32)
    out = image.astype(np.float32)
    face = labels > 0
    out[face] = (1 - alpha) * out[face] + alpha * colours[face]
    return out.round().astype(np.uint8)


def readme_figure(path: Path) -> None:
    """Whole-photo parsing of skimage's astronaut (public domain): photo, overlay, label map, aligned crop."""
    from PIL import Image
    from skimage.data import astronaut

    from faceedit_parsing.backend import CompactParserBackend
    from faceedit_parsing.compact import INPUT_SIZE
    from napari_faceedit.runner import execute
    from napari_faceedit.tasks import ParseRequest

    photo = astronaut()
    result = execute(CompactParserBackend(), ParseRequest(image=photo), lambda *a: None, lambda: False)
    labels = result.labels
    print("figure:", result.provenance.notes)
    tiles = [photo, overlay(photo, labels), colorize(labels)]
    if "boxes" in result.extras:  # zoom on the (first) face
        x0, y0, x1, y1 = result.extras["boxes"][0]
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 0.9
        box = [int(max(0, cx - half)), int(max(0, cy - half)), int(min(photo.shape[1], cx + half)),
               int(min(photo.shape[0], cy + half))]
        zoom = overlay(photo, labels)[box[1]:box[3], box[0]:box[2]]
        tiles.append(np.asarray(Image.fromarray(zoom).resize(photo.shape[1::-1], Image.LANCZOS)))
    figure = np.concatenate([np.asarray(Image.fromarray(t).resize((256, 256), Image.LANCZOS)) for t in tiles], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(figure).save(path, optimize=True)
    print(f"README figure: {path} ({INPUT_SIZE} px parser, {len(tiles)} panels)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--data", type=Path, default=None, help="a folder of pairs (default: the split's)")
    p.add_argument("--split", choices=("val", "dev"), default="val",
                   help=f"val: celebamask_hq/val (the figures); dev: the last {DEV_PAIRS} celebamask_hq/train pairs "
                        "(the trainer's dev split, for choices)")
    p.add_argument("--tta", choices=sorted(TTA_MODES), default="multiscale",
                   help="test-time augmentation of the headline numbers (the backend's default: multiscale)")
    p.add_argument("--out", type=Path, default=None, help="OUT.json and OUT.md (default: benchmarks/results/parser_SPLIT)")
    p.add_argument("--overlays", type=Path, help="also write val-face overlays here (e.g. /tmp/parser_overlays)")
    p.add_argument("--figure", type=Path, help="write the README figure (skimage astronaut, no dataset pixels) here")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.out = args.out or REPO / "benchmarks" / "results" / f"parser_{args.split}"
    if args.data is None:
        args.data = DEFAULT_DATA if args.split == "val" else TRAIN_DATA
    if args.figure:
        torch.set_num_threads(args.threads)
        readme_figure(args.figure)  # always the shipped weights (what the backend uses)
        if not args.data.exists():
            return 0
    if not args.data.exists():
        print(f"validation data not found: {args.data}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    weights = args.weights or compact_weights_path()
    model, sha = load_compact(str(weights))
    images, masks = load_pairs(args.data)
    if args.split == "dev":
        images, masks = images[-DEV_PAIRS:], masks[-DEV_PAIRS:]

    started = time.time()
    matrix = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    other_matrices = {mode: np.zeros_like(matrix) for mode in TTA_MODES if mode != args.tta}
    per_image = []
    predictions = []
    for image, mask in zip(images, masks):
        pred = predict(model, image, **TTA_MODES[args.tta])
        m = confusion(pred, mask)
        matrix += m
        for mode, other in other_matrices.items():
            other += confusion(predict(model, image, **TTA_MODES[mode]), mask)
        per_image.append(major_miou(iou_from_confusion(m)))
        predictions.append(pred)
    seconds = time.time() - started
    iou = iou_from_confusion(matrix)
    # The shipped pipeline, as users run it: detect -> align -> parse the crop -> warp the labels back.
    from faceedit_parsing.backend import CompactParserBackend
    from napari_faceedit.runner import execute
    from napari_faceedit.tasks import ParseRequest

    pipeline = np.zeros_like(matrix)
    for image, mask in zip(images, masks):
        parsed = execute(CompactParserBackend(), ParseRequest(image=image, params={"tta": args.tta}))
        pipeline += confusion(parsed.labels, mask)
    pipeline_iou = iou_from_confusion(pipeline)
    result = {
        "model": "faceparse-compact",
        "weights": str(Path(weights).resolve().relative_to(REPO)) if Path(weights).resolve().is_relative_to(REPO)
        else str(weights),
        "weights_sha256": sha,
        "parameters": n_parameters(model),
        "split": args.split,
        "data": (f"CelebAMask-HQ {args.split} ({args.data.relative_to(REPO.parent) if args.data.is_relative_to(REPO.parent) else args.data}"
                 + (f", last {DEV_PAIRS} pairs by name)" if args.split == "dev" else ")")),
        "n_images": len(images),
        "resolution": int(images.shape[1]),
        "tta": args.tta,
        "tta_modes": {mode: {"flip": kw["flip_tta"], "sizes": list(kw["sizes"])} for mode, kw in TTA_MODES.items()},
        "iou_per_class": {CLASS_NAMES[c]: (None if np.isnan(iou[c]) else round(float(iou[c]), 4))
                          for c in range(N_CLASSES)},
        "major_classes": [CLASS_NAMES[c] for c in MAJOR_CLASSES],
        "major_miou": round(major_miou(iou), 4),
        "major_miou_other_tta": {mode: round(major_miou(iou_from_confusion(other)), 4)
                                 for mode, other in other_matrices.items()},
        "all_classes_miou": round(float(np.nanmean(iou)), 4),
        "pipeline_major_miou": round(major_miou(pipeline_iou), 4),
        "pipeline_all_classes_miou": round(float(np.nanmean(pipeline_iou)), 4),
        "selection_note": SELECTION_NOTES[args.split],
        "mean_per_image_major_miou": round(float(np.mean(per_image)), 4),
        "pixel_accuracy": round(float(np.trace(matrix) / matrix.sum()), 4),
        "seconds_per_image_all_modes_cpu_1_thread": round(seconds / len(images), 4),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"Compact parser on CelebAMask-HQ {args.split} ({len(images)} images, {result['resolution']} px"
        f", TTA {args.tta}): **major-class mIoU {result['major_miou']:.3f}** "
        f"(13 classes), all-class mIoU {result['all_classes_miou']:.3f}, pixel accuracy "
        f"{result['pixel_accuracy']:.3f}. Major-class mIoU with other test-time augmentation: "
        + ", ".join(f"{mode} {value:.3f}" for mode, value in result["major_miou_other_tta"].items())
        + " (none = one pass at 256 px; flip = averaged with the mirrored crop; multiscale = flip at "
        f"{', '.join(map(str, TTA_SIZES))} px). Through the shipped pipeline (detect, align, parse, warp "
        f"the labels back): major-class mIoU {result['pipeline_major_miou']:.3f}, all-class "
        f"{result['pipeline_all_classes_miou']:.3f}. Faces: {result['selection_note']}.",
        "",
        "| class | IoU | major |",
        "|---|---|---|",
    ]
    for c in range(N_CLASSES):
        value = result["iou_per_class"][CLASS_NAMES[c]]
        lines.append(f"| {CLASS_NAMES[c]} | {'n/a' if value is None else f'{value:.3f}'} | "
                     f"{'yes' if c in MAJOR_CLASSES else ''} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    if args.overlays:
        from PIL import Image

        args.overlays.mkdir(parents=True, exist_ok=True)
        tiles = [np.concatenate([overlay(images[i], predictions[i]), overlay(images[i], masks[i])], 0)
                 for i in range(min(4, len(images)))]
        Image.fromarray(np.concatenate(tiles, 1)).save(args.overlays / "val_overlays.png")
        print(f"val-face overlays (top: ours, bottom: ground truth) in {args.overlays / 'val_overlays.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
