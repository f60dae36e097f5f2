"""Derive the "celeba" and "celebamask" 5-point alignment templates from the shared data.

Runs our MTCNN detector on

* ``../shared/data/celeba/images`` (aligned CelebA 178x218, stored halved at 89x109): landmarks are
  mapped back to 178x218 pixel-centre coordinates and shifted up by the 20-row centre crop to 178x178
  (StarGAN's ``CenterCrop(178)``), reference size 178;
* ``../shared/data/celebamask_hq/train/images`` (256x256): reference size 256;

keeps the largest face per image with score >= 0.95, drops images whose landmarks lie more than
4 robust standard deviations from the median (missed or wrong detections), and prints the mean
landmarks, their spread, and the constants to paste into ``napari_faceedit/face/align.py``.

    .venv/bin/python benchmarks/derive_face_templates.py [--limit N]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from napari_faceedit.face.detect import detect_faces

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def landmarks_of(folder: Path, limit: int | None) -> tuple[np.ndarray, int]:
    files = sorted(folder.glob("*.jpg"))[:limit]
    found = []
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        faces = detect_faces(image, min_score=0.95, min_face_size=12)
        if faces:
            found.append(faces[0].landmarks)
    return np.asarray(found), len(files)


def robust_mean(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    flat = points.reshape(len(points), -1)
    median = np.median(flat, axis=0)
    mad = np.median(np.abs(flat - median), axis=0) * 1.4826
    keep = (np.abs(flat - median) <= 4 * np.maximum(mad, 1e-6)).all(axis=1)
    kept = points[keep]
    return kept.mean(0), kept.std(0), int(keep.sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images per set")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 1
    results = {}

    start = time.time()
    points, total = landmarks_of(SHARED / "celeba" / "images", args.limit)
    points = (points + 0.5) * 2.0 - 0.5  # 89x109 -> 178x218 pixel-centre coordinates
    points[..., 1] -= (218 - 178) / 2  # centre crop 178x218 -> 178x178
    mean, spread, kept = robust_mean(points)
    results["celeba"] = {"reference": 178, "points": mean.round(2).tolist(), "std": spread.round(2).tolist(),
                         "images": total, "detected": len(points), "kept": kept}
    print(f"celeba: {time.time() - start:.0f} s", file=sys.stderr)

    start = time.time()
    points, total = landmarks_of(SHARED / "celebamask_hq" / "train" / "images", args.limit)
    mean, spread, kept = robust_mean(points)
    results["celebamask"] = {"reference": 256, "points": mean.round(2).tolist(), "std": spread.round(2).tolist(),
                             "images": total, "detected": len(points), "kept": kept}
    print(f"celebamask: {time.time() - start:.0f} s", file=sys.stderr)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
