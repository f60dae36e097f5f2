"""`faceedit weights ...` commands, run through a parser built here (as napari_faceedit.cli does)."""
from __future__ import annotations

import argparse
import json

import pytest

from napari_faceedit import weights
from napari_faceedit.weights_cli import add_weights_commands, apply_offline
from test_weights import serve_tiny_catalogue, isolated, leftovers, server, sha, tiny, use_catalogue  # noqa: F401 - fixtures


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="faceedit")
    parser.add_argument("--offline", action="store_true")  # the global flag, wired as the lead should
    add_weights_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    apply_offline(args)
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def catalogue(tmp_path, isolated, monkeypatch, server, tiny):  # noqa: F811
    return serve_tiny_catalogue(tmp_path, monkeypatch, server, tiny, "tiny licence", tofu={"file_name": "tofu.pth", "backend": "other"})


def test_list_json_and_text(catalogue, capsys):
    code, out, _ = run(["weights", "list", "--json"], capsys)
    rows = {row["id"]: row for row in json.loads(out)}
    assert code == 0 and set(rows) == {"tiny", "tofu"}
    assert rows["tiny"]["status"] == "missing" and rows["tiny"]["license"] == "tiny licence"
    assert rows["tiny"]["size"] == len(catalogue[0]) and rows["tiny"]["sha256"] == catalogue[1]
    assert rows["tofu"]["hash_published"] is False and rows["tofu"]["backend"] == "other"
    assert rows["tiny"]["plugin"] == rows["tofu"]["plugin"] == "catalogue override"
    assert rows["tofu"]["unverified"] == ["key layout"] and rows["tiny"]["unverified"] == ["key layout", "download URL"]
    code, out, _ = run(["weights", "list"], capsys)
    assert code == 0 and "ID" in out and "PLUGIN" in out and "UNVERIFIED" in out and "tiny licence" in out
    line = next(line for line in out.splitlines() if line.startswith("tiny "))
    assert "missing" in line and "catalogue override" in line and "published" in line
    assert "key layout, download URL" in line


def test_download_then_verify_and_path(catalogue, isolated, capsys):  # noqa: F811
    code, out, err = run(["weights", "download", "tiny"], capsys)
    assert code == 0, err
    assert "tiny licence" in out and "ok" in out
    code, out, _ = run(["weights", "path", "tiny"], capsys)
    assert code == 0 and out.strip() == str(isolated / "tiny" / "tiny.pth")
    code, out, _ = run(["weights", "verify", "tiny"], capsys)
    assert code == 0 and "matches the published hash" in out
    (isolated / "tiny" / "tiny.pth").write_bytes(b"x" * len(catalogue[0]))
    code, out, _ = run(["weights", "verify"], capsys)
    assert code == 1 and "tiny: CORRUPT" in out and catalogue[1] in out
    code, out, _ = run(["weights", "list", "--json"], capsys)
    assert {r["id"]: r["status"] for r in json.loads(out)}["tiny"] == "corrupt"


def test_download_offline_fails_clearly(catalogue, isolated, server, capsys):  # noqa: F811
    code, _, err = run(["weights", "download", "tiny", "--offline"], capsys)
    assert code == 1 and "offline mode" in err
    weights.set_offline(None)
    code, _, err = run(["--offline", "weights", "download", "tiny"], capsys)
    assert code == 1 and "offline mode" in err
    assert server.hits == [] and leftovers(isolated) == []


@pytest.fixture
def backends_using_tiny(monkeypatch):
    """The installed backends are one that needs 'tiny' (nothing uses 'tofu')."""
    from napari_faceedit import registry
    from napari_faceedit.backend import Backend
    from napari_faceedit.hookspecs import hookimpl
    from napari_faceedit.tasks import Task

    class NeedsTiny(Backend):
        name = "needs-tiny"
        tasks = frozenset({Task.RESTORE})
        weights = ("tiny",)

    class Plugin:
        @staticmethod
        @hookimpl
        def faceedit_backends():
            return [NeedsTiny]

    installed = registry.BackendRegistry(entry_point_group=None)
    installed.register(Plugin, "tiny-plugin")
    monkeypatch.setattr(registry, "_REGISTRY", installed)
    return installed


def test_download_all_fetches_only_what_installed_backends_use(catalogue, isolated, server, capsys,
                                                              backends_using_tiny):
    code, out, err = run(["weights", "download", "all"], capsys)
    assert code == 0, err
    assert "tiny: ok" in out and "no installed backend uses them" in out and "tofu" in out
    assert server.hits == ["/tiny.pth"] and not (isolated / "tofu").exists()


def test_import_good_and_bad(catalogue, tmp_path, isolated, capsys):  # noqa: F811
    data, digest, source = catalogue
    bad = tmp_path / "bad.pth"
    bad.write_bytes(data[:-1] + b"#")
    code, _, err = run(["weights", "import", "tiny", str(bad)], capsys)
    assert code == 1
    assert f"expected sha256: {digest}" in err and f"actual sha256: {sha(bad.read_bytes())}" in err
    assert not (isolated / "tiny").exists()
    code, out, _ = run(["weights", "import", "tiny", str(source), "--link"], capsys)
    assert code == 0 and "linked" in out and (isolated / "tiny" / "tiny.pth").is_symlink()


def test_import_pins_and_unpin(catalogue, isolated, capsys):  # noqa: F811
    data, digest, source = catalogue
    code, out, _ = run(["weights", "import", "tofu", str(source)], capsys)
    assert code == 0 and f"pinned sha256 {digest}" in out
    code, out, _ = run(["weights", "verify", "tofu"], capsys)
    assert code == 0 and "matches the pinned hash" in out
    code, out, _ = run(["weights", "unpin", "tofu"], capsys)
    assert code == 0 and "forgotten" in out and weights.pinned_sha256("tofu") is None


def test_path_errors_and_locations(catalogue, isolated, capsys):  # noqa: F811
    code, _, err = run(["weights", "path", "tiny"], capsys)
    assert code == 1 and "faceedit weights download tiny" in err
    code, _, err = run(["weights", "download", "nope"], capsys)
    assert code == 2 and "unknown weights id 'nope'" in err
    code, out, _ = run(["weights", "path"], capsys)
    assert code == 0 and f"cache_dir: {isolated}" in out
