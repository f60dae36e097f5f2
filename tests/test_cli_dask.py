"""``faceedit run --scheduler ADDRESS`` / ``--workers N``: a folder batch on Dask distributed (issue 16,
"Beyond one machine").

Each image is one Dask task running the same core runner and atomic writer as a local run; the
summary has a local run's shape; a re-run skips inputs whose outputs are complete; the output plan's
checks run before anything is submitted. The module's cluster runs its workers as threads of this
process (cheap, and the tests' probe backends are registered there); one test starts real worker
processes through ``--workers``.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fake_backends
from conftest import write_dist
from napari_faceedit import cli
from napari_faceedit.cli import main
from napari_faceedit.io import read_image
from napari_faceedit.tasks import Task

import distributed  # noqa: E402 (the "dask" extra, installed by scripts/setup.sh: a hard failure if missing)

NAMES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, processes=False, threads_per_worker=1,
                                  dashboard_address="127.0.0.1:0") as running:
        yield running


@pytest.fixture
def probes(fresh_registry):
    registry = fresh_registry()
    registry.register(fake_backends.PROBE_PLUGIN, "tests.probes")
    fake_backends.reset_probes()
    yield registry
    fake_backends.reset_probes()


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, name in enumerate(NAMES):
        pixels = np.random.default_rng(seed).integers(0, 256, (24, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(Path(folder).iterdir()) if p.is_file()}


def run(capsys, *argv: str) -> tuple[int, list, str]:
    """``faceedit run ARGV --json --quiet``: (exit code, JSON summary, stderr)."""
    code = main(["run", *argv, "--json", "--quiet"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, json.loads(captured.out) if captured.out.strip() else [], captured.err


def without_timing(entry: dict, output_root: Path) -> dict:
    """A summary entry with its wall time dropped and output paths relative to their folder."""
    entry = json.loads(json.dumps(entry))
    entry.get("provenance", {}).pop("wall_time_s", None)
    entry["outputs"] = [str(Path(p).relative_to(output_root)) for p in entry.get("outputs", [])]
    return entry


def test_a_batch_on_a_scheduler_writes_what_a_local_run_writes(tmp_path, photos, cluster, probes, capsys):
    local, remote = tmp_path / "local", tmp_path / "remote"
    inputs_before = tree(photos)
    code, local_summary, _ = run(capsys, "restore", "--backend", "classic-restore", "--input", str(photos),
                                 "--output", str(local))
    assert code == 0
    code, remote_summary, err = run(capsys, "restore", "--backend", "classic-restore", "--input", str(photos),
                                    "--output", str(remote), "--scheduler", cluster.scheduler_address)
    assert code == 0, err
    assert tree(remote) == tree(local) and sorted(tree(remote)) == [f"{n}.png" for n in NAMES]
    assert [without_timing(e, remote) for e in remote_summary] == [without_timing(e, local) for e in local_summary]
    assert tree(photos) == inputs_before
    assert not [p for p in remote.iterdir() if p.name.endswith(".tmp")]


WORKER_CALLS: list[tuple[str, str]] = []  # (input name, thread) per call of the function Dask ran
_RUN_ON_WORKER = cli.run_on_worker


def recording_run_on_worker(task, backend_name, args, params, plan, image_path, target):
    """cli.run_on_worker, noting each call (module level: Dask ships it by reference, not as a copy)."""
    WORKER_CALLS.append((Path(image_path).name, threading.current_thread().name))
    return _RUN_ON_WORKER(task, backend_name, args, params, plan, image_path, target)


def test_each_input_is_one_task_run_by_the_core_runner(tmp_path, photos, cluster, probes, capsys, monkeypatch):
    WORKER_CALLS.clear()
    calls = WORKER_CALLS
    monkeypatch.setattr(cli, "run_on_worker", recording_run_on_worker)
    out = tmp_path / "out"
    code, summary, _ = run(capsys, "parse", "--backend", "probe-parse", "--input", str(photos), "--output", str(out),
                           "--scheduler", cluster.scheduler_address)
    assert code == 0
    assert sorted(name for name, _ in calls) == [f"{n}.png" for n in NAMES]  # one task per image
    assert all(thread != threading.main_thread().name for _, thread in calls)  # run by the workers
    assert [Path(e["input"]).name for e in summary] == [f"{n}.png" for n in NAMES]  # input order, not finish order
    for entry in summary:
        assert entry["provenance"]["backend"] == "probe-parse" and entry["provenance"]["task"] == "parse"
        labels = np.asarray(Image.open(out / Path(entry["input"]).name))
        expected = (read_image(Path(entry["input"])).mean(axis=2) > 127).astype(np.uint8)
        assert np.array_equal(labels, expected)


def test_a_rerun_skips_finished_inputs_and_says_so(tmp_path, photos, cluster, probes, capsys):
    out = tmp_path / "out"
    args = ("restore", "--backend", "probe-restore", "--input", str(photos), "--output", str(out),
            "--scheduler", cluster.scheduler_address)
    assert run(capsys, *args)[0] == 0
    first = tree(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    fake_backends.PROBE_REQUESTS.clear()
    code, summary, err = run(capsys, *args)
    assert code == 0
    assert "skipped 4 of 4 input(s) whose outputs exist" in err and "--overwrite" in err
    assert [e["skipped"].split(":")[0] for e in summary] == ["finished"] * 4
    assert [e["outputs"] for e in summary] == [[str(out / f"{n}.png")] for n in NAMES]
    assert Task.RESTORE not in fake_backends.PROBE_REQUESTS  # nothing ran
    assert tree(out) == first and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    (out / "b.png").unlink()  # as if that input had not been done
    code, summary, err = run(capsys, *args)
    assert code == 0 and "skipped 3 of 4" in err
    assert ["skipped" in e for e in summary] == [True, False, True, True]
    assert tree(out) == first

    code, summary, err = run(capsys, *args, "--overwrite")
    assert code == 0 and "skipped" not in err and all("provenance" in e for e in summary)
    assert tree(out) == first and all(p.stat().st_mtime_ns > mtimes[p.name] for p in out.iterdir())


def test_an_incomplete_output_is_not_taken_for_a_finished_one(tmp_path, photos, cluster, probes, capsys):
    out = tmp_path / "out"
    args = ("restore", "--backend", "probe-restore", "--input", str(photos), "--output", str(out),
            "--scheduler", cluster.scheduler_address)
    assert run(capsys, *args)[0] == 0
    truncated = (out / "c.png").read_bytes()[:60]
    (out / "c.png").write_bytes(truncated)
    Image.new("RGB", (5, 5)).save(out / "d.png")  # an image, but not a result of d.png (another size)
    before = tree(out)
    code, summary, err = run(capsys, *args)
    assert code == 2 and summary == []
    assert len(err.strip().splitlines()) == 1
    assert "not complete results" in err and str(out / "c.png") in err and str(out / "d.png") in err
    assert "--overwrite" in err and tree(out) == before
    assert run(capsys, *args, "--overwrite")[0] == 0
    assert np.array_equal(read_image(out / "c.png"), 255 - read_image(photos / "c.png"))


def test_the_main_output_is_written_last(tmp_path, probes, capsys, monkeypatch):
    """What makes skipping safe: the files beside a result (here the face crops) are written first, so a
    main output that exists means its input is done."""
    from skimage import data

    from napari_faceedit import io

    Image.fromarray(data.astronaut()[:256, 100:356]).save(tmp_path / "face.png")
    written = []
    original = io.write_atomically

    def recording(path, write):
        written.append(Path(path).name)
        return original(path, write)

    monkeypatch.setattr(io, "write_atomically", recording)
    code, summary, err = run(capsys, "restore", "--backend", "probe-faces", "--param", "return_crops=true",
                             "--input", str(tmp_path / "face.png"), "--output", str(tmp_path / "out" / "face.png"))
    assert code == 0, err
    assert [Path(p).name for p in summary[0]["outputs"]] == ["face.png", "face_crops_after.png",
                                                              "face_crops_before.png"]
    assert written[-1] == "face.png" and sorted(written) == sorted(Path(p).name for p in summary[0]["outputs"])


def test_a_failing_input_is_reported_and_the_others_complete(tmp_path, photos, cluster, probes, capsys):
    (photos / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    out = tmp_path / "out"
    code, summary, err = run(capsys, "restore", "--backend", "probe-restore", "--input", str(photos),
                             "--output", str(out), "--scheduler", cluster.scheduler_address)
    assert code == 1
    assert [("error" in e) for e in summary] == [False, True, False, False]
    assert str(photos / "b.png") == summary[1]["input"] and "b.png" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png", "d.png"]
    for name in ("a", "c", "d"):
        assert np.array_equal(read_image(out / f"{name}.png"), 255 - read_image(photos / f"{name}.png"))
    # A backend error on the worker is reported the same way, for every input it hits.
    fake_backends.PROBE_FAILURE["mode"] = "mid-run"
    code, summary, err = run(capsys, "restore", "--backend", "probe-restore", "--input", str(photos),
                             "--output", str(tmp_path / "other"), "--scheduler", cluster.scheduler_address)
    assert code == 1 and all("error" in e for e in summary)
    assert "simulated backend error" in summary[0]["error"] and not (tmp_path / "other").exists()


def test_the_output_plan_is_checked_before_anything_is_submitted(tmp_path, photos, cluster, probes, capsys,
                                                                 monkeypatch):
    WORKER_CALLS.clear()
    monkeypatch.setattr(cli, "run_on_worker", recording_run_on_worker)
    before = tree(photos)
    for output in (photos, tmp_path / "clash"):
        if output != photos:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / "a.jpg")  # a.png and a.jpg -> a.png
        code, summary, err = run(capsys, "restore", "--backend", "probe-restore", "--input", str(photos),
                                 "--output", str(output), "--scheduler", cluster.scheduler_address)
        assert code == 2 and summary == [] and len(err.strip().splitlines()) == 1
        assert ("input folder" in err) if output == photos else ("both be written" in err)
    assert WORKER_CALLS == [] and {k: v for k, v in tree(photos).items() if k != "a.jpg"} == before
    code, _, err = run(capsys, "restore", "--input", str(photos), "--output", str(tmp_path / "x"),
                       "--scheduler", cluster.scheduler_address, "--workers", "2")
    assert code == 2 and "exclude each other" in err
    code, _, err = run(capsys, "restore", "--input", str(photos), "--output", str(tmp_path / "x"), "--workers", "0")
    assert code == 2 and "--workers must be at least 1" in err
    monkeypatch.setattr(cli, "_SCHEDULER_TIMEOUT", "1s")
    code, _, err = run(capsys, "restore", "--backend", "probe-restore", "--input", str(photos / "a.png"),
                       "--output", str(tmp_path / "y.png"), "--scheduler", "tcp://127.0.0.1:9")
    assert code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "y.png").exists()


def test_ctrl_c_while_waiting_reports_and_writes_the_summary(tmp_path, photos, cluster, probes, capsys, monkeypatch):
    reported = []

    def interrupt_after_the_first(args, entry):
        reported.append(entry)
        if len(reported) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_report", interrupt_after_the_first)
    out = tmp_path / "out"
    code = main(["run", "restore", "--backend", "probe-restore", "--input", str(photos), "--output", str(out),
                 "--scheduler", cluster.scheduler_address, "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 130 and "Traceback" not in captured.err
    assert "interrupted: 1 of 4 written" in captured.err
    summary = json.loads(captured.out)
    assert len(summary) == 4 and sum("outputs" in e for e in summary) == 1
    assert sum(e.get("skipped") == "interrupted" for e in summary) == 3


PID_PLUGIN = '''
    import os
    from napari_faceedit.backend import Backend
    from napari_faceedit.hookspecs import hookimpl
    from napari_faceedit.tasks import Result, Task

    class PidNote(Backend):
        """Inverts the image and notes the process that ran it."""
        name = "pid-note"
        tasks = frozenset({Task.RESTORE})
        description = "test backend"

        def run(self, request, ctx):
            env = os.environ
            ctx.note(f"pid {os.getpid()}; trim {env.get('MALLOC_TRIM_THRESHOLD_')}; omp {env.get('OMP_NUM_THREADS')}")
            return Result(image=255 - request.image)

    @hookimpl
    def faceedit_backends():
        return [PidNote]
'''


def test_local_worker_processes(tmp_path, photos, capsys, monkeypatch, fresh_registry):
    """--workers 2: a local cluster of two worker processes (one thread each); they find an installed
    plugin as this process does, run it in other processes, and write what a local run writes."""
    site = tmp_path / "site"
    site.mkdir()
    write_dist(site, "pid-note-plugin", "pid_note_backend", PID_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    importlib.invalidate_caches()
    fresh_registry()
    local, parallel = tmp_path / "local", tmp_path / "parallel"
    assert run(capsys, "restore", "--backend", "pid-note", "--input", str(photos), "--output", str(local))[0] == 0
    code, summary, err = run(capsys, "restore", "--backend", "pid-note", "--input", str(photos),
                             "--output", str(parallel), "--workers", "2")
    assert code == 0, err
    assert tree(parallel) == tree(local) and sorted(tree(parallel)) == [f"{n}.png" for n in NAMES]
    pids = {int(e["provenance"]["notes"].split("pid ")[1].split(";")[0]) for e in summary}
    assert os.getpid() not in pids and len(pids) in (1, 2)
    # Dask's default MALLOC_TRIM_THRESHOLD_ (2x slower torch) is not set; the cores are shared out.
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert {e["provenance"]["notes"].split("; ", 1)[1].split(";")[0:2] == ["trim None", f" omp {threads}"]
            for e in summary} == {True}
    assert not [p for p in parallel.iterdir() if p.name.endswith(".tmp")]
    sys.modules.pop("pid_note_backend", None)
