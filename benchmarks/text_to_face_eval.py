"""How often offline text-to-face gets the attribute a request asks for, by our own classifier.

For each of the 5 attributes our CelebA classifier scores, asked for on (1) and off (0), over 20 seeds:
the share of faces whose classifier decision (probability > 0.5) matches the request, for the
unoptimised sample of the seed ("before") and after ``DEFAULT_STEPS`` steps of latent optimisation
("after"). It also counts how often the four attributes that were NOT asked about changed decision
(side effects), and, as a check that does not come from the optimisation target, how often our MTCNN
still finds a face (score >= 0.9 on the 256 px upsampled image) before and after.

Read it for what it is: agreement with the classifier that was optimised against, not with human
judgement. A high "after" number says the optimisation reaches its target; whether a person would
see the attribute is what the example grid (``--grid``) is for.

    FACEEDIT_TORCH_THREADS=1 python benchmarks/text_to_face_eval.py \\
        [--out benchmarks/results/text_to_face_eval.json] [--grid benchmarks/results/text_to_face_grid.png]

The 20 faces of a request are optimised together by ``optimise_latents`` (each face has its own loss
and Adam works per element, so this is the optimisation ``generate_face`` runs for one seed).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

from faceedit_text import dcgan, text_to_face  # noqa: E402
from faceedit_text.interpret import interpret  # noqa: E402

SEEDS = tuple(range(20))
GRID_PHRASES = ("a blond woman", "a young man with black hair", "an old man", "a woman with brown hair")
GRID_SEEDS = (20, 21, 22, 23, 24, 25)  # the next seeds after the evaluation ones, not picked
FACE_SCORE = 0.9


def faces_found(images64: np.ndarray) -> list[bool]:
    """Whether our MTCNN finds a face (score >= FACE_SCORE) in each image upsampled to 256 px."""
    from PIL import Image

    from napari_faceedit.face.detect import detect_faces

    found = []
    for image in images64:
        large = np.asarray(Image.fromarray(image).resize((256, 256), Image.BICUBIC))
        found.append(bool(detect_faces(large, min_score=FACE_SCORE)))
    return found


def evaluate(steps: int) -> dict:
    names = text_to_face.supported_attributes()
    start = torch.stack([text_to_face.latent_for_seed(seed) for seed in SEEDS])
    generator = text_to_face._generator()
    with torch.no_grad():
        start_images = text_to_face._to_uint8(generator(start))
    start_faces = faces_found(start_images)
    rows = []
    for attribute in names:
        column = names.index(attribute)
        others = [i for i in range(len(names)) if i != column]
        for value in (1, 0):
            began = time.perf_counter()
            latents, before, after = text_to_face.optimise_latents(start, {attribute: value}, steps=steps)
            seconds = time.perf_counter() - began
            with torch.no_grad():
                images = text_to_face._to_uint8(generator(latents))
            wanted = value == 1
            rows.append({
                "attribute": attribute,
                "value": value,
                "agree_before": float(np.mean((before[:, column] > 0.5) == wanted)),
                "agree_after": float(np.mean((after[:, column] > 0.5) == wanted)),
                "mean_probability_before": float(before[:, column].mean()),
                "mean_probability_after": float(after[:, column].mean()),
                "other_attributes_flipped": float(np.mean((before[:, others] > 0.5) != (after[:, others] > 0.5))),
                "face_found_after": float(np.mean(faces_found(images))),
                "seconds": round(seconds, 1),
            })
            row = rows[-1]
            print(f"{attribute:>11}={value}: agree {row['agree_before']:.2f} -> {row['agree_after']:.2f}, "
                  f"p {row['mean_probability_before']:.2f} -> {row['mean_probability_after']:.2f}, "
                  f"others flipped {row['other_attributes_flipped']:.2f}, face found {row['face_found_after']:.2f} "
                  f"({seconds:.0f} s)", flush=True)
    return {
        "what": ("share of faces whose attribute-classifier decision (p > 0.5) matches a one-attribute request, "
                 "for the unoptimised sample of each seed (before) and after latent optimisation (after)"),
        "caveat": ("agreement with our own CelebA attribute classifier, which is the optimisation target: "
                   "it shows that the optimisation reaches its target, not that a person would see the attribute"),
        "generator": f"{dcgan.DISTRIBUTION} {dcgan.DISTRIBUTION_VERSION} DCGAN 64x64 (synthetic DigiFace1M faces)",
        "seeds": list(SEEDS),
        "steps": steps,
        "learning_rate": text_to_face.LEARNING_RATE,
        "norm_weight": text_to_face.NORM_WEIGHT,
        "face_detector_check": f"our MTCNN, score >= {FACE_SCORE}, on the 256 px bicubic upsampling",
        "face_found_before": float(np.mean(start_faces)),
        "requests": rows,
        "mean_agree_before": float(np.mean([row["agree_before"] for row in rows])),
        "mean_agree_after": float(np.mean([row["agree_after"] for row in rows])),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def draw_grid(path: Path, steps: int) -> list[dict]:
    """Rows: a phrase (read by interpret, lexicon only); columns: per seed the unoptimised sample and
    the result of ``generate_face``, 128 px each (the 256 px outputs halved), with captions."""
    from PIL import Image, ImageDraw

    tile, caption = 128, 16
    grid = Image.new("RGB", (tile * 2 * len(GRID_SEEDS), (tile + caption) * len(GRID_PHRASES)), "white")
    draw = ImageDraw.Draw(grid)
    generator = text_to_face._generator()
    listing = []
    for row, phrase in enumerate(GRID_PHRASES):
        request = {change.attribute: change.value for change in interpret(phrase, use_embeddings=False).attributes}
        top = row * (tile + caption)
        draw.text((4, top + 2), f'"{phrase}" -> ' + ", ".join(f"{k}={v}" for k, v in request.items())
                  + "   (left: seed's sample, right: optimised)", fill="black")
        for column, seed in enumerate(GRID_SEEDS):
            with torch.no_grad():
                sample = text_to_face._to_uint8(generator(text_to_face.latent_for_seed(seed)[None]))[0]
            image, report = text_to_face.generate_face(request, steps=steps, seed=seed)
            left = column * 2 * tile
            grid.paste(Image.fromarray(sample).resize((tile, tile), Image.BICUBIC), (left, top + caption))
            grid.paste(Image.fromarray(image).resize((tile, tile), Image.BICUBIC), (left + tile, top + caption))
            listing.append({"phrase": phrase, "seed": seed, "attributes": report["attributes"]})
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return listing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "text_to_face_eval.json")
    parser.add_argument("--grid", type=Path, default=REPO / "benchmarks" / "results" / "text_to_face_grid.png")
    parser.add_argument("--steps", type=int, default=text_to_face.DEFAULT_STEPS)
    args = parser.parse_args()
    from napari_faceedit.context import configure_torch_threads

    configure_torch_threads()
    result = evaluate(args.steps)
    result["grid"] = {"file": args.grid.name, "phrases": list(GRID_PHRASES), "seeds": list(GRID_SEEDS),
                      "faces": draw_grid(args.grid, args.steps)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"mean agreement {result['mean_agree_before']:.2f} -> {result['mean_agree_after']:.2f}; "
          f"wrote {args.out} and {args.grid}")


if __name__ == "__main__":
    main()
