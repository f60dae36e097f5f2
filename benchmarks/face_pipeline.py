"""The core face pipeline on real photos: align -> paste back round trip, the 29-face group photo,
and what the detector's thread count costs.

    python benchmarks/face_pipeline.py [--shared ../shared] [--out benchmarks/results/face_pipeline.json]

Round trip: an identity face backend (returns its aligned crop unchanged) runs through the whole
pipeline; pixels outside the paste weights must be bit-identical, inside we report the resampling
error (mean and 99th percentile, grey levels). Detection runs in this process alone, so setting
torch's thread count here changes nothing else.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from napari_faceedit.backend import FaceBackend
from napari_faceedit.runner import execute
from napari_faceedit.tasks import RestoreRequest, Task

REPO = Path(__file__).resolve().parents[1]


def identity_backend(template: str, size: int):
    class Identity(FaceBackend):
        name = f"identity-{template}-{size}"
        tasks = frozenset({Task.RESTORE})
        crop_size = size

        def process_crop(self, face, ctx):
            return face.image

    Identity.template = template
    return Identity


def load(path: Path) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def round_trip(photo: np.ndarray, template: str, size: int) -> dict:
    start = time.perf_counter()
    result = execute(identity_backend(template, size), RestoreRequest(image=photo))
    seconds = time.perf_counter() - start
    weights = result.extras["paste_weights"]
    error = np.abs(result.image.astype(np.int16) - photo).max(axis=2)
    inside = weights > 0
    return {"faces": int(result.provenance.notes.split(" of ")[1].split(" ")[0]) if " of " in result.provenance.notes else None,
            "changed_outside_px": int((error[~inside] > 0).sum()),
            "mean_error_inside": round(float(error[inside].mean()), 3) if inside.any() else None,
            "p99_error_inside": round(float(np.percentile(error[inside], 99)), 3) if inside.any() else None,
            "covered_fraction": round(float(inside.mean()), 4), "seconds": round(seconds, 3)}


def detection_seconds(photo: np.ndarray, threads: int, repeats: int = 3) -> float:
    import torch

    from napari_faceedit.face.detect import detect_faces

    torch.set_num_threads(threads)
    detect_faces(photo)  # warm-up (weights, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        detect_faces(photo)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)), 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "face_pipeline.json")
    args = parser.parse_args(argv)
    data = args.shared / "data"
    photos = {
        "solvay_1927 (1328x568, old group photo)": data / "degraded" / "old_photos" / "Solvay_conference_1927.png",
        "whole_imgs/00.jpg (several faces)": data / "degraded" / "whole_imgs" / "00.jpg",
        "ffhq/512/00000.png": data / "ffhq" / "512" / "00000.png",
        "selfie 2316x2316": data / "degraded" / "selfies" / "2020-12-10_175750.jpg",
    }
    results = {"round_trip": {}, "detection_seconds": {}}
    for label, path in photos.items():
        if not path.exists():
            continue
        photo = load(path)
        results["round_trip"][label] = {f"{t}@{s}": round_trip(photo, t, s)
                                        for t, s in (("ffhq", 512), ("celebamask", 256), ("celeba", 128))}
        results["detection_seconds"][label] = {f"{n}_threads": detection_seconds(photo, n) for n in (1, 2)}
        print(label, json.dumps(results["round_trip"][label]), results["detection_seconds"][label])
    import os

    results["machine"] = {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
