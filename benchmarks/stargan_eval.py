"""StarGAN evaluation on our CelebA sample (shared/data/celeba: 5000 aligned images 89x109).

1. Attribute classifier (ours, ``faceedit_stargan.classifier``): trained on the first 4500 images,
   held-out accuracy per attribute on the last 500; saved (float16) to
   the stargan plugin's ``models/celeba_attr_classifier.pt``. Skipped when the file exists (``--retrain`` forces).
2. Edit scoring of a generator (``--generator``: a ``faceedit train stargan`` output folder, or a
   weights file/id with the official 128 px layout) on the held-out 500: for each single-attribute
   edit (each hair colour, flip Male, flip Young) the fraction of edited faces the classifier assigns
   the target value, next to the fraction that already had it before editing.
3. Photo pipeline: the backend edits held-out images placed in a larger canvas; we report the mean
   absolute pixel change inside the pasted face region and outside it (must be ~0).

    .venv/bin/python benchmarks/stargan_eval.py --generator /tmp/stargan_run

Results: ``benchmarks/results/stargan_eval.json``.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins" / "faceedit_stargan"))

from faceedit_stargan.classifier import (  # noqa: E402
    CLASSIFIER_ATTRIBUTES, CLASSIFIER_SIZE, AttributeClassifier, default_classifier_path, images_to_tensor,
    load_classifier, predict_probabilities)
from faceedit_stargan.data import AttributeFaces  # noqa: E402
from faceedit_stargan.model import Generator  # noqa: E402
from faceedit_stargan.train import demo_targets  # noqa: E402

SHARED = REPO.parent / "shared"
CELEBA_CROP = 89  # the authors' 178 px centre crop, on CelebA images downscaled 2x


def load_split(data: Path, size: int, hold_out: int, cache_dir: Path | None = None):
    """((train images, labels), (held-out images, labels)); images centre-cropped like the authors'."""
    faces = AttributeFaces(data / "images", data / "attributes.csv", size, CLASSIFIER_ATTRIBUTES,
                           crop_size=CELEBA_CROP)
    n = len(faces)
    cache = cache_dir / f"stargan_eval_celeba_{size}px_{n}.npy" if cache_dir else None
    if cache is not None and cache.exists():
        images = np.load(cache)
    else:
        images = np.stack([faces.image(i) for i in range(n)])
        if cache is not None:
            np.save(cache, images)
    return (images[: n - hold_out], faces.labels[: n - hold_out]), (images[n - hold_out:], faces.labels[n - hold_out:])


def train_classifier(train, epochs: int, seed: int) -> AttributeClassifier:
    torch.manual_seed(seed)
    images, labels = train
    x_all, y_all = images_to_tensor(images), torch.from_numpy(labels)
    model = AttributeClassifier()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    batch = 64
    steps = epochs * ((len(x_all) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps)
    rng = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=rng)
        total, tic = 0.0, time.perf_counter()
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            x, y = x_all[idx], y_all[idx]
            flip = torch.rand(len(idx), generator=rng) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            # small photometric jitter: edits change colours, the classifier must not rely on exact tone
            x = (x * (1 + 0.1 * (torch.rand(len(idx), 1, 1, 1, generator=rng) - 0.5))).clamp(-1, 1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(idx)
        print(f"classifier epoch {epoch + 1}/{epochs} loss {total / len(x_all):.4f} "
              f"({time.perf_counter() - tic:.0f} s)", flush=True)
    return model.eval()


def accuracy_report(model, held_out) -> dict:
    images, labels = held_out
    predicted = predict_probabilities(model, images) > 0.5
    truth = labels > 0.5
    report = {}
    for i, name in enumerate(CLASSIFIER_ATTRIBUTES):
        majority = max(truth[:, i].mean(), 1 - truth[:, i].mean())
        report[name] = {"accuracy": round(float((predicted[:, i] == truth[:, i]).mean()), 4),
                        "majority_baseline": round(float(majority), 4),
                        "positives": int(truth[:, i].sum())}
    report["mean_accuracy"] = round(float(np.mean([report[n]["accuracy"] for n in CLASSIFIER_ATTRIBUTES])), 4)
    return report


def load_generator(spec: str) -> tuple[Generator, int, str]:
    """A training output folder (G_latest.pt + generator.json) or a weights file/catalogue id (official layout)."""
    path = Path(spec)
    if path.is_dir():
        meta = json.loads((path / "generator.json").read_text())
        G = Generator(meta["conv_dim"], meta["c_dim"], meta["repeat_num"])
        G.load_state_dict(torch.load(path / "G_latest.pt", map_location="cpu", weights_only=True))
        what = {"kind": "ours: a short CPU training run (faceedit train stargan), not the official model",
                "step": meta["step"], "image_size": meta["image_size"], "conv_dim": meta["conv_dim"],
                "repeat_num": meta["repeat_num"]}
        log = path / "log.jsonl"
        if log.exists():
            last = json.loads(log.read_text().splitlines()[-1])
            what["training_wall_s"] = last.get("seconds")
            what["last_losses"] = {k: round(v, 4) for k, v in last.items() if "/" in k}
        checkpoints = sorted((path / "checkpoints").glob("step_*.pt"))
        if checkpoints:
            what["config"] = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)["config"]
        return G.eval(), int(meta["image_size"]), what
    from napari_faceedit import weights

    G = Generator(64, 5, 6)
    sha = weights.load_state_dict(spec, G)
    return G.eval(), 256 if "256" in spec else 128, f"official weights {spec} sha256 {sha}"


def score_edits(G: Generator, classifier, held_out_faces: np.ndarray) -> dict:
    x = images_to_tensor(held_out_faces)
    source = torch.from_numpy(predict_probabilities(classifier, x) > 0.5).float()  # classifier's view of the source
    results = {}
    with torch.inference_mode():
        recon = torch.cat([G(x[i:i + 50], source[i:i + 50]) for i in range(0, len(x), 50)])
        results["reconstruction_l1_same_labels"] = round(float((recon - x).abs().mean() / 2), 4)
        for index, (name, target) in enumerate(zip(CLASSIFIER_ATTRIBUTES, demo_targets(source, CLASSIFIER_ATTRIBUTES))):
            edited = torch.cat([G(x[i:i + 50], target[i:i + 50]) for i in range(0, len(x), 50)])
            probabilities = predict_probabilities(classifier, edited)
            wanted = target[:, index].numpy() > 0.5
            hit = (probabilities[:, index] > 0.5) == wanted
            already = source[:, index].numpy() > 0.5
            changed = already != wanted  # faces where the edit asks for a change
            results[f"to_{name}" if name.endswith("Hair") else f"flip_{name}"] = {
                "target_classified_fraction": round(float(hit.mean()), 4),
                "target_classified_fraction_where_change_requested": round(float(hit[changed].mean()), 4)
                if changed.any() else None,
                "already_had_target_fraction": round(float((already == wanted).mean()), 4),
                "mean_abs_pixel_change_0_1": round(float((edited - x).abs().mean() / 2), 4),
            }
    return results


def photo_pipeline(G: Generator, size: int, images_dir: Path, names: list[str], n: int) -> dict:
    """Edit held-out photos through the backend (detect, align, generate, paste) and measure change in/out."""
    from PIL import Image

    from faceedit_stargan.backend import StarGANBackend
    from napari_faceedit.runner import execute
    from napari_faceedit.tasks import EditAttributesRequest

    backend = StarGANBackend.from_model(G, image_size=size)
    inside, outside, failures, done = [], [], 0, 0
    for name in names[:n]:
        face = np.asarray(Image.open(images_dir / name).convert("RGB").resize((178, 218), Image.BICUBIC))
        canvas = np.full((400, 400, 3), 128, np.uint8)  # the face in a larger "photo"
        canvas[91:309, 111:289] = face
        request = EditAttributesRequest(image=canvas, attributes={"Blond_Hair": 1.0})
        try:
            result = execute(backend, request)
        except Exception as exc:  # noqa: BLE001 - a detector miss is counted, not fatal
            failures += 1
            print(f"{name}: {exc}")
            continue
        mask = result.extras["paste_weights"] > 0
        diff = np.abs(result.image.astype(np.float64) - canvas) / 255.0
        inside.append(diff[mask].mean())
        outside.append(diff[~mask].mean() if (~mask).any() else 0.0)
        done += 1
    return {"photos": done, "detector_failures": failures,
            "mean_abs_change_inside_face_region_0_1": round(float(np.mean(inside)), 4) if inside else None,
            "max_mean_abs_change_outside_face_region_0_1": float(np.max(outside)) if outside else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "data" / "celeba")
    p.add_argument("--hold-out", type=int, default=500)
    p.add_argument("--classifier", type=Path, default=default_classifier_path())
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--generator", default=None, help="training output folder, weights file or catalogue id")
    p.add_argument("--photos", type=int, default=50, help="held-out photos through the full backend pipeline")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", type=Path, default=None, help="keep the decoded images here between runs")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "stargan_eval.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.data.exists():
        print(f"no data at {args.data}; nothing to evaluate")
        return 1
    train, held_out = load_split(args.data, CLASSIFIER_SIZE, args.hold_out, args.cache_dir)
    results: dict = {"data": str(args.data), "held_out_images": args.hold_out,
                     "torch": torch.__version__, "python": platform.python_version()}
    if args.retrain or not args.classifier.exists():
        model = train_classifier(train, args.epochs, seed=0)
        args.classifier.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                   args.classifier)
    classifier = load_classifier(args.classifier)  # reloaded: scores come from the stored float16 weights
    results["classifier"] = {"file": str(args.classifier.relative_to(REPO)) if args.classifier.is_relative_to(REPO)
                             else str(args.classifier),
                             "bytes": args.classifier.stat().st_size, "input": f"{CLASSIFIER_SIZE}x{CLASSIFIER_SIZE}",
                             "trained_on": f"first {len(train[0])} images", "held_out": accuracy_report(classifier, held_out)}
    print(json.dumps(results["classifier"], indent=1))
    if args.generator:
        G, size, what = load_generator(args.generator)
        faces, _ = load_split(args.data, size, args.hold_out, args.cache_dir)[1]
        results["generator"] = what
        results["edits"] = score_edits(G, classifier, faces)
        print(json.dumps(results["edits"], indent=1))
        try:
            names = sorted(p.name for p in (args.data / "images").glob("*.jpg"))[-args.hold_out:]
            results["photo_pipeline"] = photo_pipeline(G, size, args.data / "images", names, args.photos)
        except ImportError as exc:
            results["photo_pipeline"] = f"not run: {exc}"
        print(json.dumps(results.get("photo_pipeline"), indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
