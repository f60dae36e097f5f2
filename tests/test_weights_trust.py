"""No file is trusted before it is checked: a file without a published hash must hold exactly its
network's keys and shapes (read weights-only) and be near the catalogue's size before it is pinned
or counts as present; broken pins / hash-cache files are set aside and rebuilt; a cache folder that
cannot be used is one line, never a traceback."""
from __future__ import annotations

import gzip
import json
import os
import tempfile

import pytest
import torch

from napari_faceedit import weights
from napari_faceedit.backend import Backend
from napari_faceedit.tasks import Task
from test_weights import (TinyNet, isolated, leftovers, server, sha, state_bytes, tiny,  # noqa: F401 - fixtures
                          use_catalogue)
from test_weights_cli import run


class NeedsTofu(Backend):
    name = "needs-tofu"
    tasks = frozenset({Task.RESTORE})
    weights = ("tofu",)


@pytest.fixture
def tofu(tmp_path, isolated, monkeypatch, tiny):  # noqa: F811
    """An entry without a published hash whose network is TinyNet; returns the good file's bytes."""
    use_catalogue(tmp_path, monkeypatch, {"tofu": {"file_name": "tofu.pth"}})
    return tiny[1]


def random_file(tmp_path, size: int = 1024):
    path = tmp_path / "random.pth"
    path.write_bytes(os.urandom(size))
    return path


def nothing_kept(cache) -> bool:
    return not (cache / "tofu").exists() and not (cache / weights.PINS_FILE).exists() and leftovers(cache) == []


# -- import and download ------------------------------------------------------------------------------
def test_random_bytes_are_refused_and_nothing_is_pinned(tmp_path, isolated, tofu, capsys):  # noqa: F811
    bad = random_file(tmp_path)
    with pytest.raises(weights.UntrustedFileError, match="not a weights-only PyTorch checkpoint.*not pinned or used"):
        weights.import_file("tofu", bad)
    assert nothing_kept(isolated)
    code, _, err = run(["weights", "import", "tofu", str(bad)], capsys)
    assert code == 1 and "not pinned or used" in err and "Traceback" not in err
    assert nothing_kept(isolated)
    assert not NeedsTofu.ready()[0]


def test_another_network_is_refused_with_the_mismatch_listing(tmp_path, isolated, tofu):  # noqa: F811
    other = tmp_path / "other.pth"
    other.write_bytes(state_bytes(TinyNet(width=6).state_dict()))
    with pytest.raises(weights.UntrustedFileError) as caught:
        weights.import_file("tofu", other)
    message = str(caught.value)
    assert "shape mismatch" in message and "conv.weight (checkpoint [6,3,3,3] vs model [4,3,3,3])" in message
    assert "TinyNet" in message and nothing_kept(isolated)
    extra = tmp_path / "extra.pth"
    extra.write_bytes(state_bytes({**TinyNet().state_dict(), "head.extra": torch.ones(1)}))
    with pytest.raises(weights.UntrustedFileError, match=r"1 unexpected key\(s\): head.extra"):
        weights.import_file("tofu", extra, link=True)
    assert nothing_kept(isolated)


def test_a_download_that_fails_the_check_is_deleted(tmp_path, isolated, monkeypatch, server):  # noqa: F811
    url = server.serve("/tofu.pth", state_bytes(TinyNet(width=6).state_dict()))
    use_catalogue(tmp_path, monkeypatch, {"tofu": {"file_name": "tofu.pth", "urls": [url]}})
    with pytest.raises(weights.DownloadError, match="(?s)shape mismatch.*not pinned or used"):
        weights.download("tofu")
    assert nothing_kept(isolated)


def test_size_far_from_the_catalogue_estimate_is_refused(tmp_path, isolated, monkeypatch, tiny):  # noqa: F811
    data, source = tiny[1], tiny[3]
    use_catalogue(tmp_path, monkeypatch, {"tofu": {"file_name": "tofu.pth", "approx_size": 3 * len(data)}})
    with pytest.raises(weights.UntrustedFileError, match=r"expects about .* \(within 10%\)"):
        weights.import_file("tofu", source)
    assert nothing_kept(isolated)
    near = int(len(data) * (1 + weights.SIZE_TOLERANCE / 2))
    use_catalogue(tmp_path, monkeypatch, {"tofu": {"file_name": "tofu.pth", "approx_size": near}})
    assert weights.import_file("tofu", source).pinned_now


def test_an_entry_without_a_network_cannot_be_trusted(tmp_path, isolated, monkeypatch, tiny):  # noqa: F811
    use_catalogue(tmp_path, monkeypatch, {"tofu": {"file_name": "tofu.pth"}}, builders={})
    with pytest.raises(weights.UntrustedFileError, match="provides no network"):
        weights.import_file("tofu", tiny[3])
    assert nothing_kept(isolated)


def test_a_good_file_is_pinned_and_loads(tmp_path, isolated, tofu, tiny):  # noqa: F811
    result = weights.import_file("tofu", tiny[3])
    assert result.pinned_now and weights.pinned_hashes()["tofu"]["trust_checked"] is True
    assert NeedsTofu.ready() == (True, "ready")
    model = TinyNet()
    assert weights.load_state_dict("tofu", model) == tiny[2]


def test_a_data_file_is_checked_by_its_plugin_s_checker(tmp_path, isolated, monkeypatch):  # noqa: F811
    def word_list(path, config):
        if path.read_text(errors="replace").splitlines()[:1] != ["#words"]:
            raise ValueError("not a word list")

    catalogue = use_catalogue(tmp_path, monkeypatch, {"words": {"file_name": "words.txt", "format": "data"}})
    weights.set_catalogue_override(catalogue, checkers={"words": word_list})
    bad, good = tmp_path / "bad.txt", tmp_path / "good.txt"
    bad.write_text("hello")
    good.write_text("#words\nhello\n")
    with pytest.raises(weights.UntrustedFileError, match="check: ValueError: not a word list"):
        weights.import_file("words", bad)
    assert weights.import_file("words", good).pinned_now
    with pytest.raises(weights.WeightsError, match="data file, not a checkpoint"):
        weights.load_state_dict("words", TinyNet())


def test_the_clip_vocabulary_is_checked_before_it_is_trusted(tmp_path, isolated):  # noqa: F811
    from conftest import require_shared

    vocab = require_shared("parity", "clip_vit_b32", "bpe_simple_vocab_16e6.txt.gz")
    fake = tmp_path / "bpe_simple_vocab_16e6.txt.gz"  # the right size, not the merges
    with gzip.open(fake, "wt", compresslevel=0) as handle:
        handle.write("#version\n" + "a b\n" * 10 + "x" * 1_300_000)
    with pytest.raises(weights.UntrustedFileError, match="plugin 'tedigan'.*merge lines"):
        weights.import_file("clip-bpe-vocab", fake)
    assert weights.import_file("clip-bpe-vocab", vocab).pinned_now


# -- files found in place -----------------------------------------------------------------------------
def test_an_unchecked_file_in_the_weights_folder_is_not_ready(tmp_path, isolated, tofu, capsys):  # noqa: F811
    folder = tmp_path / "mine" / "tofu"
    folder.mkdir(parents=True)
    (folder / "tofu.pth").write_bytes(os.urandom(1024))
    weights.set_weights_dir(tmp_path / "mine")
    found = weights.check("tofu")
    assert found.state == weights.CORRUPT and "not a weights-only PyTorch checkpoint" in found.message
    ok, why = NeedsTofu.ready()  # never raises
    assert not ok and "corrupt" in why and "not pinned or used" in why
    code, out, _ = run(["weights", "verify", "tofu"], capsys)
    assert code == 1 and "tofu: CORRUPT" in out
    with pytest.raises(weights.VerificationError, match="not pinned or used"):
        weights.path("tofu")
    assert weights.pinned_sha256("tofu") is None
    (folder / "tofu.pth").write_bytes(tofu)
    assert weights.check("tofu").state == weights.PRESENT and weights.pinned_sha256("tofu") is None
    assert weights.path("tofu") == folder / "tofu.pth" and weights.pinned_sha256("tofu") == sha(tofu)


def test_a_pin_from_an_older_version_is_checked_again(tmp_path, isolated, tofu):  # noqa: F811
    """Older versions pinned any file (1 KB of random bytes included): such a pin is not trusted."""
    junk = os.urandom(1024)
    (isolated / "tofu").mkdir(parents=True)
    (isolated / "tofu" / "tofu.pth").write_bytes(junk)
    pins = {"tofu": {"sha256": sha(junk), "size": len(junk), "file_name": "tofu.pth", "source": "old"}}
    (isolated / weights.PINS_FILE).write_text(json.dumps(pins))
    assert weights.check("tofu").state == weights.CORRUPT and not NeedsTofu.ready()[0]
    (isolated / "tofu" / "tofu.pth").write_bytes(tofu)
    pins["tofu"].update(sha256=sha(tofu), size=len(tofu))
    (isolated / weights.PINS_FILE).write_text(json.dumps(pins))
    assert NeedsTofu.ready() == (True, "ready")
    assert weights.pinned_hashes()["tofu"]["trust_checked"] is True  # checked once, recorded


# -- broken files in the cache ------------------------------------------------------------------------
@pytest.mark.parametrize("ledger", [weights.PINS_FILE, weights.HASH_CACHE_FILE])
def test_a_corrupt_ledger_is_set_aside_and_rebuilt(tmp_path, isolated, tofu, tiny, ledger, caplog):  # noqa: F811
    isolated.mkdir(parents=True)
    (isolated / ledger).write_text("{ this is not json")
    assert NeedsTofu.ready()[0] is False  # missing, and no exception
    assert weights.sha256_file(tiny[3]) == tiny[2]
    assert weights.import_file("tofu", tiny[3]).pinned_now
    aside = [p.name for p in isolated.iterdir() if p.name.startswith(f"{ledger}.corrupt-")]
    assert len(aside) == 1 and "cannot be read" in caplog.text and "moved aside" in caplog.text
    assert isinstance(json.loads((isolated / ledger).read_text()), dict)  # rebuilt
    assert NeedsTofu.ready() == (True, "ready")


def test_a_cache_folder_that_is_a_file_is_one_line(tmp_path, isolated, tofu, tiny, capsys):  # noqa: F811
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("I am a file")
    weights.set_cache_dir(not_a_folder)
    for argv in (["weights", "import", "tofu", str(tiny[3])], ["weights", "verify", "tofu"],
                 ["weights", "unpin", "tofu"]):
        code, out, err = run(argv, capsys)
        assert code == 2, (argv, out, err)
        assert len(err.strip().splitlines()) == 1 and "weights cache folder" in err and str(not_a_folder) in err
        assert "Traceback" not in err
    ok, why = NeedsTofu.ready()
    assert not ok and "weights cache folder" in why


def test_a_read_only_cache_folder_is_one_line(tmp_path, isolated, tofu, tiny, capsys, monkeypatch):  # noqa: F811
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(isolated))

    isolated.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "mkstemp", refused)  # root ignores chmod; refuse every new file instead
    code, _, err = run(["weights", "import", "tofu", str(tiny[3])], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "weights cache folder" in err and "Permission denied" in err and weights.ENV_CACHE_DIR in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_chmod_read_only_cache_folder_is_one_line(tmp_path, isolated, tofu, tiny, capsys):  # noqa: F811
    isolated.mkdir(parents=True)
    isolated.chmod(0o500)
    try:
        code, _, err = run(["weights", "import", "tofu", str(tiny[3])], capsys)
    finally:
        isolated.chmod(0o700)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "weights cache folder" in err


# -- pooch underneath ---------------------------------------------------------------------------------------
def test_downloads_go_through_pooch(tmp_path, isolated, monkeypatch, server, tiny):  # noqa: F811
    import pooch

    calls = []
    real = pooch.retrieve
    monkeypatch.setattr(pooch, "retrieve", lambda url, **kw: calls.append((url, kw["known_hash"])) or real(url, **kw))
    data, digest = tiny[1], tiny[2]
    url = server.serve("/tiny.pth", data)
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "urls": [url], "sha256": digest,
                                                   "hash_published": True}})
    assert weights.download("tiny").path.read_bytes() == data
    assert calls == [(url, f"sha256:{digest}")]  # pooch checks the published hash
