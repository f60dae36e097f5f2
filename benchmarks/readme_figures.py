"""The README's example grids, made from the public-domain portrait ``skimage.data.astronaut()`` only
(the research data in ../shared may be measured but never copied into the repository, pictures of
its faces included), through ``napari_faceedit.runner.execute`` as a user's run.

    python benchmarks/readme_figures.py
        -> resources/readme/synthesize_astronaut.png: the parse and each edit of the fixed edit script
           that applies to one face (labels in the official colours), rendered by each ready
           synthesize backend
        -> resources/readme/completion_astronaut.png: mouth + nose hole, the classical fill and the
           learned completion with several attribute settings
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_faceedit.label_edits import component_region, enlarge_eyes, move_hairline, raise_eyebrows, widen_mouth
from napari_faceedit.registry import get_registry
from napari_faceedit.runner import execute
from napari_faceedit.tasks import CompleteRequest, ParseRequest, SynthesizeRequest, Task
from napari_faceedit.vocab import colorize

OUT = Path(__file__).resolve().parents[1] / "resources" / "readme"
EDITS = (("mouth 1.3x wider", lambda l: widen_mouth(l, 1.3)), ("eyes 1.3x larger", lambda l: enlarge_eyes(l, 1.3)),
         ("brows 6 px up", lambda l: raise_eyebrows(l, 6)), ("hairline 12 px up", lambda l: move_hairline(l, -12)))
COMPLETION_SETTINGS = (("no attributes", {}), ("Smiling on", {"Smiling": 1.0}), ("Smiling off", {"Smiling": 0.0}),
                       ("Male on", {"Male": 1.0}), ("Young off", {"Young": 0.0}))


def face_box(labels: np.ndarray, margin: float = 0.25) -> tuple[slice, slice]:
    """A square around the labelled face (skin..hair), with a margin, inside the picture."""
    ys, xs = np.nonzero((labels >= 1) & (labels <= 13))
    size = int(max(np.ptp(ys), np.ptp(xs)) * (1 + 2 * margin))
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    top = int(np.clip(cy - size // 2, 0, labels.shape[0] - size))
    left = int(np.clip(cx - size // 2, 0, labels.shape[1] - size))
    return slice(top, top + size), slice(left, left + size)


def save_grid(rows: list[tuple[str, list[tuple[str, np.ndarray]]]], box, path: Path, tile: int = 176) -> None:
    from PIL import Image, ImageDraw

    columns = max(len(tiles) for _, tiles in rows)
    label_width, caption = 120, 14
    canvas = Image.new("RGB", (label_width + columns * tile, len(rows) * (tile + caption)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (row_name, tiles) in enumerate(rows):
        top = r * (tile + caption)
        draw.text((4, top + tile // 2), row_name, fill="black")
        for c, (name, picture) in enumerate(tiles):
            crop = Image.fromarray(np.ascontiguousarray(picture[box])).resize((tile, tile), Image.Resampling.LANCZOS)
            canvas.paste(crop, (label_width + c * tile, top + caption))
            draw.text((label_width + c * tile + 4, top + 1), name, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    print("wrote", path)


def main(argv=None) -> int:
    from skimage import data

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    registry = get_registry()
    photo = np.ascontiguousarray(data.astronaut())
    labels = execute(registry.get("faceparse-compact")(), ParseRequest(image=photo)).labels
    box = face_box(labels)

    edited = [(name, edit(labels)) for name, edit in EDITS]
    rows = [("labels", [("parse of the photo", colorize(labels))] + [(n, colorize(l)) for n, l in edited])]
    for backend in registry.for_task(Task.SYNTHESIZE):
        if not backend.ready()[0]:
            continue
        renders = [(n, execute(backend(), SynthesizeRequest(image=photo, labels=labels, target_labels=l)).image)
                   for n, l in edited]
        rows.append((backend.name, [("photo", photo)] + renders))
    save_grid(rows, box, args.out / "synthesize_astronaut.png")

    hole = component_region(labels, ("mouth", "nose"))
    holed = photo.copy()
    holed[hole] = 128
    tiles = [("photo", photo), ("hole", holed)]
    for backend in registry.for_task(Task.COMPLETE):
        if not backend.ready()[0]:
            continue
        settings = COMPLETION_SETTINGS if backend.supported_attributes else (("", {}),)
        for name, attributes in settings:
            out = execute(backend(), CompleteRequest(image=holed, mask=hole, attributes=attributes)).image
            tiles.append((f"{backend.name} {name}".strip(), out))
    half = (len(tiles) + 1) // 2
    save_grid([("", tiles[:half]), ("", tiles[half:])], box, args.out / "completion_astronaut.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
