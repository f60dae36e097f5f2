"""``faceedit``: the command line over the same core the widgets use."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .io import DEFAULT_JPEG_QUALITY, LABEL_FORMATS, OUTPUT_FORMATS, output_format
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


FOLDER_FORMATS = {"png": ".png", "jpg": ".jpg", "tif": ".tif"}
_LISTED_PATHS = 10  # paths named in one refusal line before "and N more"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same cleanup runs (temporary files removed, summary written)."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM into :class:`Terminated` while a batch runs (main thread only: signals go there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports it: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def real_path(path: Path) -> str:
    """One spelling per file (symlinks, '..', case on case-insensitive systems): for comparing paths."""
    return os.path.normcase(os.path.realpath(path))


def listing(paths) -> str:
    """Paths for a one-line message: the first few, then how many more."""
    paths = [str(p) for p in paths]
    shown = ", ".join(paths[:_LISTED_PATHS])
    return shown + (f" and {len(paths) - _LISTED_PATHS} more" if len(paths) > _LISTED_PATHS else "")


def is_folder_output(raw_output: str, input_arg: Optional[Path], inputs: list) -> bool:
    """A folder output is a folder whatever its name (dots included): when the input is a folder or
    there are several inputs, when it exists as a folder, or when it ends with a path separator."""
    separators = tuple(s for s in (os.sep, os.altsep, "/") if s)
    return ((input_arg is not None and Path(input_arg).is_dir()) or len(inputs) > 1
            or Path(raw_output).is_dir() or raw_output.endswith(separators))


@dataclass
class OutputPlan:
    """Every input's output path, resolved and checked before any work starts.

    ``targets`` pairs each input (None: generate) with its main output; further outputs of a result
    (``*_labels``, image extras) sit beside it and are checked by :meth:`claim` before writing.
    ``finished`` (distributed runs only) holds the real paths of main outputs already complete."""

    targets: list[tuple[Optional[Path], Path]]
    overwrite: bool
    jpeg_quality: int
    inputs: frozenset[str] = frozenset()  # real paths of every file the run reads
    owners: dict[str, str] = field(default_factory=dict)  # real output path -> the input it belongs to
    finished: frozenset[str] = frozenset()

    def beside(self, target: Path, suffix: str, labels: bool) -> Path:
        """A further output next to ``target``: same extension, but PNG for labels beside a JPEG."""
        extension = target.suffix
        if labels and OUTPUT_FORMATS.get(extension.lower()) not in LABEL_FORMATS:
            extension = ".png"
        return target.with_name(f"{target.stem}{suffix}{extension}")

    def claim(self, path: Path, owner: str) -> None:
        """Refuse a further output that is an input, belongs to another input or exists (without --overwrite)."""
        key = real_path(path)
        if key in self.inputs:
            raise ValueError(f"output {path} would replace an input file; nothing written for this image")
        if self.owners.get(key, owner) != owner:
            raise ValueError(f"output {path} is also the output of {self.owners[key]}; nothing written for this image")
        if key not in self.owners and path.exists() and not self.overwrite:
            raise ValueError(f"output {path} exists (use --overwrite to replace it); nothing written for this image")
        self.owners[key] = owner


def _files_read(args, inputs: list[Optional[Path]]) -> set[str]:
    """Real paths of every file the run reads: images, masks, label maps (all of a companion folder), source."""
    read = {real_path(p) for p in inputs if p is not None}
    for option in (args.mask, args.labels, args.source):
        if option is None:
            continue
        option = Path(option)
        if option.is_dir():
            read.update(real_path(p) for p in option.iterdir() if p.is_file())
        else:
            read.add(real_path(option))
    return read


def finished_output(target: Path, image_path: Optional[Path]) -> bool:
    """Whether ``target`` is a complete result of ``image_path``: it decodes in full, at the input's size.

    Outputs are renamed into place only when complete and the main output is written last, so a
    main output that decodes means the input is done (a truncated or foreign file does not)."""
    from PIL import Image

    from .io import oriented_size

    try:
        with Image.open(target) as picture:
            picture.load()
            size = picture.size
        if image_path is None:
            return True
        with Image.open(image_path) as source:
            return size == oriented_size(source)
    except Exception:  # noqa: BLE001 - unreadable means not finished
        return False


def plan_outputs(task: Task, args, inputs: list[Optional[Path]], resume: bool = False) -> OutputPlan:
    """Resolve and check every output path; a ValueError (one line, naming the paths) refuses the run.

    ``resume`` (distributed runs): an existing main output that is a complete result is skipped
    rather than refused; one that is not (truncated, another size) still needs ``--overwrite``."""
    raw = args.output
    if not raw.strip():
        raise ValueError("--output is empty: give an output file (.png, .jpg, .tif) or a folder")
    labels_first = task is Task.PARSE  # parse writes a label map as its main output
    folder = is_folder_output(raw, args.input, inputs)
    output = Path(raw)
    if folder:
        if output.exists() and not output.is_dir():
            raise ValueError(f"--output {output} is a file, but the results need a folder (the input is a folder "
                             "or there are several inputs)")
        extension = FOLDER_FORMATS[args.format or "png"]
        targets = [(p, output / f"{p.stem if p is not None else 'generated'}{extension}") for p in inputs]
        if args.input is not None and Path(args.input).is_dir() and real_path(output) == real_path(args.input):
            raise ValueError(f"--output {output} is the input folder: results would replace or mix with the "
                             "inputs; choose another folder")
    else:
        if args.format is not None:
            raise ValueError(f"--format applies to folder outputs; the extension of --output {output} sets its format")
        targets = [(inputs[0], output)]
    kind = output_format(targets[0][1], labels=labels_first)
    if args.jpeg_quality is not None:
        if kind != "JPEG":
            raise ValueError(f"--jpeg-quality applies to JPEG outputs, not {kind} ({targets[0][1]})")
        if not 1 <= args.jpeg_quality <= 100:
            raise ValueError(f"--jpeg-quality must lie in 1..100, got {args.jpeg_quality}")
    files_read = _files_read(args, inputs)
    replaced = [t for _, t in targets if real_path(t) in files_read]
    if replaced:
        raise ValueError(f"--output would replace input file(s): {listing(replaced)}")
    written_by: dict[str, Optional[Path]] = {}
    for image_path, target in targets:
        key = real_path(target)
        if key in written_by:
            raise ValueError(f"inputs {written_by[key]} and {image_path} would both be written to {target}: "
                             "rename one or run them separately")
        written_by[key] = image_path
    existing = [(p, t) for p, t in targets if t.exists()]
    finished: set[str] = set()
    if existing and not args.overwrite:
        if resume:
            finished = {real_path(t) for p, t in existing if finished_output(t, p)}
            unfinished = [t for _, t in existing if real_path(t) not in finished]
            if unfinished:
                raise ValueError(f"output(s) exist but are not complete results: {listing(unfinished)} "
                                 "(use --overwrite to redo them)")
        else:
            raise ValueError(f"output(s) exist: {listing([t for _, t in existing])} (use --overwrite to replace them)")
    quality = DEFAULT_JPEG_QUALITY if args.jpeg_quality is None else args.jpeg_quality
    owners = {real_path(t): str(p or "generate") for p, t in targets}
    return OutputPlan(targets=targets, overwrite=args.overwrite, jpeg_quality=quality,
                      inputs=frozenset(files_read), owners=owners, finished=frozenset(finished))


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


def _build_request(task: Task, args, image_path: Optional[Path], params: dict):
    from .io import companion, read_image, read_label_map, read_mask

    common = dict(device=args.device, seed=args.seed, face_index=args.face_index, params=params)
    image = read_image(image_path) if image_path is not None else None
    if task is Task.PARSE or task is Task.RESTORE:
        return REQUEST_TYPES[task](image=image, **common)
    if task is Task.COMPLETE:
        mask_path = companion(args.mask, image_path)
        labels_path = companion(args.labels, image_path)
        components = tuple(c.strip() for c in (args.components or "").split(",") if c.strip())
        # The hole rule (tasks.as_mask, the same as the API's): any non-black pixel of the mask is the hole.
        return REQUEST_TYPES[task](image=image, mask=read_mask(mask_path) if mask_path else None,
                                   components=components, attributes=_parse_attr(args.attr),
                                   labels=read_label_map(labels_path) if labels_path else None, **common)
    if task is Task.EDIT_ATTRIBUTES:
        labels_path = companion(args.labels, image_path)
        strength = 1.0 if args.strength is None else args.strength
        return REQUEST_TYPES[task](image=image, attributes=_parse_attr(args.attr), strength=strength,
                                   labels=read_label_map(labels_path) if labels_path else None, **common)
    if task is Task.EDIT_TEXT:
        return REQUEST_TYPES[task](image=image, text=args.text or "", **common)
    if task is Task.SYNTHESIZE:
        labels_path = companion(args.labels, image_path)
        components = tuple(c.strip() for c in (args.components or "").split(",") if c.strip())
        return REQUEST_TYPES[task](image=image, target_labels=read_label_map(labels_path) if labels_path else None,
                                   donor_image=read_image(args.source) if args.source else None,
                                   components=components, **common)
    raise ValueError(f"unknown task {task}")


def cmd_run(args) -> int:
    from .io import list_images
    from .params import parse_assignments, resolve
    from .registry import get_registry

    task = Task(args.task)
    distributed = args.scheduler is not None or args.workers is not None
    if args.scheduler is not None and args.workers is not None:
        raise ValueError("--scheduler (an existing Dask cluster) and --workers (a local one) exclude each other")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    registry = get_registry()
    backend = _chosen_backend(registry, task, args.backend)
    if task not in backend.tasks:
        raise ValueError(f"backend '{backend.name}' does not do '{task.value}' (it does: "
                         f"{', '.join(sorted(t.value for t in backend.tasks))})")
    ready, why = backend.ready()
    if not ready:  # once, before any file is read, rather than once per input
        raise RuntimeError(f"backend '{backend.name}' is not ready: {why}")
    check_options(task, backend, args)
    params = parse_assignments(args.param)
    resolve(backend.declared_parameters(), params, f"backend '{backend.name}'")  # fail before any file is read
    if args.input is None:
        if task is not Task.EDIT_TEXT:
            raise ValueError(f"'{task.value}' needs --input")
        inputs: list[Optional[Path]] = [None]
    else:
        inputs = list_images(args.input)
    plan = plan_outputs(task, args, inputs, resume=distributed)  # every path checked before any work starts
    if distributed:
        return _run_distributed(task, backend, args, params, plan)
    summary: list[dict] = []
    written = failed = 0
    try:
        with sigterm_as_interrupt():
            for image_path, target in plan.targets:
                entry = _run_one(task, backend, args, params, plan, image_path, target)
                summary.append(entry)
                if "error" in entry:
                    failed += 1
                else:
                    written += 1
    except KeyboardInterrupt as interrupt:
        for image_path, _ in plan.targets[len(summary):]:
            summary.append({"input": str(image_path) if image_path else None, "skipped": "interrupted"})
        print(f"faceedit: interrupted: {written} of {len(plan.targets)} written", file=sys.stderr)
        _print_summary(args, summary)
        return interrupt_exit_code(interrupt)
    _print_summary(args, summary)
    return 1 if failed else 0


def _chosen_backend(registry, task: Task, name: Optional[str]):
    """The backend asked for, or the best ready one; a name not found also names plugins that failed to load."""
    if not name:
        return registry.best_for(task)
    try:
        return registry.get(name)
    except KeyError as error:
        if not registry.failures:
            raise
        failed = "; ".join(str(failure) for failure in registry.failures)
        raise KeyError(f"{error.args[0]}; plugin(s) that failed to load: {failed}") from None


def _run_one(task: Task, backend, args, params: dict, plan: OutputPlan, image_path: Optional[Path],
             target: Path, report: bool = True) -> dict:
    """Run one input and write its outputs; a failure becomes the summary entry's error (printed
    here unless ``report`` is off: a Dask worker's client prints it)."""
    from .runner import execute, failure_message

    name = str(image_path) if image_path else None
    try:
        request = _build_request(task, args, image_path, params)
        result = execute(backend, request, _cli_progress(args.quiet or not report), allow_no_face=args.allow_no_face)
        outputs = _result_outputs(result, target, plan, name or "generate")
        # The main output last: once it exists, everything of this input is written (re-runs rely on it).
        for path, array, is_labels in reversed(outputs):
            _write_output(path, array, is_labels, plan)
        entry = {"input": name, "outputs": [str(path) for path, _, _ in outputs],
                 "provenance": result.provenance.to_dict()}
        if result.passed_through:
            entry["passed_through"] = result.passed_through
        if report:
            _report(args, entry)
        return entry
    except Exception as exc:  # noqa: BLE001 - report, go on with the next file
        message = failure_message(exc)
        if name and message.startswith(f"{name}: "):  # the reader already named the file
            message = message[len(name) + 2:]
        entry = {"input": name, "error": message}
        if report:
            _report(args, entry)
        return entry


def _report(args, entry: dict) -> None:
    """A failed input's error (always), a pass-through (unless --quiet): one line each on stderr."""
    if "error" in entry:
        print(f"faceedit: {entry['input'] or 'generate'}: {entry['error']}", file=sys.stderr)
    elif entry.get("passed_through") and not args.quiet:
        print(f"faceedit: {entry['input']}: {entry['passed_through']}", file=sys.stderr)


# -- Dask: a batch on an existing scheduler (--scheduler) or a local cluster (--workers) ---------
_SCHEDULER_TIMEOUT = "20s"  # to reach a scheduler; a wrong address fails quickly with one line
_worker_configured = False


def run_on_worker(task: Task, backend_name: str, args, params: dict, plan: OutputPlan, image_path: Optional[Path],
                  target: Path) -> dict:
    """One input, run on a Dask worker by the same core runner and atomic writer as a local run;
    returns the summary entry (the client reports it)."""
    global _worker_configured
    from .registry import get_registry
    from .weights_cli import apply_offline

    if not _worker_configured:  # once per worker process: offline mode and torch threads as the CLI sets them
        from .context import configure_torch_threads

        apply_offline(args)
        configure_torch_threads()
        _worker_configured = True
    try:
        backend = get_registry().get(backend_name)
    except KeyError as error:  # a worker without the plugin installed
        return {"input": str(image_path) if image_path else None, "error": f"on the worker: {error.args[0]}"}
    return _run_one(task, backend, args, params, plan, image_path, target, report=False)


def worker_environment(workers: int) -> dict:
    """Environment of our local cluster's worker processes. Dask's default for it sets
    MALLOC_TRIM_THRESHOLD_, which turns off glibc's adaptive mmap threshold: every large tensor is
    then a fresh mmap, and a parse ran 2.1x slower (40 faces, 1 thread: 41.2 vs 19.5 s). The cores
    are shared out among the workers for torch's threads (Dask's default: one each)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    return {name: threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


@contextlib.contextmanager
def dask_client(args):
    """A Dask client on the scheduler at ``args.scheduler``, or on a local cluster of ``args.workers``
    worker processes (one thread each) that is closed afterwards."""
    import logging

    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise RuntimeError("--scheduler and --workers need Dask's scheduler: pip install distributed") from None
    # Dask logs every worker start and stop; a CLI reports errors itself.
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.scheduler is not None:
        try:
            client = Client(args.scheduler, timeout=_SCHEDULER_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as error:
            from .runner import failure_message

            reason = failure_message(error)
            raise RuntimeError(f"cannot reach the Dask scheduler at {args.scheduler}: {reason}") from None
        with client:
            yield client
        return
    # Local only, on free ports: several batches (or a notebook's cluster) can run side by side. The
    # worker processes start with Ctrl-C ignored (it reaches the whole process group): this process
    # handles it and stops them, so they print no tracebacks of their own.
    environment = {"distributed.nanny.pre-spawn-environ": worker_environment(args.workers)}
    with _ctrl_c_ignored_by_children(), dask.config.set(environment):
        cluster = LocalCluster(n_workers=args.workers, processes=True, threads_per_worker=1, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _ctrl_c_ignored_by_children():
    """SIGINT ignored while child processes start (they inherit it; Python then leaves it ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_distributed(task: Task, backend, args, params: dict, plan: OutputPlan) -> int:
    """Each input is one Dask task; finished outputs are skipped; the summary has a local run's shape."""
    entries: dict[int, dict] = {}
    pending: list[int] = []
    for index, (image_path, target) in enumerate(plan.targets):
        if real_path(target) in plan.finished:
            entries[index] = {"input": str(image_path) if image_path else None, "outputs": [str(target)],
                              "skipped": "finished: the output exists (--overwrite redoes it)"}
        else:
            pending.append(index)
    if entries:
        print(f"faceedit: skipped {len(entries)} of {len(plan.targets)} input(s) whose outputs exist "
              "(use --overwrite to redo them)", file=sys.stderr)
    written = failed = 0
    try:
        with sigterm_as_interrupt():
            if pending:
                with dask_client(args) as client:
                    written, failed = _gather(client, task, backend, args, params, plan, pending, entries)
    except KeyboardInterrupt as interrupt:
        for index in pending:
            if index not in entries:
                image_path, target = plan.targets[index]
                entry = {"input": str(image_path) if image_path else None, "skipped": "interrupted"}
                if args.workers is not None and target.exists() and finished_output(target, image_path):
                    # Our cluster is stopped by now: a worker finished this one while it was stopping.
                    entry["outputs"] = [str(target)]
                entries[index] = entry
        if args.workers is not None:  # our own cluster was stopped, perhaps mid-write
            _remove_temporaries(plan, pending)
        written = sum(1 for index in pending if "outputs" in entries[index])
        print(f"faceedit: interrupted: {written} of {len(pending)} written", file=sys.stderr)
        _print_summary(args, [entries[index] for index in sorted(entries)])
        return interrupt_exit_code(interrupt)
    _print_summary(args, [entries[index] for index in sorted(entries)])
    return 1 if failed else 0


def _gather(client, task: Task, backend, args, params: dict, plan: OutputPlan, pending: list[int],
            entries: dict[int, dict]) -> tuple[int, int]:
    """Submit one task per pending input, record each entry as it completes: (written, failed)."""
    from distributed import as_completed

    from .runner import failure_message

    # The plan (every input's paths) goes to each worker once, not once per task.
    shared_plan = client.scatter(plan, broadcast=True, hash=False)
    futures = {}
    for index in pending:
        image_path, target = plan.targets[index]
        future = client.submit(run_on_worker, task, backend.name, args, params, shared_plan, image_path, target,
                               pure=False, retries=0)
        futures[future] = index
    written = failed = 0
    try:
        for future in as_completed(futures):
            index = futures[future]
            image_path = plan.targets[index][0]
            try:
                entry = future.result()
            except Exception as error:  # noqa: BLE001 - the task could not run (a worker died, ...)
                entry = {"input": str(image_path) if image_path else None,
                         "error": f"worker failure: {failure_message(error)}"}
            entries[index] = entry
            _report(args, entry)
            if "error" in entry:
                failed += 1
            else:
                written += 1
    except BaseException:
        client.cancel(list(futures))
        raise
    return written, failed


def _remove_temporaries(plan: OutputPlan, indices: list[int]) -> None:
    """Temporary files left by workers stopped mid-write: only the writer's names for these outputs
    (".NAME.<random>.tmp" for the main output and the "NAME_<suffix>" files beside it)."""
    from .io import TEMPORARY_SUFFIX

    for index in indices:
        target = plan.targets[index][1]
        if not target.parent.is_dir():
            continue
        for leftover in target.parent.iterdir():
            ours = leftover.name.startswith((f".{target.name}.", f".{target.stem}_"))
            if ours and leftover.name.endswith(TEMPORARY_SUFFIX) and leftover.is_file():
                leftover.unlink(missing_ok=True)


def _result_outputs(result, target: Path, plan: OutputPlan, owner: str) -> list[tuple[Path, object, bool]]:
    """(path, array, is_labels) for everything a result holds, each path checked before any is written."""
    outputs = []
    if result.image is not None:
        outputs.append((target, result.image, False))
    if result.labels is not None:
        path = target if result.image is None else plan.beside(target, "_labels", labels=True)
        outputs.append((path, result.labels, True))
    for name, array in _image_extras(result.extras):
        outputs.append((plan.beside(target, f"_{name}", labels=False), array, False))
    for path, _, is_labels in outputs:
        output_format(path, labels=is_labels)
        if path != target:
            plan.claim(path, owner)
    return outputs


def _write_output(path: Path, array, is_labels: bool, plan: OutputPlan) -> None:
    from .io import write_image, write_labels

    if is_labels:
        write_labels(path, array)
    else:
        write_image(path, array, jpeg_quality=plan.jpeg_quality)


def _print_summary(args, summary: list[dict]) -> None:
    if args.json:
        print(json.dumps(summary, indent=2, default=str))


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
    p.add_argument("--output", required=True,
                   help="output file (.png, .jpg/.jpeg or .tif/.tiff: the extension sets the format) or folder "
                        "(a folder when the input is a folder or several files, when it exists as a folder, or "
                        "when it ends with '/'); an input is never replaced")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    p.add_argument("--format", choices=sorted(FOLDER_FORMATS),
                   help="format of the files written into a folder output (default png; label maps: png or tif)")
    p.add_argument("--jpeg-quality", type=int, default=None,
                   help=f"JPEG quality 1..100 for .jpg outputs (default {DEFAULT_JPEG_QUALITY})")
    p.add_argument("--backend", help="backend name (default: the best ready backend for the task)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mask", type=Path, help="hole mask image or folder of masks (any non-black pixel = hole; "
                   "transparent pixels are not)")
    p.add_argument("--labels", type=Path, help="label map (CelebAMask-HQ indices 0..18, or a colour picture in our "
                   "palette) or folder; for synthesize the edited label map to render")
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
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the batch on this Dask distributed scheduler (e.g. tcp://10.0.0.5:8786), one task per "
                        "image; the workers read and write the same paths, so they need the same file system and "
                        "the plugins installed; outputs already complete are skipped (--overwrite redoes them)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="run the batch on a local Dask cluster of N worker processes (one thread each); skips "
                        "complete outputs as --scheduler does")
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
    except (ValueError, KeyError, LookupError, OSError, RuntimeError, MemoryError) as exc:
        from .runner import failure_message

        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else failure_message(exc)
        print(f"faceedit: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # outside a batch loop (start-up, model loading): no traceback
        print("faceedit: interrupted", file=sys.stderr)
        return interrupt_exit_code(interrupt)


if __name__ == "__main__":
    sys.exit(main())
