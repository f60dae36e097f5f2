"""`faceedit weights ...` commands, run through a parser built here (as napari_faceedit.cli does)."""
from __future__ import annotations

import argparse
import json

import pytest

from napari_faceedit import weights
from napari_faceedit.weights_cli import add_weights_commands, apply_offline
from test_weights import serve_tiny_registry, isolated, leftovers, server, sha, tiny, use_registry  # noqa: F401 - fixtures


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
def registry(tmp_path, isolated, monkeypatch, server, tiny):  # noqa: F811
    return serve_tiny_registry(tmp_path, monkeypatch, server, tiny, "tiny licence", tofu={"file_name": "tofu.pth", "backend": "other"})


def test_list_json_and_text(registry, capsys):
    code, out, _ = run(["weights", "list", "--json"], capsys)
    rows = {row["id"]: row for row in json.loads(out)}
    assert code == 0 and set(rows) == {"tiny", "tofu"}
    assert rows["tiny"]["status"] == "missing" and rows["tiny"]["license"] == "tiny licence"
    assert rows["tiny"]["size"] == len(registry[0]) and rows["tiny"]["sha256"] == registry[1]
    assert rows["tofu"]["hash_published"] is False and rows["tofu"]["backend"] == "other"
    code, out, _ = run(["weights", "list"], capsys)
    assert code == 0 and "ID" in out and "tiny licence" in out
    line = next(line for line in out.splitlines() if line.startswith("tiny "))
    assert "missing" in line and "tiny" in line


def test_download_then_verify_and_path(registry, isolated, capsys):  # noqa: F811
    code, out, err = run(["weights", "download", "tiny"], capsys)
    assert code == 0, err
    assert "tiny licence" in out and "ok" in out
    code, out, _ = run(["weights", "path", "tiny"], capsys)
    assert code == 0 and out.strip() == str(isolated / "tiny" / "tiny.pth")
    code, out, _ = run(["weights", "verify", "tiny"], capsys)
    assert code == 0 and "matches the published hash" in out
    (isolated / "tiny" / "tiny.pth").write_bytes(b"x" * len(registry[0]))
    code, out, _ = run(["weights", "verify"], capsys)
    assert code == 1 and "tiny: CORRUPT" in out and registry[1] in out
    code, out, _ = run(["weights", "list", "--json"], capsys)
    assert {r["id"]: r["status"] for r in json.loads(out)}["tiny"] == "corrupt"


def test_download_offline_fails_clearly(registry, isolated, server, capsys):  # noqa: F811
    code, _, err = run(["weights", "download", "tiny", "--offline"], capsys)
    assert code == 1 and "offline mode" in err
    weights.set_offline(None)
    code, _, err = run(["--offline", "weights", "download", "all"], capsys)
    assert code == 1 and "offline mode" in err
    assert server.hits == [] and leftovers(isolated) == []


def test_import_good_and_bad(registry, tmp_path, isolated, capsys):  # noqa: F811
    data, digest, source = registry
    bad = tmp_path / "bad.pth"
    bad.write_bytes(data[:-1] + b"#")
    code, _, err = run(["weights", "import", "tiny", str(bad)], capsys)
    assert code == 1
    assert f"expected sha256: {digest}" in err and f"actual sha256: {sha(bad.read_bytes())}" in err
    assert not (isolated / "tiny").exists()
    code, out, _ = run(["weights", "import", "tiny", str(source), "--link"], capsys)
    assert code == 0 and "linked" in out and (isolated / "tiny" / "tiny.pth").is_symlink()


def test_import_pins_and_unpin(registry, isolated, capsys):  # noqa: F811
    data, digest, source = registry
    code, out, _ = run(["weights", "import", "tofu", str(source)], capsys)
    assert code == 0 and f"pinned sha256 {digest}" in out
    code, out, _ = run(["weights", "verify", "tofu"], capsys)
    assert code == 0 and "matches the pinned hash" in out
    code, out, _ = run(["weights", "unpin", "tofu"], capsys)
    assert code == 0 and "forgotten" in out and weights.pinned_sha256("tofu") is None


def test_path_errors_and_locations(registry, isolated, capsys):  # noqa: F811
    code, _, err = run(["weights", "path", "tiny"], capsys)
    assert code == 1 and "faceedit weights download tiny" in err
    code, _, err = run(["weights", "download", "nope"], capsys)
    assert code == 2 and "unknown weights id 'nope'" in err
    code, out, _ = run(["weights", "path"], capsys)
    assert code == 0 and f"cache_dir: {isolated}" in out
