"""``faceedit weights ...``: list, download, import, verify, locate and unpin published checkpoints
from every installed plugin's catalogue.

``napari_faceedit.cli`` calls :func:`add_weights_commands` on its subparsers; every command sets
``func`` (``func(args) -> exit code``). ``python -m napari_faceedit.weights_cli`` works alone too.
A cache folder that cannot be used, or a broken catalogue override, is one line and exit code 2.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from typing import Callable, Optional, TextIO

from . import weights


def add_offline_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offline", action="store_true", default=argparse.SUPPRESS,
                        help=f"never access the network (same as {weights.ENV_OFFLINE}=1)")


def apply_offline(args: argparse.Namespace) -> None:
    """Honour ``--offline`` wherever it was given (global flag or subcommand)."""
    if getattr(args, "offline", False):
        weights.set_offline(True)


def add_weights_commands(subparsers) -> argparse.ArgumentParser:
    """Register ``weights`` and its subcommands on an ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        "weights", help="manage published checkpoints (list, download, import, verify, path)",
        description="Published third-party checkpoints listed by the installed plugins: where they are, whether "
                    f"they verify, how to get them. Cache: {weights.ENV_CACHE_DIR}; weights folder searched first: "
                    f"{weights.ENV_WEIGHTS_DIR}; offline: {weights.ENV_OFFLINE}=1.")
    add_offline_argument(parser)
    parser.set_defaults(func=lambda args: _print_help(parser))
    commands = parser.add_subparsers(dest="weights_command", metavar="COMMAND")

    listing = commands.add_parser("list", help="every catalogue entry with its plugin, local status and licence")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--backend", help="only entries of this backend family")
    listing.add_argument("--plugin", help="only entries owned by this plugin")
    listing.set_defaults(func=cmd_list)

    download = commands.add_parser("download", help="download and verify weights into the cache")
    download.add_argument("id", metavar="ID|all", help="an id, or 'all': every entry an installed backend uses")
    download.add_argument("--force", action="store_true", help="download again even if present")
    add_offline_argument(download)
    download.set_defaults(func=cmd_download)

    importing = commands.add_parser("import", help="verify a local file and copy (or link) it into the cache")
    importing.add_argument("id", metavar="ID")
    importing.add_argument("path", metavar="PATH")
    importing.add_argument("--link", action="store_true", help="symlink instead of copying")
    importing.set_defaults(func=cmd_import)

    verify = commands.add_parser("verify", help="re-hash present files and compare with the published/pinned hashes")
    verify.add_argument("id", nargs="?", metavar="ID")
    verify.set_defaults(func=cmd_verify)

    locate = commands.add_parser("path", help="path of a verified file, or the folders in use")
    locate.add_argument("id", nargs="?", metavar="ID")
    locate.set_defaults(func=cmd_path)

    unpin = commands.add_parser("unpin", help="forget the locally pinned hash of an entry without published hash")
    unpin.add_argument("id", metavar="ID")
    unpin.set_defaults(func=cmd_unpin)
    return parser


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


_SETUP_ERRORS = (weights.CacheFolderError, weights.CatalogueError)


def _failed(exc: weights.WeightsError, code: int) -> int:
    """Report ``exc``; a cache folder that cannot be used or a broken catalogue exits 2."""
    _err(str(exc))
    return 2 if isinstance(exc, _SETUP_ERRORS) else code


def _one_line_errors(command: Callable[..., int]) -> Callable[..., int]:
    """A cache folder that cannot be used or a broken catalogue: one line and exit 2, no traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs) -> int:
        try:
            return command(*args, **kwargs)
        except _SETUP_ERRORS as exc:
            return _failed(exc, 2)

    return run


def _hash_text(row: dict) -> str:
    if row["hash_published"]:
        return "published"
    return "pinned" if row["pinned"] else "not pinned"


@_one_line_errors
def cmd_list(args: argparse.Namespace, out: TextIO = None) -> int:
    out = out or sys.stdout
    rows = [weights.describe(i) for i in weights.ids()]
    if args.backend:
        rows = [r for r in rows if r["backend"] == args.backend]
    if getattr(args, "plugin", None):
        rows = [r for r in rows if r["plugin"] == args.plugin]
    if args.json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    header = ("ID", "PLUGIN", "SIZE", "STATUS", "HASH", "UNVERIFIED", "LICENCE")
    table = [(r["id"], r["plugin"], r["size_text"], r["status"], _hash_text(r),
              ", ".join(r["unverified"]) or "-", _shorten(r["license"], 60)) for r in rows]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header) - 1)]
    for row in [header, *table]:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] + "\n")
    out.write(f"cache: {weights.cache_dir()}\n")
    return 0


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


class _TextProgress:
    """Progress on stderr: a rewritten line on a terminal, a few lines otherwise."""

    def __init__(self, label: str, stream: TextIO = None):
        self.label = label
        self.stream = stream or sys.stderr
        self.last = 0.0
        self.last_percent = -10

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if total:
            percent = int(100 * done / total)
            if self.stream.isatty():
                if now - self.last > 0.2 or done >= total:
                    self.stream.write(f"\r{self.label}: {percent:3d}% ({weights.format_bytes(done)})")
                    self.last = now
            elif percent >= self.last_percent + 10:
                self.stream.write(f"{self.label}: {percent}%\n")
                self.last_percent = percent
        elif self.stream.isatty() and now - self.last > 0.2:
            self.stream.write(f"\r{self.label}: {weights.format_bytes(done)}")
            self.last = now

    def finish(self) -> None:
        if self.stream.isatty():
            self.stream.write("\n")


def _used_by_installed_backends() -> dict[str, list[str]]:
    """Weights id -> names of the installed backends that need it."""
    from .registry import get_registry

    used: dict[str, list[str]] = {}
    for name, backend in sorted(get_registry().backends.items()):
        for weights_id in getattr(backend, "weights", ()):
            used.setdefault(weights_id, []).append(name)
    return used


@_one_line_errors
def cmd_download(args: argparse.Namespace) -> int:
    if args.id == "all":
        used = _used_by_installed_backends()
        known = weights.ids()
        wanted = [i for i in known if i in used]
        targets = [i for i in wanted if weights.entry(i).urls]
        manual = [i for i in wanted if not weights.entry(i).urls]
        unused = [i for i in known if i not in used]
        if unused:
            print(f"not downloaded, no installed backend uses them (download one by id if you want it): "
                  f"{', '.join(unused)}")
    else:
        try:
            weights.entry(args.id)
        except weights.UnknownWeightsError as exc:
            _err(str(exc))
            return 2
        targets, manual = [args.id], []
    failures = 0
    for weights_id in targets:
        item = weights.entry(weights_id)
        print(f"{weights_id} ({item.plugin}): {item.size_text()}; licence: {item.license}")
        if item.unverified():
            print(f"{weights_id}: not verified: {', '.join(item.unverified())} (see 'faceedit weights list --json')")
        progress = _TextProgress(weights_id)
        try:
            result = weights.download(weights_id, progress, force=args.force)
        except weights.WeightsError as exc:
            progress.finish()
            if isinstance(exc, _SETUP_ERRORS):
                return _failed(exc, 2)
            _err(str(exc))
            failures += 1
            continue
        progress.finish()
        if result.message:
            print(result.message)
        print(f"{weights_id}: ok {result.path} (sha256 {result.sha256})")
    for weights_id in manual:
        if weights.status(weights_id) != weights.PRESENT:
            print(f"{weights_id}: no automatic download; get it from {weights.entry(weights_id).page} "
                  f"and run: faceedit weights import {weights_id} PATH")
    return 1 if failures else 0


@_one_line_errors
def cmd_import(args: argparse.Namespace) -> int:
    try:
        result = weights.import_file(args.id, args.path, link=args.link)
    except weights.VerificationError as exc:
        _err(str(exc))
        _err(f"expected sha256: {exc.expected_sha256 or '(none)'}; actual sha256: {exc.actual_sha256 or '(not computed)'}")
        return 1
    except weights.WeightsError as exc:
        return _failed(exc, 1)
    if result.message:
        print(result.message)
    print(f"{args.id}: {'linked' if args.link else 'imported'} {result.path} (sha256 {result.sha256})")
    return 0


@_one_line_errors
def cmd_verify(args: argparse.Namespace) -> int:
    targets = [args.id] if args.id else weights.ids()
    bad = 0
    for weights_id in targets:
        try:
            found = weights.check(weights_id, fresh=True)
        except weights.WeightsError as exc:
            return _failed(exc, 2)
        if found.state == weights.PRESENT:
            how = {"published": "matches the published hash", "pinned": "matches the pinned hash"}.get(
                found.hash_origin, "checked against its network (not pinned yet)")
            print(f"{weights_id}: ok, {how}: {found.path}")
        elif found.state == weights.CORRUPT:
            print(f"{weights_id}: CORRUPT: {found.message}")
            bad += 1
        else:
            print(f"{weights_id}: missing")
            bad += 1 if args.id else 0
    return 1 if bad else 0


@_one_line_errors
def cmd_path(args: argparse.Namespace) -> int:
    if not args.id:
        for key, value in weights.locations().items():
            print(f"{key}: {value}")
        return 0
    try:
        print(weights.path(args.id))
    except weights.WeightsError as exc:
        return _failed(exc, 1)
    return 0


@_one_line_errors
def cmd_unpin(args: argparse.Namespace) -> int:
    try:
        removed = weights.unpin(args.id)
    except weights.WeightsError as exc:
        return _failed(exc, 2)
    print(f"{args.id}: {'pinned hash forgotten' if removed else 'nothing was pinned'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceedit")
    add_offline_argument(parser)
    add_weights_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    apply_offline(args)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
