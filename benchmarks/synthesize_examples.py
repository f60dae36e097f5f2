"""Classical label-guided synthesis on real faces: a picture grid to look at, plus speed and a few
quality numbers over the fixed edit script.

    python benchmarks/synthesize_examples.py [--faces 3] [--limit 20]
        -> benchmarks/results/local/synthesize_classic_grid.png  (not in git: pictures of the research data; per face: source + each edit; top row the
           edited labels in the official colours, bottom row the classical render)
        -> benchmarks/results/synthesize_classic.json

Numbers (over the first ``--limit`` val faces; the donor for swaps is the next face in sorted order):
* seconds per render (one core);
* round trip: render the edit, then render the result back to the original labels; PSNR against
  the original inside the changed region (how much the warps and fills lose);
* lip colour after widen_mouth: distance of the new lip pixels' mean colour to the source lip colour
  and to the source skin colour (the first should be much smaller);
* eye transfer: brightness-independent mean error of the new eye pixels against the donor's eye
  (moved to its new place) and against the face's original pixels (the first should be smaller).
Needs ../shared/data/celebamask_hq/val.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import io

from faceedit_classic.synthesize import render_from_labels, transfer_components
from napari_faceedit.label_edits import EDIT_SCRIPT, LIPS
from napari_faceedit.vocab import CLASS_INDEX, colorize

REPO = Path(__file__).resolve().parents[1]
VAL = REPO.parent / "shared" / "data" / "celebamask_hq" / "val"
OUT = REPO / "benchmarks" / "results"
SKIN = CLASS_INDEX["skin"]
EYES = (CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"])


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return io.imread(path), io.imread(VAL / "masks" / (path.stem + ".png"))


def apply(edit, image, labels, donor_image, donor_labels):
    """(render, edited labels, changed region) of one scripted edit."""
    if edit.needs_donor:
        out, edited = transfer_components(image, labels, donor_image, donor_labels, edit.params["component"])
        return out, edited, np.any(out != image, axis=2) | (edited != labels)
    edited = edit.apply(labels)
    out, region = render_from_labels(image, labels, edited)
    return out, edited, region


def psnr(a, b, where) -> float:
    mse = ((a.astype(np.float64) - b) ** 2)[where].mean() if where.any() else 0.0
    return 99.0 if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def lip_color_distances(image, labels, out, edited) -> tuple[float, float]:
    new_lips = np.isin(edited, LIPS) & (labels == SKIN)
    drawn = out[new_lips].astype(np.float64).mean(axis=0)
    lip = image[np.isin(labels, LIPS)].astype(np.float64).mean(axis=0)
    skin = np.median(image[labels == SKIN], axis=0)
    return float(np.linalg.norm(drawn - lip)), float(np.linalg.norm(drawn - skin))


def eye_structure_errors(image, out, edited, donor_image, donor_labels) -> tuple[float, float] | None:
    to_donor, to_own = [], []
    for c in EYES:
        if not (edited == c).any() or not (donor_labels == c).any():
            continue
        shift = tuple(np.rint(np.array(ndimage.center_of_mass(edited == c))
                              - ndimage.center_of_mass(donor_labels == c)).astype(int))
        eye = (edited == c) & np.roll(donor_labels == c, shift, axis=(0, 1))
        if eye.sum() < 10:
            continue
        drawn = out[eye].astype(np.float64)
        for reference, into in ((np.roll(donor_image, shift, axis=(0, 1)), to_donor), (image, to_own)):
            ref = reference[eye].astype(np.float64)
            into.append(np.abs((drawn - drawn.mean(0)) - (ref - ref.mean(0))).mean())
    return (float(np.mean(to_donor)), float(np.mean(to_own))) if to_donor else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=3, help="faces in the picture grid")
    parser.add_argument("--limit", type=int, default=20, help="faces the numbers are measured on")
    args = parser.parse_args()
    paths = sorted((VAL / "images").glob("*.jpg"))
    OUT.mkdir(parents=True, exist_ok=True)

    seconds = {edit.name: [] for edit in EDIT_SCRIPT}
    round_trip = {edit.name: [] for edit in EDIT_SCRIPT if not edit.needs_donor}
    lips, eyes, grid_rows = [], [], []
    for i, path in enumerate(paths[: max(args.limit, args.faces)]):
        image, labels = load(path)
        donor_image, donor_labels = load(paths[(i + 1) % len(paths)])
        labels_row, render_row = [colorize(labels)], [image]
        for edit in EDIT_SCRIPT:
            start = time.perf_counter()
            out, edited, region = apply(edit, image, labels, donor_image, donor_labels)
            seconds[edit.name].append(time.perf_counter() - start)
            if not edit.needs_donor:
                back, _ = render_from_labels(out, edited, labels)
                round_trip[edit.name].append(psnr(back, image, region))
            if edit.function == "widen_mouth":
                lips.append(lip_color_distances(image, labels, out, edited))
            if edit.params.get("component") == "eyes":
                errors = eye_structure_errors(image, out, edited, donor_image, donor_labels)
                if errors is not None:
                    eyes.append(errors)
            if i < args.faces:
                labels_row.append(colorize(edited))
                render_row.append(out)
        if i < args.faces:
            grid_rows += [np.concatenate(labels_row, axis=1), np.concatenate(render_row, axis=1)]
        print(f"{path.stem[:8]}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in seconds.items()), flush=True)

    (OUT / "local").mkdir(parents=True, exist_ok=True)
    io.imsave(OUT / "local" / "synthesize_classic_grid.png", np.concatenate(grid_rows, axis=0), check_contrast=False)
    all_seconds = [s for values in seconds.values() for s in values]
    summary = {
        "data": f"celebamask_hq/val, first {args.limit} faces (256 px); donor = next face in sorted order",
        "edits": {edit.name: {"function": edit.function, **edit.params} for edit in EDIT_SCRIPT},
        "seconds_per_render": {"mean": round(float(np.mean(all_seconds)), 3),
                               "max": round(float(np.max(all_seconds)), 3),
                               "per_edit_mean": {k: round(float(np.mean(v)), 3) for k, v in seconds.items()}},
        "round_trip_psnr_db_in_changed_region": {k: round(float(np.mean(v)), 2) for k, v in round_trip.items()},
        "widen_mouth_new_lip_pixels": {
            "mean_distance_to_source_lip_color": round(float(np.mean([d[0] for d in lips])), 1),
            "mean_distance_to_source_skin_color": round(float(np.mean([d[1] for d in lips])), 1),
            "faces_closer_to_lip": int(sum(d[0] < d[1] for d in lips)), "faces": len(lips)},
        "swap_eyes_structure_error": {
            "to_donor_eye": round(float(np.mean([e[0] for e in eyes])), 2),
            "to_original_pixels": round(float(np.mean([e[1] for e in eyes])), 2),
            "faces_closer_to_donor": int(sum(e[0] < e[1] for e in eyes)), "faces": len(eyes)},
    }
    (OUT / "synthesize_classic.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
