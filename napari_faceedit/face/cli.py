"""``faceedit detect``: faces, boxes and 5 landmarks of one image or a folder, as JSON.

The lead's ``cli.py`` calls :func:`add_detect_command` with its subparsers; the command's handler is
stored as ``func`` on the parsed arguments (``args.func(args) -> exit code``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..io import read_image  # the one image reader (16-bit, palette, size limit); tests import it from here


def image_files(path: Path) -> list[Path]:
    from ..io import IMAGE_SUFFIXES

    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"no such file or folder: {path}")


def check_json_output(raw_output: str, files: list[Path], overwrite: bool) -> Path:
    """The JSON output path, refused (ValueError) when empty, not .json, an input or existing without --overwrite."""
    from ..cli import listing, real_path

    if not raw_output.strip():
        raise ValueError("--output is empty: give a .json file")
    output = Path(raw_output)
    if output.suffix.lower() != ".json" or output.is_dir():
        raise ValueError(f"--output {output} must be a .json file (detect writes JSON, never over an image)")
    if real_path(output) in {real_path(p) for p in files}:
        raise ValueError(f"--output {output} is an input file")
    if output.exists() and not overwrite:
        raise ValueError(f"output exists: {listing([output])} (use --overwrite to replace it)")
    return output


def run_detect(args: argparse.Namespace) -> int:
    from ..cli import interrupt_exit_code, sigterm_as_interrupt
    from ..io import write_text
    from .detect import WeightsMissing, detect_faces, faces_to_json

    try:
        files = image_files(Path(args.input))
        if not files:
            raise FileNotFoundError(f"no images in {args.input}")
        output = check_json_output(args.output, files, args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        print(f"faceedit detect: {error}", file=sys.stderr)
        return 2
    records, failures = [], 0
    try:
        with sigterm_as_interrupt():
            for path in files:
                try:
                    image = read_image(path)
                    faces = detect_faces(image, min_score=args.min_score)
                except WeightsMissing as error:
                    print(f"faceedit detect: {error}", file=sys.stderr)
                    return 3
                except Exception as error:  # one unreadable image must not lose the others' results
                    print(f"faceedit detect: {path}: {error}", file=sys.stderr)
                    records.append({"file": str(path), "error": str(error), "faces": []})
                    failures += 1
                    continue
                records.append({"file": str(path), "width": int(image.shape[1]), "height": int(image.shape[0]),
                                "faces": faces_to_json(faces)})
                if not args.quiet:
                    print(f"{path.name}: {len(faces)} face(s)", file=sys.stderr)
    except KeyboardInterrupt as interrupt:
        print(f"faceedit detect: interrupted after {len(records)} of {len(files)} images; {output} not written",
              file=sys.stderr)
        return interrupt_exit_code(interrupt)
    document = {
        "landmark_order": ["eye_image_left", "eye_image_right", "nose", "mouth_image_left", "mouth_image_right"],
        "landmark_note": "(x, y) in pixels, pixel centres at integers; left/right as seen in the image",
        "box": "x0, y0, x1, y1",
        "min_score": args.min_score,
        "images": records,
    }
    write_text(output, json.dumps(document, indent=1))
    return 1 if failures == len(files) else 0


def add_detect_command(subparsers) -> argparse.ArgumentParser:
    """Register ``detect`` on an ``argparse`` subparsers object; returns its parser."""
    from .detect import DEFAULT_MIN_SCORE

    parser = subparsers.add_parser(
        "detect",
        help="find faces and their 5 landmarks (JSON)",
        description="Detect faces (box, score, 5 landmarks: image-left eye, image-right eye, nose, "
                    "image-left and image-right mouth corner) in an image or every image of a folder.",
    )
    parser.add_argument("--input", required=True, help="image file or folder of images")
    parser.add_argument("--output", required=True, help="JSON file to write (.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace the JSON file if it exists")
    parser.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE,
                        help=f"keep faces with detector score >= this (default {DEFAULT_MIN_SCORE})")
    parser.add_argument("--quiet", action="store_true", help="no per-image lines on stderr")
    parser.set_defaults(func=run_detect)
    return parser


def main(argv=None) -> int:
    """Stand-alone entry (``python -m napari_faceedit.face.cli detect ...``)."""
    parser = argparse.ArgumentParser(prog="faceedit")
    add_detect_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
