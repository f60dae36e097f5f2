"""Label-guided synthesis backends on held-out faces (celebamask_hq/val: never used for training or
model selection): label fidelity, reconstruction and background, plus an example grid.

    python benchmarks/eval_synthesize.py [--limit 100] [--weights maskguided_compact.pt] [--grid-faces 3]
        -> benchmarks/results/synthesize_eval.json, synthesize_eval.md, local/synthesize_grid.png (pictures
           of the research data: kept out of git)

Backends: ``classic-synthesize`` always; ``maskguided-compact`` with ``--weights FILE`` (a training
export) or when its bundled file is installed; ``maskguided-helen`` (the authors' networks) when its
weights are imported. Every render goes through ``napari_faceedit.runner.execute`` (face detection,
alignment to the CelebAMask-HQ framing, paste-back), exactly as a user's run.

(a) Label fidelity. Each face's ground-truth labels are edited by ``label_edits.EDIT_SCRIPT`` (the
    swaps take the part from the next val face in sorted order). Edits render
    ``SynthesizeRequest(image, labels=gt, target_labels=edited)``; swaps are component transfers,
    ``SynthesizeRequest(image, labels=gt, donor_image=next face, components=(part,))``, scored
    against the ground-truth swap ``swap_component(gt, donor_gt, part)`` (the backend itself takes the
    donor's shape from our parser's labels of the donor). The render is parsed by our compact parser
    (``faceparse-compact`` through ``execute``, its default test-time augmentation) and compared with
    the edited map: IoU per class, pixels pooled over the faces, averaged over the 13 major classes
    and over all 19. Two references in the same metric: the unedited input parsed against the edited
    map (what doing nothing scores) and against its own ground truth (the parser's ceiling). "Edit
    hit rate": of the pixels whose label the edit changed, the share the parse gives the new label.
(b) Reconstruction. The unedited labels rendered (``target_labels = gt``): PSNR and SSIM over the
    face region (ground-truth classes skin..hair, 1-13) of the render against the input.
(c) Background. Share of pixels outside the face region (of the ground truth or the edited map,
    grown by 10 px) that changed, over all renders of (a) and (b).
Needs ../shared/data/celebamask_hq/val.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.metrics import structural_similarity

from napari_faceedit.label_edits import EDIT_SCRIPT, swap_component
from napari_faceedit.runner import execute
from napari_faceedit.tasks import ParseRequest, SynthesizeRequest
from napari_faceedit.vocab import CLASS_NAMES, MAJOR_CLASSES, N_CLASSES, colorize

REPO = Path(__file__).resolve().parents[1]
VAL = REPO.parent / "shared" / "data" / "celebamask_hq" / "val"
OUT = REPO / "benchmarks" / "results"
FACE_REGION_CLASSES = tuple(range(1, 14))  # skin .. hair
BACKGROUND_MARGIN = 10
GRID_TILE = 128
UNEDITED = "unedited input"  # the do-nothing reference row


def load_face(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(Image.open(path).convert("RGB")), np.asarray(Image.open(VAL / "masks" / (path.stem + ".png")))


class IoU:
    """Per-class intersection and union, pooled over faces; plus the edit hit rate."""

    def __init__(self):
        self.intersection = np.zeros(N_CLASSES)
        self.union = np.zeros(N_CLASSES)
        self.hits = 0
        self.changed = 0

    def add(self, predicted: np.ndarray, expected: np.ndarray, before: np.ndarray | None = None) -> None:
        predicted, expected = predicted.astype(np.int64), expected.astype(np.int64)
        inter = np.bincount(expected[predicted == expected], minlength=N_CLASSES)[:N_CLASSES]
        self.intersection += inter
        self.union += (np.bincount(predicted.ravel(), minlength=N_CLASSES)[:N_CLASSES]
                       + np.bincount(expected.ravel(), minlength=N_CLASSES)[:N_CLASSES] - inter)
        if before is not None:
            changed = expected != before
            self.changed += int(changed.sum())
            self.hits += int((predicted[changed] == expected[changed]).sum())

    def per_class(self) -> dict[str, float]:
        return {CLASS_NAMES[c]: round(float(self.intersection[c] / self.union[c]), 4)
                for c in range(N_CLASSES) if self.union[c] > 0}

    def summary(self) -> dict:
        def mean(classes) -> float:
            classes = np.asarray(classes)
            present = classes[self.union[classes] > 0]
            return round(float(np.mean(self.intersection[present] / self.union[present])), 4)

        out = {"miou_major": mean(MAJOR_CLASSES), "miou_all": mean(np.arange(N_CLASSES))}
        if self.changed:
            out["edit_hit_rate"] = round(self.hits / self.changed, 4)
        return out


def parse(image: np.ndarray, parser) -> np.ndarray:
    return execute(parser, ParseRequest(image=image), allow_no_face=False).labels


def face_region(*label_maps: np.ndarray) -> np.ndarray:
    return np.logical_or.reduce([np.isin(m, FACE_REGION_CLASSES) for m in label_maps])


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2)[where].mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    _, full = structural_similarity(a, b, channel_axis=2, data_range=255, full=True)
    return float(full.mean(axis=2)[where].mean())


def background_changed(image: np.ndarray, render: np.ndarray, *label_maps: np.ndarray) -> tuple[int, int]:
    """(changed, total) pixels outside the grown face region."""
    outside = ~ndimage.binary_dilation(face_region(*label_maps), iterations=BACKGROUND_MARGIN)
    return int(np.any(render != image, axis=2)[outside].sum()), int(outside.sum())


def compact_weights_sha256(weights: Path | None) -> str | None:
    """sha256 of the maskguided-compact weights measured: the --weights file, else the bundled one."""
    from napari_faceedit import weights as manager

    try:
        from faceedit_maskguided.compact_backend import COMPACT_FILE

        path = weights if weights is not None else manager.bundled_path(COMPACT_FILE)
    except (ImportError, manager.WeightsError):  # the plugin or its bundled file is not installed
        return None
    return manager.sha256_file(path)


def available_backends(weights: Path | None) -> tuple[dict, dict[str, str]]:
    """{name: (backend, params for edits, params for reconstruction)} and why others were skipped."""
    from faceedit_classic.synthesize import ClassicSynthesis

    backends = {"classic-synthesize": (ClassicSynthesis(), {}, {})}
    skipped = {}
    try:
        from faceedit_maskguided.compact_backend import LearnedMaskGuided

        # Reconstruction is the model's own whole render; by default edits re-draw only near changed labels.
        learned_params = ({}, {"redraw": "face"})
        if weights is not None:
            backends["maskguided-compact"] = (LearnedMaskGuided.from_file(weights), *learned_params)
        elif LearnedMaskGuided.ready()[0]:
            backends["maskguided-compact"] = (LearnedMaskGuided(), *learned_params)
        else:
            skipped["maskguided-compact"] = "no --weights given and no bundled model installed"
    except ImportError as error:
        skipped["maskguided-compact"] = f"plugin not installed: {error}"
    try:
        from faceedit_maskguided.backend import MaskGuidedEditing

        ready, why = MaskGuidedEditing.ready()
        if ready:
            backends["maskguided-helen"] = (MaskGuidedEditing(), {}, {})
        else:
            missing = why.count("are missing")
            skipped["maskguided-helen"] = (f"the authors' weights are not imported ({missing} of 11 files missing)"
                                           if missing else why)
    except ImportError as error:
        skipped["maskguided-helen"] = f"plugin not installed: {error}"
    return backends, skipped


def tile(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((GRID_TILE, GRID_TILE), Image.BILINEAR))


def main() -> None:
    argp = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    argp.add_argument("--limit", type=int, default=100, help="val faces to measure (sorted by name)")
    argp.add_argument("--weights", type=Path, help="a maskguided-compact export to evaluate")
    argp.add_argument("--grid-faces", type=int, default=3)
    argp.add_argument("--out", type=Path, default=OUT)
    argp.add_argument("--threads", type=int, default=1, help="torch CPU threads (one is fastest on a busy machine)")
    args = argp.parse_args()
    import torch

    torch.set_num_threads(max(1, args.threads))

    from faceedit_parsing.backend import CompactParserBackend

    parser = CompactParserBackend()
    paths = sorted((VAL / "images").glob("*.jpg"))
    faces = paths[: args.limit]
    backends, skipped = available_backends(args.weights)
    names = list(backends)
    fidelity = {name: {edit.name: IoU() for edit in EDIT_SCRIPT} for name in names + [UNEDITED]}
    ceiling = IoU()
    reconstruction = {name: {"psnr": [], "ssim": [], "bit_exact": 0} for name in names}
    background = {name: {"edits": [0, 0], "reconstruction": [0, 0]} for name in names}
    seconds = {name: [] for name in names}
    failures = {name: [] for name in names}
    grid_rows = []
    not_applicable: dict[str, list[str]] = {}
    started = time.perf_counter()

    for i, path in enumerate(faces):
        image, labels = load_face(path)
        donor_path = paths[(i + 1) % len(paths)]
        donor_image, donor_labels = load_face(donor_path)
        parsed_input = parse(image, parser)
        ceiling.add(parsed_input, labels)
        edits = {}
        for edit in EDIT_SCRIPT:
            try:
                if edit.needs_donor:
                    component = edit.params["component"]
                    edits[edit.name] = (swap_component(labels, donor_labels, component),
                                        dict(donor_image=donor_image, components=(component,)))
                else:
                    edited = edit.apply(labels)
                    edits[edit.name] = (edited, dict(target_labels=edited))
            except ValueError as error:  # e.g. no brows or eyes to find the hairline by: not this face's edit
                not_applicable.setdefault(edit.name, []).append(f"{path.stem}: {error}")
                continue
            fidelity[UNEDITED][edit.name].add(parsed_input, edits[edit.name][0], labels)
        renders = {}
        for name, (backend, edit_params, reconstruction_params) in backends.items():
            try:
                start = time.perf_counter()
                same = execute(backend, SynthesizeRequest(image=image, labels=labels, target_labels=labels,
                                                          params=reconstruction_params), parser=parser).image
                seconds[name].append(time.perf_counter() - start)
            except Exception as error:  # noqa: BLE001 - a face the backend refuses is counted, not fatal
                failures[name].append(f"{path.stem} reconstruction: {type(error).__name__}: {error}")
                same = None
            if same is not None:
                region = face_region(labels)
                reconstruction[name]["bit_exact"] += int(np.array_equal(same, image))
                reconstruction[name]["psnr"].append(psnr(same, image, region))
                reconstruction[name]["ssim"].append(ssim(same, image, region))
                changed, total = background_changed(image, same, labels)
                background[name]["reconstruction"][0] += changed
                background[name]["reconstruction"][1] += total
            renders[name] = []
            for edit in EDIT_SCRIPT:
                if edit.name not in edits:
                    renders[name].append(np.zeros_like(image))
                    continue
                edited, request_fields = edits[edit.name]
                try:
                    start = time.perf_counter()
                    out = execute(backend, SynthesizeRequest(image=image, labels=labels, params=edit_params,
                                                             **request_fields), parser=parser).image
                    seconds[name].append(time.perf_counter() - start)
                except Exception as error:  # noqa: BLE001
                    failures[name].append(f"{path.stem} {edit.name}: {type(error).__name__}: {error}")
                    renders[name].append(np.zeros_like(image))
                    continue
                fidelity[name][edit.name].add(parse(out, parser), edited, labels)
                changed, total = background_changed(image, out, labels, edited)
                background[name]["edits"][0] += changed
                background[name]["edits"][1] += total
                renders[name].append(out)
        if i < args.grid_faces:
            rows = [np.concatenate([tile(image)] + [tile(colorize(edits[e.name][0]) if e.name in edits else
                                                          np.zeros_like(image)) for e in EDIT_SCRIPT], 1)]
            rows += [np.concatenate([tile(image)] + [tile(r) for r in renders[name]], 1) for name in names]
            grid_rows.append(np.concatenate(rows, 0))
        print(f"{i + 1}/{len(faces)} {path.stem[:8]} {time.perf_counter() - started:.0f}s", flush=True)

    def pooled(per_edit: dict[str, IoU]) -> IoU:
        total = IoU()
        for iou in per_edit.values():
            total.intersection += iou.intersection
            total.union += iou.union
            total.hits += iou.hits
            total.changed += iou.changed
        return total

    results = {
        "data": f"celebamask_hq/val, first {len(faces)} faces by name (256 px); swap donor = the next face",
        "faces": len(faces),
        "parser": "faceparse-compact (default test-time augmentation) through execute",
        "backends": names, "skipped_backends": skipped,
        "maskguided_compact_weights": compact_weights_sha256(args.weights),
        "edits": {e.name: {"function": e.function, **e.params} for e in EDIT_SCRIPT},
        "parser_ceiling_on_inputs": ceiling.summary(),
        "label_fidelity": {
            name: {"overall": pooled(fidelity[name]).summary(),
                   "per_edit": {e: iou.summary() for e, iou in fidelity[name].items()},
                   "per_class_overall": pooled(fidelity[name]).per_class()}
            for name in names + [UNEDITED]},
        "reconstruction_face_region": {
            name: {"psnr_db": round(float(np.mean(r["psnr"])), 2) if r["psnr"] else None,
                   "ssim": round(float(np.mean(r["ssim"])), 4) if r["ssim"] else None,
                   "bit_exact_faces": r["bit_exact"], "faces": len(r["psnr"]),
                   "params": backends[name][2]}
            for name, r in reconstruction.items()},
        "background_changed_fraction": {name: {kind: round(c / t, 6) if t else None for kind, (c, t) in b.items()}
                                        for name, b in background.items()},
        "seconds_per_render": {name: round(float(np.mean(s)), 3) if s else None for name, s in seconds.items()},
        "edit_params": {name: backends[name][1] for name in names},
        "failures": {name: f for name, f in failures.items() if f},
        "edits_not_applicable": not_applicable,
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "synthesize_eval.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / "synthesize_eval.md").write_text(markdown(results))
    if grid_rows:
        (args.out / "local").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(grid_rows, 0)).save(args.out / "local" / "synthesize_grid.png")
    print(markdown(results))


def markdown(results: dict) -> str:
    names = results["backends"]
    rows = names + [UNEDITED]
    edit_names = list(results["edits"])
    lines = [
        "# Label-guided synthesis on held-out faces",
        "",
        f"{results['data']}; written by `benchmarks/eval_synthesize.py`. Renders go through "
        "`napari_faceedit.runner.execute`; renders are parsed by `faceparse-compact`."
        + (f" `maskguided-compact` weights: sha256 {results['maskguided_compact_weights'][:12]}."
           if results.get("maskguided_compact_weights") else ""),
        "",
        "## (a) Label fidelity: parse of the render vs the edited labels",
        "",
        "mIoU over the 13 major classes (all 19 in brackets), pixels pooled over faces; *hit* = share of the "
        "pixels whose label the edit changed that the parse gives the new label. "
        f"`{UNEDITED}` = the input parsed against the edited map (doing nothing). Parser ceiling "
        f"(input vs its own ground truth): major {results['parser_ceiling_on_inputs']['miou_major']}, "
        f"all {results['parser_ceiling_on_inputs']['miou_all']}.",
        "",
        "| edit | " + " | ".join(rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for edit in edit_names + ["overall"]:
        cells = []
        for name in rows:
            entry = results["label_fidelity"][name]
            s = entry["overall"] if edit == "overall" else entry["per_edit"][edit]
            cells.append(f"{s['miou_major']:.3f} ({s['miou_all']:.3f}), hit {s.get('edit_hit_rate', 0):.3f}")
        lines.append(f"| {'**overall**' if edit == 'overall' else edit} | " + " | ".join(cells) + " |")
    lines += ["", "## (b) Reconstruction with unedited labels (face region, classes skin..hair)", "",
              "| backend | PSNR (dB) | SSIM | bit-exact faces | params |", "|---|---|---|---|---|"]
    for name in names:
        r = results["reconstruction_face_region"][name]
        lines.append(f"| {name} | {r['psnr_db']} | {r['ssim']} | {r['bit_exact_faces']}/{r['faces']} | "
                     f"{r['params'] or 'defaults'} |")
    lines += ["", "## (c) Background outside the face region (grown 10 px): share of pixels changed", "",
              "| backend | edits (a) | reconstruction (b) | s per render |", "|---|---|---|---|"]
    for name in names:
        b = results["background_changed_fraction"][name]
        lines.append(f"| {name} | {b['edits']} | {b['reconstruction']} | {results['seconds_per_render'][name]} |")
    if results["skipped_backends"]:
        lines += ["", "Not measured: " + "; ".join(f"`{k}` ({v})" for k, v in results["skipped_backends"].items())]
    if results["edits_not_applicable"]:
        lines += ["", "Edits that do not apply to a face (skipped for every backend): " + "; ".join(
            f"{k}: {len(v)} faces" for k, v in results["edits_not_applicable"].items())]
    if results["failures"]:
        lines += ["", "Failures: " + "; ".join(f"{k}: {len(v)}" for k, v in results["failures"].items())]
    lines += ["", "`local/synthesize_grid.png` (not in git: pictures of the research data): per face, the first row is the source and the edited labels of each "
              f"edit ({', '.join(edit_names)}) in the official colours; then one row per backend "
              f"({', '.join(names)}): the source and its render of each edit.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
