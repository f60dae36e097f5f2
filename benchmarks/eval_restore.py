"""Restoration quality on the held-out CelebA split: degraded input vs classical vs our compact restorer.

    python benchmarks/eval_restore.py [--data ../shared/data/celeba/images] [--count 500] [--figure]

The validation split is the last 500 images (never trained on). Each is degraded once with the
training degradation model at a fixed seed (blur, 1-4x downsampling, noise, JPEG, resize back; 10 %
turned gray). Scores: PSNR (dB) and SSIM on the full 89x109 RGB image against the clean original.

- ``degraded``: the input itself;
- ``classic``: the ``classic-restore`` backend (NL-means denoising + luminance unsharp mask);
- ``restore-compact``: our network on the whole image (these images are already aligned faces, i.e.
  exactly the crops the backend's per-face pipeline feeds it).

Writes ``benchmarks/results/restore_eval.json`` and ``restore_eval.md``. ``--figure`` also writes
``resources/readme/restore_before_after.png`` from ``skimage.data.astronaut()`` (no dataset pixels).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FIGURE = REPO / "resources" / "readme" / "restore_before_after.png"


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def classic_restorer():
    """The lead's classical backend when installed, else the documented stand-in."""
    try:
        from faceedit_classic.restore import denoise_sharpen

        return "classic-restore (NL-means + luminance unsharp mask)", lambda image: denoise_sharpen(image)[0]
    except ImportError:
        from skimage.filters import unsharp_mask
        from skimage.restoration import denoise_tv_chambolle

        def fallback(image):
            data = denoise_tv_chambolle(image / 255.0, weight=0.05, channel_axis=-1)
            data = unsharp_mask(data, radius=1.5, amount=0.8, channel_axis=-1)
            return np.clip(np.rint(data * 255), 0, 255).astype(np.uint8)

        return "skimage denoise_tv_chambolle + unsharp_mask (classic-restore not installed)", fallback


def evaluate(data: Path, count: int) -> dict:
    from faceedit_gpen.backend import compact_weights_path, load_compact
    from faceedit_gpen.restore_net import count_parameters, restore_image
    from faceedit_gpen.train import load_images, psnr, split, validation_pairs

    images = load_images(data)
    _, val_images = split(images, 500)
    val_images = val_images[:count]
    pairs = validation_pairs(val_images)  # the same fixed degradations as during training
    model, sha = load_compact(None, "cpu")
    classic_name, classic = classic_restorer()
    methods = {"degraded": lambda image: image, "classic": classic,
               "restore-compact": lambda image: restore_image(model, image)}
    scores = {name: {"psnr": [], "ssim": []} for name in methods}
    seconds = {name: 0.0 for name in methods}
    for clean, low in pairs:
        for name, method in methods.items():
            start = time.perf_counter()
            out = method(low)
            seconds[name] += time.perf_counter() - start
            scores[name]["psnr"].append(psnr(out, clean))
            scores[name]["ssim"].append(ssim(out, clean))
    summary = {}
    for name, values in scores.items():
        p, s = np.array(values["psnr"]), np.array(values["ssim"])
        summary[name] = {"psnr_mean": round(float(p.mean()), 3), "psnr_std": round(float(p.std()), 3),
                         "ssim_mean": round(float(s.mean()), 4), "ssim_std": round(float(s.std()), 4),
                         "ms_per_image": round(1000 * seconds[name] / len(pairs), 1)}
    ours, base, cls = (np.array(scores[k]["psnr"]) for k in ("restore-compact", "degraded", "classic"))
    return {
        "split": f"last 500 of {len(images)} CelebA images (89x109), first {len(pairs)} of them scored",
        "degradation": "faceedit_gpen.degrade.degrade, DegradationConfig defaults, numpy seed 1234",
        "classic_method": classic_name,
        "weights": str(compact_weights_path().relative_to(REPO)), "weights_sha256": sha,
        "parameters": count_parameters(model),
        "results": summary,
        "ours_beats_degraded_fraction": round(float((ours > base).mean()), 3),
        "ours_beats_classic_fraction": round(float((ours > cls).mean()), 3),
    }


def write_markdown(report: dict, path: Path) -> None:
    lines = ["# Restoration on held-out CelebA faces", "",
             f"{report['split']}; degradation: {report['degradation']}.",
             f"Classical baseline: {report['classic_method']}. Ours: `restore-compact` "
             f"({report['parameters']:,} parameters, `{report['weights']}`).", "",
             "| method | PSNR (dB) | SSIM | ms / image |", "| --- | --- | --- | --- |"]
    for name, row in report["results"].items():
        lines.append(f"| {name} | {row['psnr_mean']:.2f} ± {row['psnr_std']:.2f} | "
                     f"{row['ssim_mean']:.4f} ± {row['ssim_std']:.4f} | {row['ms_per_image']} |")
    lines += ["", f"Ours beats the degraded input on {100 * report['ours_beats_degraded_fraction']:.1f} % of "
              f"the images and the classical backend on {100 * report['ours_beats_classic_fraction']:.1f} %.", ""]
    path.write_text("\n".join(lines))


def make_figure(path: Path) -> None:
    """Astronaut photo (public domain, skimage) shrunk so the face is CelebA-sized, degraded, restored."""
    from PIL import Image, ImageDraw
    from skimage import data

    from faceedit_gpen.backend import CompactRestoration
    from faceedit_gpen.degrade import degrade
    from napari_faceedit.face import detect
    from napari_faceedit.tasks import RestoreRequest

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.LANCZOS))
    rng = np.random.default_rng(11)
    _, low = degrade(photo, rng, allow_gray=False)
    try:
        faces = detect.detect_faces(low)
    except Exception:  # noqa: BLE001 - detector weights absent: the astronaut's known landmarks
        faces = []
    if not faces:
        landmarks = np.array([[204.1, 100.3], [247.2, 103.3], [224.3, 128.5], [201.1, 138.2], [245.3, 141.3]]) / 2
        faces = [detect.DetectedFace(box=[89, 29, 134, 87], score=1.0, landmarks=landmarks)]
    from napari_faceedit.runner import execute

    ours = execute(CompactRestoration(), RestoreRequest(image=low, landmarks=[f.landmarks for f in faces],
                                                        params={"paste": "soft-box"})).image
    _, classic = classic_restorer()
    panels = {"original": photo, "degraded": low, "classic": classic(low), "restore-compact (ours)": ours}
    x0, y0, x1, y1 = 70, 10, 160, 110  # the face region, at 256 px
    zoom = 3
    width, height = (x1 - x0) * zoom, (y1 - y0) * zoom
    canvas = Image.new("RGB", (len(panels) * (width + 8) + 8, height + 36), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (title, image) in enumerate(panels.items()):
        tile = Image.fromarray(image[y0:y1, x0:x1]).resize((width, height), Image.Resampling.NEAREST)
        left = 8 + index * (width + 8)
        canvas.paste(tile, (left, 28))
        draw.text((left, 8), title, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "celeba" / "images")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--figure", action="store_true", help="also write the README before/after figure")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.figure:
        make_figure(FIGURE)
        print(f"wrote {FIGURE}")
    if not args.data.exists():
        print(f"no data at {args.data}: evaluation skipped", file=sys.stderr)
        return 0 if args.figure else 1
    report = evaluate(args.data, args.count)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "restore_eval.json").write_text(json.dumps(report, indent=1))
    write_markdown(report, RESULTS / "restore_eval.md")
    print(json.dumps(report["results"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
