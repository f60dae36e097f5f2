"""Learned face completion (``completion-progressive``) vs the classical backend on held-apart faces.

    python benchmarks/eval_completion.py --weights PATH [--faces N] [--out benchmarks/results/completion_eval]
        -> OUT.json, OUT.md and benchmarks/results/local/completion_grid.png (pictures of the research
           data: kept out of git)

``--weights``: an exported generator (``faceedit train completion --export``, float16 state dict),
or a training checkpoint (``checkpoint_last.pt``), whose EMA generator is exported first with the
trainer's own ``export_generator`` into a temporary file (the run folder is only read).

Faces: the first N (sorted by name) of ``../shared/data/celebamask_hq/val``, 256 px, never used for
training or model selection (the trainer's dev split is carved out of train). Both backends go
through ``napari_faceedit.runner.execute``, as a user's run would (detect -> align -> complete ->
paste back only the hole), and both see the image with the hole blanked to flat grey, so neither
can read what was there; the classical backend gets no label map.

1. Inside the hole, per hole type (a random rectangle and random brush strokes drawn with the
   trainer's own hole generators, fixed seed; the eyes, the nose and the mouth from the ground-truth
   label maps via ``label_edits.component_region``): MAE (grey levels), masked PSNR (MSE over hole
   pixels), SSIM on the hole's bounding box (``skimage.metrics.structural_similarity``) and the
   SSIM map averaged over hole pixels only.
2. Seam visibility: mean luma gradient magnitude on a 2 px band straddling the hole boundary (1 px
   outside, 1 px inside), minus the same in the original photo (> 0: edges the photo did not have).
3. Attribute control: our attribute classifier (faceedit_stargan, 5 attributes) can judge only two
   of the completion attributes, Male and Young. For each, the lower face (mouth + nose) and the face
   skin (skin + nose + mouth) are completed with the attribute on and off; we count how often the
   classifier's decision on the completed face goes from "no" (off) to "yes" (on). Chance baseline:
   the same count when a different attribute is toggled instead (Mouth_Slightly_Open on vs off),
   i.e. how often the decision changes just because the completion changed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, stats
from skimage import io
from skimage.metrics import structural_similarity

from faceedit_classic.complete import ClassicCompletion
from faceedit_completion.attributes import SUPPORTED_ATTRIBUTES
from faceedit_completion.backend import NO_FACE_NOTE, ProgressiveCompletion
from faceedit_completion.data import DEV_CELEBAMASK
from faceedit_completion.holes import random_rectangle, random_strokes
from faceedit_completion.model import generator_for_state, load_generator
from faceedit_completion.train import export_generator
from napari_faceedit.training import read_training_checkpoint
from faceedit_stargan.classifier import CLASSIFIER_ATTRIBUTES, CLASSIFIER_SIZE, load_classifier, predict_probabilities
from napari_faceedit.face.align import align_face
from napari_faceedit.face.detect import detect_faces
from napari_faceedit.face.pipeline import NoFaceFound
from napari_faceedit.label_edits import component_region
from napari_faceedit.runner import execute
from napari_faceedit.tasks import LUMA_WEIGHTS, CompleteRequest

REPO = Path(__file__).resolve().parents[1]
VAL = REPO.parent / "shared" / "data" / "celebamask_hq" / "val"
TRAIN = REPO.parent / "shared" / "data" / "celebamask_hq" / "train"
GRID_PATH = REPO / "benchmarks" / "results" / "local" / "completion_grid.png"  # data pictures: not in git
BLANK_GREY = 128  # what the hole is set to before either backend sees the image
HOLE_TYPES = ("rectangle", "strokes", "eyes", "nose", "mouth")
# Regions completed for the attribute-control test (face components of vocab.FACE_COMPONENTS).
ATTRIBUTE_REGIONS = {"lower face (mouth + nose)": ("mouth", "nose"), "face skin (skin + nose + mouth)": ("skin", "nose", "mouth")}
CONTROL_ATTRIBUTE = "Mouth_Slightly_Open"  # toggled for the chance baseline: not something the classifier judges
GENERATOR_ALONE = {"detail": "none"}  # the generator's upsampled fill, without the classical fill's fine detail
GRID_FACES = 3
GRID_REGION = ("mouth", "nose")
GRID_SETTINGS = (("learned, no attributes", {}), ("Male off", {"Male": 0.0}), ("Male on", {"Male": 1.0}),
                 ("Young off", {"Young": 0.0}), ("Young on", {"Young": 1.0}),
                 ("Smiling off", {"Smiling": 0.0}), ("Smiling on", {"Smiling": 1.0}))


# ------------------------------------------------------------------------------------ weights
def generator_file(weights: Path, scratch: Path) -> tuple[Path, str]:
    """An exported generator file for ``weights`` and a note on where it came from. A training
    checkpoint's EMA generator is exported (trainer's export function) into ``scratch``."""
    state = read_training_checkpoint(weights)
    if "architecture" in state:
        return weights, "exported generator"
    if "generator_ema" not in state:
        raise SystemExit(f"{weights} is neither an exported completion generator nor a training checkpoint")
    generator = generator_for_state(state["generator_ema"])
    generator.load_state_dict(state["generator_ema"])
    exported = scratch / "generator_from_checkpoint.pt"
    export_generator(generator, exported)
    return exported, f"EMA generator of training checkpoint at step {state.get('step')}, exported for this evaluation"


# ------------------------------------------------------------------------------------ holes and runs
def evaluation_holes(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The five hole types for one face (a component is skipped when its labels are absent)."""
    size = labels.shape[0]
    holes = {"rectangle": random_rectangle(rng, size), "strokes": random_strokes(rng, size)}
    for component in ("eyes", "nose", "mouth"):
        try:
            holes[component] = component_region(labels, component)
        except ValueError:  # the face shows no such part
            pass
    return holes


def blanked(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[hole] = BLANK_GREY
    return out


class Runner:
    """Runs a backend through the user's code path; when the detector finds no face in the blanked
    image, runs again treating the image as the aligned face crop it is, and counts that."""

    def __init__(self):
        self.runs: dict[str, int] = {}
        self.whole_image_fallbacks: dict[str, int] = {}

    def __call__(self, backend, image: np.ndarray, hole: np.ndarray, purpose: str,
                 attributes: dict | None = None, params: dict | None = None) -> np.ndarray:
        key = f"{backend.name}, {purpose}"
        self.runs[key] = self.runs.get(key, 0) + 1
        request = dict(image=image, mask=hole, attributes=dict(attributes or {}))
        try:
            result = execute(backend, CompleteRequest(**request, params=dict(params or {})))
            # Without attributes the learned backend fills a faceless picture classically (and says so).
            if NO_FACE_NOTE not in (result.provenance.notes or ""):
                return result.image
        except NoFaceFound:
            pass
        self.whole_image_fallbacks[key] = self.whole_image_fallbacks.get(key, 0) + 1
        return execute(backend, CompleteRequest(**request, params={**(params or {}), "whole_image": True})).image


# ------------------------------------------------------------------------------------ metrics
def luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.asarray(LUMA_WEIGHTS, np.float64)


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(luma(image))
    return np.hypot(gx, gy)


def boundary_band(hole: np.ndarray) -> np.ndarray:
    """2 px across the hole's edge: the last hole pixel and the first known pixel."""
    inner = hole & ~ndimage.binary_erosion(hole, border_value=1)
    outer = ndimage.binary_dilation(hole) & ~hole
    return inner | outer


def hole_metrics(result: np.ndarray, original: np.ndarray, hole: np.ndarray) -> dict[str, float]:
    difference = result.astype(np.float64) - original
    inside = difference[hole]
    mse = float((inside ** 2).mean())
    rows, cols = np.nonzero(hole)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    side = min(np.ptp(rows), np.ptp(cols)) + 1
    window = min(7, side if side % 2 else side - 1)
    if window >= 3:
        ssim_box, ssim_map = structural_similarity(original[box], result[box], channel_axis=2, data_range=255,
                                                   win_size=window, full=True)
        ssim_hole = float(ssim_map.mean(axis=2)[hole[box]].mean())
    else:  # a sliver thinner than SSIM's smallest window
        ssim_box = ssim_hole = float("nan")
    band = boundary_band(hole)
    gradient_result, gradient_original = gradient_magnitude(result)[band], gradient_magnitude(original)[band]
    return {
        "mae": float(np.abs(inside).mean()),
        "psnr": float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10))),
        "ssim_box": float(ssim_box),
        "ssim_hole": ssim_hole,
        "seam_excess": float(gradient_result.mean() - gradient_original.mean()),
        "seam_abs": float(np.abs(gradient_result - gradient_original).mean()),
        # hole pixels still exactly the blanking grey: the backend left them untouched
        "unfilled": float(np.all(result[hole] == BLANK_GREY, axis=1).mean()),
    }


METRICS = ("mae", "psnr", "ssim_box", "ssim_hole", "seam_excess", "seam_abs", "unfilled")


def summarise(rows: list[dict]) -> dict:
    out = {"n": len(rows)}
    for method in ("learned", "classical", "generator_alone", "learned_unblanked"):
        present = [r[method] for r in rows if method in r]
        if present:
            out[method] = {m: round(float(np.nanmean([p[m] for p in present])), 4) for m in METRICS}
    out["learned_better_mae_fraction"] = round(float(np.mean([r["learned"]["mae"] < r["classical"]["mae"] for r in rows])), 4)
    out["generator_alone_better_mae_fraction"] = round(float(np.mean(
        [r["generator_alone"]["mae"] < r["classical"]["mae"] for r in rows])), 4)
    out["seam_band_gradient_original"] = round(float(np.mean([r["band_gradient_original"] for r in rows])), 4)
    return out


# ------------------------------------------------------------------------------------ attribute control
def classify(classifier, images: list[np.ndarray], landmarks: np.ndarray) -> np.ndarray:
    """Classifier probabilities (N, 5) for completed photos, each aligned to the CelebA framing the
    classifier was trained on, with the same landmarks (those of the unedited photo) for all."""
    crops = np.stack([align_face(image, landmarks, CLASSIFIER_SIZE, "celeba").crop for image in images])
    return predict_probabilities(classifier, crops)


def flip_statistics(p_on: np.ndarray, p_off: np.ndarray) -> dict:
    """How the classifier's decision moves from the "off" completion to the "on" one."""
    on, off = p_on > 0.5, p_off > 0.5
    requested, against = int((on & ~off).sum()), int((~on & off).sum())
    eligible = int((~off).sum())
    higher = int((p_on > p_off).sum())
    n = len(p_on)
    return {
        "n": n,
        "flip_to_on": requested, "flip_to_on_rate": round(requested / n, 4),
        "flip_to_off": against, "changed_rate": round((requested + against) / n, 4),
        "off_decision_no": eligible, "flip_rate_where_off_is_no": round(requested / eligible, 4) if eligible else None,
        "mean_probability_change": round(float((p_on - p_off).mean()), 4),
        "probability_higher_when_on": higher,
        # sign test: is p(on) > p(off) more often than a coin would say?
        "sign_test_p": round(float(stats.binomtest(higher, n, 0.5, alternative="greater").pvalue), 6),
    }


# ------------------------------------------------------------------------------------ grid
def face_box(hole: np.ndarray, margin: float = 0.15) -> tuple[slice, slice]:
    """A square around the hole with a margin of context, inside the image (the grid's crop)."""
    rows, cols = np.nonzero(hole)
    centre_y, centre_x = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    half = int(max(np.ptp(rows), np.ptp(cols)) / 2 + margin * hole.shape[0])
    half = min(half, min(hole.shape) // 2)
    top = int(np.clip(centre_y - half, 0, hole.shape[0] - 2 * half))
    left = int(np.clip(centre_x - half, 0, hole.shape[1] - 2 * half))
    return slice(top, top + 2 * half), slice(left, left + 2 * half)


def save_grid(rows: list[dict], path: Path, tile: int = 192) -> None:
    """One row per face, one column per setting; under each tile the classifier's P(Male), P(Young)
    on the whole completed face (the tile itself is cropped around the hole)."""
    from PIL import Image, ImageDraw

    titles = ["original", "input (hole grey)", "classical"] + [name for name, _ in GRID_SETTINGS]
    header, footer = 16, 14
    canvas = Image.new("RGB", (tile * len(titles), header + len(rows) * (tile + footer)), "white")
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(titles):
        draw.text((column * tile + 4, 2), title, fill="black")
    for r, row in enumerate(rows):
        top = header + r * (tile + footer)
        for column, (image, probabilities) in enumerate(row["tiles"]):
            crop = Image.fromarray(np.ascontiguousarray(image[row["box"]])).resize((tile, tile), Image.Resampling.LANCZOS)
            canvas.paste(crop, (column * tile, top))
            male, young = (probabilities[CLASSIFIER_ATTRIBUTES.index(a)] for a in ("Male", "Young"))
            draw.text((column * tile + 4, top + tile + 1), f"P(Male) {male:.2f} P(Young) {young:.2f}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="exported generator, or a training checkpoint")
    p.add_argument("--faces", type=int, default=100, help="first N celebamask_hq/val faces (there are 100)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "completion_eval",
                   help="writes OUT.json and OUT.md")
    p.add_argument("--grid", type=Path, default=GRID_PATH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=("val", "dev"), default="val",
                   help="val: the held-apart faces (the figures); dev: the trainer's dev split (the last "
                        f"{DEV_CELEBAMASK} CelebAMask-HQ train pairs by name), for choices")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the machine is shared; one thread is also what the CLI uses
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="eval_completion_") as scratch:
        weights_file, weights_origin = generator_file(args.weights, Path(scratch))
        weights_sha256 = hashlib.sha256(weights_file.read_bytes()).hexdigest()
        generator = load_generator(weights_file)
    learned = ProgressiveCompletion(model=generator)
    classical = ClassicCompletion()
    classifier = load_classifier()
    if classifier is None:
        raise SystemExit("the attribute classifier (faceedit_stargan models/celeba_attr_classifier.pt) is missing")
    measurable = [a for a in SUPPORTED_ATTRIBUTES if a in CLASSIFIER_ATTRIBUTES]
    run = Runner()

    folder = VAL if args.split == "val" else TRAIN
    image_paths = sorted((folder / "images").glob("*.jpg"))
    image_paths = (image_paths if args.split == "val" else image_paths[-DEV_CELEBAMASK:])[: args.faces]
    per_type: dict[str, list[dict]] = {t: [] for t in HOLE_TYPES}
    attribute_probabilities: dict[str, dict[str, list]] = {region: {} for region in ATTRIBUTE_REGIONS}
    original_probabilities, no_landmarks, grid_rows = [], [], []
    for number, image_path in enumerate(image_paths):
        image = io.imread(image_path)
        labels = io.imread(folder / "masks" / (image_path.stem + ".png"))
        rng = np.random.default_rng([args.seed, number])
        for hole_type, hole in evaluation_holes(labels, rng).items():
            holed = blanked(image, hole)
            row = {"face": image_path.stem,
                   "learned": hole_metrics(run(learned, holed, hole, hole_type), image, hole),
                   "classical": hole_metrics(run(classical, holed, hole, hole_type), image, hole),
                   "generator_alone": hole_metrics(run(learned, holed, hole, hole_type + " generator alone",
                                                       params=GENERATOR_ALONE), image, hole),
                   # leak check: the original pixels under the hole, which the model should ignore
                   "learned_unblanked": hole_metrics(run(learned, image, hole, hole_type + " unblanked",
                                                         params=GENERATOR_ALONE), image, hole),
                   "band_gradient_original": float(gradient_magnitude(image)[boundary_band(hole)].mean())}
            per_type[hole_type].append(row)

        faces = detect_faces(image)
        if not faces:
            no_landmarks.append(image_path.stem)
            continue
        landmarks = faces[0].landmarks
        original_probabilities.append(classify(classifier, [image], landmarks)[0])
        settings = {"none": {}, CONTROL_ATTRIBUTE + "=1": {CONTROL_ATTRIBUTE: 1.0},
                    CONTROL_ATTRIBUTE + "=0": {CONTROL_ATTRIBUTE: 0.0}}
        for attribute in measurable:
            settings[attribute + "=1"], settings[attribute + "=0"] = {attribute: 1.0}, {attribute: 0.0}
        for region, components in ATTRIBUTE_REGIONS.items():
            hole = component_region(labels, components)
            holed = blanked(image, hole)
            completed = [run(learned, holed, hole, region, attributes) for attributes in settings.values()]
            for name, probabilities in zip(settings, classify(classifier, completed, landmarks)):
                attribute_probabilities[region].setdefault(name, []).append(probabilities)

        if len(grid_rows) < GRID_FACES:
            hole = component_region(labels, GRID_REGION)
            holed = blanked(image, hole)
            images = [image, holed, run(classical, holed, hole, "grid")] + [run(learned, holed, hole, "grid", a)
                                                                          for _, a in GRID_SETTINGS]
            grid_rows.append({"box": face_box(hole), "tiles": list(zip(images, classify(classifier, images, landmarks)))})
        print(f"face {number + 1}/{len(image_paths)} done ({time.perf_counter() - started:.0f} s)", flush=True)

    holes_summary = {t: summarise(rows) for t, rows in per_type.items() if rows}
    holes_summary["overall"] = summarise([r for rows in per_type.values() for r in rows])

    control = {}
    for region, table in attribute_probabilities.items():
        if not table:
            continue
        column = {a: CLASSIFIER_ATTRIBUTES.index(a) for a in measurable}
        probabilities = {name: np.stack(values) for name, values in table.items()}
        control[region] = {}
        for attribute in measurable:
            c = column[attribute]
            control[region][attribute] = {
                "toggle_attribute": flip_statistics(probabilities[attribute + "=1"][:, c], probabilities[attribute + "=0"][:, c]),
                "chance_baseline_toggle_" + CONTROL_ATTRIBUTE: flip_statistics(
                    probabilities[CONTROL_ATTRIBUTE + "=1"][:, c], probabilities[CONTROL_ATTRIBUTE + "=0"][:, c]),
                "classifier_yes_rate_unconditioned": round(float((probabilities["none"][:, c] > 0.5).mean()), 4),
            }
    original = np.stack(original_probabilities) if original_probabilities else np.zeros((0, len(CLASSIFIER_ATTRIBUTES)))

    stage = generator.trained_stage()
    results = {
        "faces": {"set": ("celebamask_hq/val (256 px; never used for training or model selection)" if args.split == "val"
                          else f"dev: the last {DEV_CELEBAMASK} celebamask_hq/train pairs (the trainer's dev split; for choices)"),
                  "split": args.split,
                  "count": len(image_paths), "names": [p.stem for p in image_paths]},
        "weights": {"given": str(args.weights), "origin": weights_origin,
                    "sha256": weights_sha256,
                    "trained_stage_px": stage[0], "trained_stage_alpha": round(stage[1], 4)},
        "protocol": {"blank_grey": BLANK_GREY, "seed": args.seed, "classical_labels": None,
                     "runs": run.runs,
                     "whole_image_fallbacks": run.whole_image_fallbacks,
                     "whole_image_fallback_means": "the detector found no face in the blanked image, so the run was repeated with whole_image=True (the val images are aligned CelebAMask-HQ crops)",
                     "hole_types": "rectangle and strokes: faceedit_completion.holes generators at 256 px; eyes, nose, "
                                   "mouth: label_edits.component_region on the ground-truth label maps",
                     "metrics": "mae in grey levels over hole pixels and channels; psnr from the MSE over hole pixels; "
                                "ssim_box on the hole's bounding box; ssim_hole = the SSIM map averaged over hole pixels; "
                                "seam_excess = mean luma gradient magnitude on the 2 px boundary band minus the original's "
                                "there (grey levels per px); seam_abs = mean |difference| of those gradients; unfilled = "
                                "fraction of hole pixels left at the blanking grey; means over holes",
                     "learned": "completion-progressive as shipped: the generator's fill with the fine detail of the "
                                "classical fill (backend parameter detail=classical)",
                     "generator_alone": "completion-progressive with detail=none: the generator's upsampled fill alone",
                     "learned_unblanked": "the generator alone given the original pixels under the hole (leak check: "
                                          "a model that ignores the hole's content scores the same as when blanked)"},
        "holes": holes_summary,
        "attribute_control": {
            "classifier": "faceedit_stargan celeba_attr_classifier.pt (" + ", ".join(CLASSIFIER_ATTRIBUTES) + ")",
            "measured": measurable,
            "not_measurable": {a: "our classifier has no output for it" for a in SUPPORTED_ATTRIBUTES if a not in measurable},
            "faces_without_landmarks": no_landmarks,
            "classifier_yes_rate_on_original_faces": {a: round(float((original[:, i] > 0.5).mean()), 4)
                                                       for i, a in enumerate(CLASSIFIER_ATTRIBUTES) if len(original)},
            "regions": control,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    out_json, out_md = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1))
    out_md.write_text(markdown(results))
    if grid_rows:
        save_grid(grid_rows, args.grid)
    print(out_md.read_text())
    return 0


def markdown(results: dict) -> str:
    w, f = results["weights"], results["faces"]
    lines = [f"# Face completion: learned vs classical ({f['count']} faces, {f['set']})", "",
             f"Generator: {w['origin']} (trained stage {w['trained_stage_px']} px, alpha {w['trained_stage_alpha']}; "
             f"sha256 {w['sha256'][:12]}). Hole blanked to grey {results['protocol']['blank_grey']} for both; "
             "classical gets no labels. Both via `runner.execute`.",
             "Runs where the detector found no face in the blanked image and the image was taken whole (an aligned "
             "crop): " + (", ".join(f"{k}: {v} of {results['protocol']['runs'][k]}"
                                   for k, v in results["protocol"]["whole_image_fallbacks"].items()) or "none") + ".", "",
             "Learned: `completion-progressive` as shipped (the generator's fill plus the classical fill's detail finer "
             "than the generator's pixels); generator alone: the same with `detail=none`.", "",
             "| hole | n | MAE learned | MAE classical | MAE generator alone | PSNR learned | PSNR classical | PSNR generator alone "
             "| SSIM box learned | SSIM box classical | SSIM hole learned | SSIM hole classical | seam excess learned "
             "| seam excess classical | seam excess generator alone | learned better (MAE) | generator alone better (MAE) "
             "| MAE generator alone, unblanked input |",
             "|---" * 18 + "|"]
    for hole_type, s in results["holes"].items():
        a, b, g, u = s["learned"], s["classical"], s["generator_alone"], s["learned_unblanked"]
        lines.append(f"| {hole_type} | {s['n']} | {a['mae']:.2f} | {b['mae']:.2f} | {g['mae']:.2f} | {a['psnr']:.2f} | "
                     f"{b['psnr']:.2f} | {g['psnr']:.2f} | {a['ssim_box']:.3f} | {b['ssim_box']:.3f} | {a['ssim_hole']:.3f} | "
                     f"{b['ssim_hole']:.3f} | {a['seam_excess']:+.2f} | {b['seam_excess']:+.2f} | {g['seam_excess']:+.2f} | "
                     f"{s['learned_better_mae_fraction']:.2f} | {s['generator_alone_better_mae_fraction']:.2f} | {u['mae']:.2f} |")
    control = results["attribute_control"]
    lines += ["", "Seam excess: mean luma gradient on the 2 px boundary band minus the original's (grey levels/px).", "",
              f"## Attribute control (classifier decisions; chance baseline: toggling {CONTROL_ATTRIBUTE} instead)", "",
              "| region | attribute | n | flips off→on (toggle attribute) | changed either way | mean ΔP | P higher when on | sign test p "
              "| flips off→on (baseline) | changed either way (baseline) | mean ΔP (baseline) |",
              "|---" * 11 + "|"]
    for region, table in control["regions"].items():
        for attribute, entry in table.items():
            t, c = entry["toggle_attribute"], entry["chance_baseline_toggle_" + CONTROL_ATTRIBUTE]
            lines.append(f"| {region} | {attribute} | {t['n']} | {t['flip_to_on']} ({t['flip_to_on_rate']:.2f}) | "
                         f"{t['changed_rate']:.2f} | {t['mean_probability_change']:+.3f} | {t['probability_higher_when_on']} | "
                         f"{t['sign_test_p']:.3g} | {c['flip_to_on']} ({c['flip_to_on_rate']:.2f}) | {c['changed_rate']:.2f} | "
                         f"{c['mean_probability_change']:+.3f} |")
    original = control["classifier_yes_rate_on_original_faces"]
    lines += ["", "Classifier 'yes' rate on the unedited faces: " + ", ".join(f"{a} {v:.2f}" for a, v in original.items())
              + ". A flip off→on is possible only where the 'off' completion is judged 'no'."]
    lines += ["", "Not measurable with our classifier (it judges only " + ", ".join(CLASSIFIER_ATTRIBUTES) + "): "
              + ", ".join(control["not_measurable"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
