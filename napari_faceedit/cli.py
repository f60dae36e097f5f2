"""``faceedit``: the command line over the same core the widgets use."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from .tasks import REQUEST_TYPES, Task


def _parse_attr(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--attr expects NAME=VALUE (e.g. Blond_Hair=1), got '{item}'")
        words = {"true": 1.0, "yes": 1.0, "false": 0.0, "no": 0.0}
        try:
            out[name] = words[value.lower()] if value.lower() in words else float(value)
        except ValueError:
            raise ValueError(f"--attr {name}: value must be a number or yes/no, got '{value}'") from None
    return out


# Which `faceedit run` options each task takes; any other given option is an error, never ignored.
TASK_OPTIONS: dict[Task, tuple[str, ...]] = {
    Task.PARSE: (),
    Task.RESTORE: (),
    Task.COMPLETE: ("mask", "attr", "labels", "components"),
    Task.EDIT_ATTRIBUTES: ("attr", "strength", "labels"),
    Task.EDIT_TEXT: ("text",),
    Task.SYNTHESIZE: ("labels", "source", "components"),
}
_OPTION_FLAGS = {"mask": "--mask", "attr": "--attr", "labels": "--labels", "strength": "--strength",
                 "text": "--text", "source": "--source", "components": "--components"}


def check_options(task: Task, backend, args) -> None:
    """Refuse options that do not apply to the task or the backend, naming what does apply."""
    allowed = TASK_OPTIONS[task]
    for option, flag in _OPTION_FLAGS.items():
        if getattr(args, option) not in (None, []) and option not in allowed:
            takes = ", ".join(_OPTION_FLAGS[o] for o in allowed) or "none of --mask/--attr/--labels/--strength/--text"
            raise ValueError(f"{flag} does not apply to '{task.value}' (it takes {takes})")
    if task is Task.COMPLETE and args.mask is None and not args.components:
        raise ValueError("complete needs --mask (any non-black pixel is the hole) or --components (e.g. mouth)")
    if task is Task.SYNTHESIZE:
        if (args.source is None) != (not args.components):
            raise ValueError("--source needs --components (e.g. --components eyes,mouth)" if args.source is not None
                             else "--components needs --source (the face to take them from)")
        if args.labels is None and args.source is None:
            raise ValueError("synthesize needs --labels (the edited label map) and/or --source with --components")
    if args.face_index is not None and not backend.per_face:
        raise ValueError(f"--face-index does not apply: backend '{backend.name}' edits the whole image")
    if args.allow_no_face and not backend.per_face:
        raise ValueError(f"--allow-no-face does not apply: backend '{backend.name}' edits the whole image")


def cmd_backends(args) -> int:
    from .registry import get_registry

    registry = get_registry()
    rows = []
    for name, backend in sorted(registry.backends.items()):
        ready, why = backend.ready()
        rows.append({
            "name": name, "version": backend.version, "plugin": registry.backend_plugin[name],
            "tasks": sorted(t.value for t in backend.tasks), "devices": backend.devices(),
            "attributes": list(backend.supported_attributes), "weights": list(backend.weights),
            "ready": ready, "status": why, "description": backend.description,
            "limitations": backend.limitations, "per_face": backend.per_face,
            "parameters": [p.describe() for p in backend.declared_parameters()],
        })
    failures = [{"plugin": f.plugin, "stage": f.stage, "error": f.error} for f in registry.failures]
    if args.json:
        print(json.dumps({"backends": rows, "load_errors": failures}, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:<22} {','.join(row['tasks']):<28} {','.join(row['devices']):<12} "
              f"{'ready' if row['ready'] else row['status']}")
    for failure in failures:
        print(f"[failed plugin] {failure['plugin']} ({failure['stage']}): {failure['error']}")
    return 0


def _output_path(output: Path, image_path: Optional[Path], many: bool, suffix: str = "") -> Path:
    if many or output.is_dir() or (output.suffix == "" and not output.exists()):
        stem = image_path.stem if image_path is not None else "generated"
        return output / f"{stem}{suffix}.png"
    return output.with_name(f"{output.stem}{suffix}{output.suffix}") if suffix else output


def _build_request(task: Task, args, image_path: Optional[Path], params: dict):
    from .io import companion, read_image, read_index_map

    common = dict(device=args.device, seed=args.seed, face_index=args.face_index, params=params)
    image = read_image(image_path) if image_path is not None else None
    if task is Task.PARSE or task is Task.RESTORE:
        return REQUEST_TYPES[task](image=image, **common)
    if task is Task.COMPLETE:
        mask_path = companion(args.mask, image_path)
        labels_path = companion(args.labels, image_path)
        components = tuple(c.strip() for c in (args.components or "").split(",") if c.strip())
        # The hole rule (the same as the API's): any non-black pixel of the mask is the hole.
        return REQUEST_TYPES[task](image=image, mask=read_index_map(mask_path) != 0 if mask_path else None,
                                   components=components, attributes=_parse_attr(args.attr),
                                   labels=read_index_map(labels_path) if labels_path else None, **common)
    if task is Task.EDIT_ATTRIBUTES:
        labels_path = companion(args.labels, image_path)
        strength = 1.0 if args.strength is None else args.strength
        return REQUEST_TYPES[task](image=image, attributes=_parse_attr(args.attr), strength=strength,
                                   labels=read_index_map(labels_path) if labels_path else None, **common)
    if task is Task.EDIT_TEXT:
        return REQUEST_TYPES[task](image=image, text=args.text or "", **common)
    if task is Task.SYNTHESIZE:
        labels_path = companion(args.labels, image_path)
        components = tuple(c.strip() for c in (args.components or "").split(",") if c.strip())
        return REQUEST_TYPES[task](image=image, target_labels=read_index_map(labels_path) if labels_path else None,
                                   donor_image=read_image(args.source) if args.source else None,
                                   components=components, **common)
    raise ValueError(f"unknown task {task}")


def cmd_run(args) -> int:
    from .io import list_images, write_atomic
    from .registry import get_registry
    from .runner import execute

    from .params import parse_assignments, resolve

    task = Task(args.task)
    registry = get_registry()
    backend = registry.get(args.backend) if args.backend else registry.best_for(task)
    if task not in backend.tasks:
        raise ValueError(f"backend '{backend.name}' does not do '{task.value}' (it does: "
                         f"{', '.join(sorted(t.value for t in backend.tasks))})")
    check_options(task, backend, args)
    params = parse_assignments(args.param)
    resolve(backend.declared_parameters(), params, f"backend '{backend.name}'")  # fail before any file is read
    if args.input is None:
        if task is not Task.EDIT_TEXT:
            raise ValueError(f"'{task.value}' needs --input")
        inputs: list[Optional[Path]] = [None]
    else:
        inputs = list_images(args.input)
    output = Path(args.output)
    many = len(inputs) > 1 or (args.input is not None and Path(args.input).is_dir())
    summary, failed = [], 0
    for image_path in inputs:
        try:
            request = _build_request(task, args, image_path, params)
            result = execute(backend, request, _cli_progress(args.quiet), allow_no_face=args.allow_no_face)
            written = []
            if result.image is not None:
                target = _output_path(output, image_path, many)
                write_atomic(target, result.image)
                written.append(str(target))
            if result.labels is not None:
                target = _output_path(output, image_path, many, "" if result.image is None else "_labels")
                write_atomic(target, result.labels)
                written.append(str(target))
            for name, array in _image_extras(result.extras):
                target = _output_path(output, image_path, many, f"_{name}")
                write_atomic(target, array)
                written.append(str(target))
            entry = {"input": str(image_path) if image_path else None, "outputs": written,
                     "provenance": result.provenance.to_dict()}
            if result.passed_through:
                entry["passed_through"] = result.passed_through
                if not args.quiet:
                    print(f"faceedit: {image_path}: {result.passed_through}", file=sys.stderr)
            summary.append(entry)
        except Exception as exc:  # noqa: BLE001 - report, go on with the next file
            failed += 1
            print(f"faceedit: {image_path or 'generate'}: {exc}", file=sys.stderr)
            summary.append({"input": str(image_path) if image_path else None, "error": str(exc)})
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 1 if failed else 0


def _image_extras(extras: dict):
    """Image-like extras as (name, HxWx3 array); a stack of crops (N, S, S, 3) becomes one row."""
    import numpy as np

    for name, array in sorted(extras.items()):
        array = np.asarray(array)
        if array.dtype != np.uint8:
            continue
        if array.ndim == 4 and array.shape[-1] == 3:
            array = np.concatenate(list(array), axis=1)
        if array.ndim == 3 and array.shape[-1] == 3:
            yield name, array


def _cli_progress(quiet: bool):
    def report(step: int, total: int, message: str) -> None:
        if not quiet:
            print(f"  [{step}/{total}] {message}", file=sys.stderr)
    return report


def cmd_train(args, rest: list[str]) -> int:
    from .registry import get_registry

    trainers = {}
    for impl in get_registry().plugin_manager.hook.faceedit_trainers.get_hookimpls():
        trainers.update(impl.function() or {})
    if args.model not in trainers:
        print(f"no trainer '{args.model}' (available: {', '.join(sorted(trainers)) or 'none'})", file=sys.stderr)
        return 2
    return int(trainers[args.model](rest) or 0)


def cmd_gui(args) -> int:
    from .app import launch

    return launch(screenshot=args.screenshot, sample=not args.no_sample)


def build_parser() -> argparse.ArgumentParser:
    from .weights_cli import add_offline_argument

    parser = argparse.ArgumentParser(prog="faceedit", description="Semantic face editing (napari-faceedit).")
    add_offline_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backends", help="list backends, their tasks and devices, and plugins that failed to load")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("run", help="run a task on an image file or a folder of images")
    p.add_argument("task", choices=[t.value for t in Task])
    p.add_argument("--input", type=Path, help="image file or folder (optional for edit-text: generate)")
    p.add_argument("--output", type=Path, required=True, help="output PNG file, or folder")
    p.add_argument("--backend", help="backend name (default: the best ready backend for the task)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mask", type=Path, help="hole mask PNG or folder of masks (any non-black pixel = hole)")
    p.add_argument("--labels", type=Path, help="label map PNG (CelebAMask-HQ indices) or folder; for synthesize "
                   "the edited label map to render")
    p.add_argument("--source", type=Path, help="synthesize: the face to take --components from")
    p.add_argument("--components", help="synthesize: components to take from --source; complete: components "
                   "to complete (the hole), e.g. eyes,mouth (eyes, brows, nose, mouth, ears, hair, skin)")
    p.add_argument("--attr", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--strength", type=float, default=None, help="edit-attributes: 0..1 (default 1)")
    p.add_argument("--text")
    p.add_argument("--face-index", type=int, default=None, help="edit only this detected face (0 = largest)")
    p.add_argument("--allow-no-face", action="store_true",
                   help="pass images without a face through unchanged (and say so) instead of failing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="backend parameter (faceedit backends --json lists each backend's)")
    p.add_argument("--json", action="store_true", help="print a JSON summary with provenance")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train a model (see faceedit train MODEL --help)")
    p.add_argument("model")
    p.set_defaults(func=None)

    p = sub.add_parser("gui", help="open napari with the plugin docked and a sample face")
    p.add_argument("--screenshot", type=Path, help="save a screenshot of the window and exit")
    p.add_argument("--no-sample", action="store_true")
    p.set_defaults(func=cmd_gui)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Subcommands owned by other core modules (weights, detect)."""
    from .face.cli import add_detect_command
    from .weights_cli import add_weights_commands

    return [add_weights_commands, add_detect_command]


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["train"] and len(argv) >= 2 and not argv[1].startswith("-"):
        # Everything after MODEL belongs to that trainer, --help included.
        return cmd_train(argparse.Namespace(model=argv[1]), argv[2:])
    args = parser.parse_args(argv)
    from .weights_cli import apply_offline

    apply_offline(args)
    try:
        from .context import configure_torch_threads

        configure_torch_threads()
        return int(args.func(args) or 0)
    except (ValueError, KeyError, LookupError, FileNotFoundError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"faceedit: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
