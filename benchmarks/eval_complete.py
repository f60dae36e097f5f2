"""Classic completion on real faces: mean absolute error inside holes over whole features
(eye+brow, mouth, nose), ours (mirror + biharmonic) vs biharmonic alone.

    python benchmarks/eval_complete.py [--limit N]     -> benchmarks/results/complete_eval.{json,md}
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

from faceedit_classic.complete import ClassicCompletion, biharmonic_fill
from napari_faceedit.runner import execute
from napari_faceedit.tasks import CompleteRequest
from napari_faceedit.vocab import CLASS_INDEX

REPO = Path(__file__).resolve().parents[1]
VAL = REPO.parent / "shared" / "data" / "celebamask_hq" / "val"
HOLES = {
    "left eye + brow": ("l_eye", "l_brow"),
    "mouth": ("u_lip", "l_lip", "mouth"),
    "nose": ("nose",),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    rows = {name: {"ours": [], "biharmonic": [], "mirrored": 0, "n": 0} for name in HOLES}
    start = time.perf_counter()
    for image_path in sorted((VAL / "images").glob("*.jpg"))[: args.limit]:
        image = io.imread(image_path)
        labels = io.imread(VAL / "masks" / (image_path.stem + ".png"))
        for name, classes in HOLES.items():
            hole = ndimage.binary_dilation(np.isin(labels, [CLASS_INDEX[c] for c in classes]), iterations=6)
            if hole.sum() < 100:
                continue
            ours = execute(ClassicCompletion, CompleteRequest(image=image, mask=hole, labels=labels))
            row = rows[name]
            row["n"] += 1
            row["mirrored"] += "mirror fill" in ours.provenance.notes
            row["ours"].append(float(np.abs(ours.image.astype(float) - image)[hole].mean()))
            row["biharmonic"].append(float(np.abs(biharmonic_fill(image, hole).astype(float) - image)[hole].mean()))
    summary = {
        name: {"images": r["n"], "mirror_used": r["mirrored"],
               "mae_ours": round(float(np.mean(r["ours"])), 2), "mae_biharmonic": round(float(np.mean(r["biharmonic"])), 2)}
        for name, r in rows.items() if r["n"]
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "complete_eval.json").write_text(json.dumps(
        {"data": "celebamask_hq/val (256 px)", "metric": "mean |pred - truth| in grey levels inside the hole",
         "seconds": round(time.perf_counter() - start, 1), "holes": summary}, indent=2))
    lines = ["| hole | images | mirror used | MAE ours | MAE biharmonic |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['images']} | {v['mirror_used']} | {v['mae_ours']} | {v['mae_biharmonic']} |"
              for k, v in summary.items()]
    (out / "complete_eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
