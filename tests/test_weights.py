"""Weights manager: catalogue, cache, download (pooch) and import verification, trust on first use,
safe loading.

No internet: files are served by a local http.server on 127.0.0.1 or through file:// URLs, and
the "checkpoints" are small real torch state dicts described by a temporary catalogue (the
override that replaces the plugins' catalogues), whose builders make ``TinyNet``.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from napari_faceedit import weights

ENV_VARS = (weights.ENV_CACHE_DIR, weights.ENV_WEIGHTS_DIR, weights.ENV_OFFLINE, weights.ENV_CATALOGUE)


# -- helpers shared with test_weights_cli.py / test_weights_dialog.py ---------------------------------
class TinyNet(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.norm = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 2)


def state_bytes(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_catalogue(target: Path, entries: dict[str, dict]) -> Path:
    lines = []
    for entry_id, fields in entries.items():
        record = {"backend": "tiny", "license": "test licence: research only", "paper": "none"}
        if fields.get("hash_published"):
            record["hash_source"] = "the test"
        record.update(fields)
        lines.append(f"[{entry_id}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in record.items()]
        lines.append("")
    target.write_text("\n".join(lines), encoding="utf-8")
    return target


def leftovers(cache: Path) -> list[str]:
    """Temporary or half-written files anywhere in the cache."""
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.name.endswith(".part"))


class Server:
    """A tiny HTTP server on 127.0.0.1 serving ``routes[path] = (status, headers, body)``."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.hits: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                owner.hits.append(self.path)
                status, headers, body = owner.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                headers = {"Content-Length": str(len(body)), "Content-Type": "application/octet-stream", **headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{route}"

    def serve(self, route: str, body: bytes, status: int = 200, **headers) -> str:
        self.routes[route] = (status, {k.replace("_", "-"): v for k, v in headers.items()}, body)
        return self.url(route)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A fresh cache in tmp_path, no env overrides, settings reset before and after."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    weights.reset_settings()
    cache = tmp_path / "cache"
    monkeypatch.setenv(weights.ENV_CACHE_DIR, str(cache))
    yield cache
    weights.reset_settings()


@pytest.fixture
def server():
    running = Server()
    yield running
    running.close()


@pytest.fixture
def tiny(tmp_path):
    """A real state dict on disk: (model, bytes, sha256, file path)."""
    torch.manual_seed(0)
    model = TinyNet()
    data = state_bytes(model.state_dict())
    source = tmp_path / "tiny.pth"
    source.write_bytes(data)
    return model, data, sha(data), source


def tiny_builder(config: dict) -> TinyNet:
    return TinyNet(**config)


def use_catalogue(tmp_path, monkeypatch, entries, builders: dict | None = None) -> Path:
    """``entries`` as the only catalogue; every entry's network is ``TinyNet`` unless ``builders`` says."""
    catalogue = write_catalogue(tmp_path / "catalogue.toml", entries)
    weights.set_catalogue_override(catalogue, {i: tiny_builder for i in entries} if builders is None else builders)
    return catalogue


def serve_tiny_catalogue(tmp_path, monkeypatch, server, tiny, license: str, **more_entries):
    """A catalogue whose entry 'tiny' (published hash, given licence) downloads from the local server."""
    _, data, digest, source = tiny
    url = server.serve("/tiny.pth", data)
    use_catalogue(tmp_path, monkeypatch, {
        "tiny": {"file_name": "tiny.pth", "urls": [url], "sha256": digest, "hash_published": True,
                 "size": len(data), "license": license},
        **more_entries,
    })
    return data, digest, source


# -- the built-in plugins' catalogues ------------------------------------------------------------------
REQUIRED = {"stargan-celeba-128": "stargan", "stargan-celeba-256": "stargan", "gpen-bfr-256": "gpen",
            "gpen-bfr-512": "gpen", "gpen-bfr-1024": "gpen", "bisenet-79999": "parsing", "clip-vit-b32": "tedigan",
            "tedigan-ffhq256-generator": "tedigan", "tedigan-ffhq256-encoder": "tedigan"}


def test_builtin_plugins_own_their_catalogues(isolated):
    catalogue = weights.load_catalogue()
    for weights_id, plugin in REQUIRED.items():
        assert catalogue[weights_id].plugin == plugin, weights_id
    masks = {i: e for i, e in catalogue.items() if i.startswith("maskguided-")}
    assert len(masks) == 17 and {e.plugin for e in masks.values()} == {"maskguided"}
    stargan = catalogue["stargan-celeba-128"]
    assert stargan.file_name == "200000-G.ckpt" and stargan.approx_size == 33_764_594 and stargan.size is None
    assert stargan.config == {"conv_dim": 64, "c_dim": 5, "repeat_num": 6}
    assert "7e966qq0nlxwte4" in stargan.urls[0] and stargan.archive == "zip"
    clip = catalogue["clip-vit-b32"]
    assert clip.sha256 in clip.urls[0] and clip.format == "torchscript" and clip.file_name == "ViT-B-32.pt"
    assert catalogue["gpen-bfr-512"].config == {"size": 512, "style_dim": 512, "n_mlp": 8,
                                                "channel_multiplier": 2, "narrow": 1}
    assert catalogue["gpen-bfr-256"].config["narrow"] == 0.5
    assert catalogue["bisenet-79999"].file_name == "79999_iter.pth"
    assert catalogue["tedigan-ffhq256-generator"].file_name == "styleganinv_ffhq256_generator.pth"
    assert catalogue["tedigan-ffhq256-encoder"].file_name == "styleganinv_ffhq256_encoder.pth"
    for item in catalogue.values():
        assert item.license and item.paper and (item.config or item.format == "data"), item.id
        assert item.hash_published == bool(item.sha256), item.id
        # Nobody could fetch these offline: every URL says it is unverified.
        assert not item.url_verified and ("download URL" in item.unverified()) == bool(item.urls), item.id
        assert item.hash_published or item.approx_size, item.id  # the size check before trusting needs it
    # Only OpenAI publishes a hash (in its download path); the rest are checked, then pinned on first use.
    assert {i for i, e in catalogue.items() if e.hash_published} == {"clip-vit-b32"}
    assert {i for i, e in catalogue.items() if not e.keys_verified} == {"gpen-bfr-1024"}
    assert all(not e.urls for e in masks.values())


def test_every_builtin_entry_has_a_network_that_builds_from_its_config(isolated):
    for weights_id, item in weights.load_catalogue().items():
        if item.format == "data":  # not a network's weights: the plugin checks the file itself
            assert weights.checker(weights_id) is not None, weights_id
            continue
        build = weights.builder(weights_id)
        assert build is not None, weights_id
        with torch.device("meta"):  # shapes only
            network = build(dict(item.config))
        assert len(network.state_dict()) > 0, weights_id


def test_builtin_bundled_models_live_in_their_plugins(isolated):
    for file_name, plugin in (("faceparse_compact.pt", "faceedit_parsing"), ("restore_compact.pt", "faceedit_gpen"),
                              ("celeba_attr_classifier.pt", "faceedit_stargan")):
        found = weights.bundled_path(file_name)
        assert found.is_file() and found.parent.name == "models" and found.parent.parent.name == plugin


def test_catalogue_rejects_bad_hash(tmp_path, isolated, monkeypatch):
    use_catalogue(tmp_path, monkeypatch, {"bad": {"file_name": "x.pth", "sha256": "abc", "hash_published": True}})
    with pytest.raises(weights.WeightsError, match="entry 'bad'.*64-digit"):
        weights.load_catalogue()


def test_catalogue_rejects_a_hash_the_authors_did_not_publish(tmp_path, isolated, monkeypatch):
    use_catalogue(tmp_path, monkeypatch, {"bad": {"file_name": "x.pth", "sha256": "0" * 64, "hash_published": False}})
    with pytest.raises(weights.CatalogueError, match="only hashes the authors publish"):
        weights.load_catalogue()
    use_catalogue(tmp_path, monkeypatch, {"bad": {"file_name": "x.pth", "sha256": "0" * 64, "hash_published": True,
                                                  "hash_source": ""}})
    with pytest.raises(weights.CatalogueError, match="needs 'hash_source'"):
        weights.load_catalogue()


def test_unknown_id_is_a_clear_error(isolated):
    with pytest.raises(weights.UnknownWeightsError, match="unknown weights id 'nope'.*stargan-celeba-128"):
        weights.path("nope")
    assert weights.missing(["nope"]) == ["nope"]


# -- settings ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG_CACHE_HOME is a Linux convention")
def test_default_cache_follows_xdg(tmp_path, isolated, monkeypatch):
    monkeypatch.delenv(weights.ENV_CACHE_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "napari-faceedit" / "weights"


def test_env_and_setting_overrides(tmp_path, isolated, monkeypatch):
    assert weights.cache_dir() == isolated
    weights.set_cache_dir(tmp_path / "elsewhere")
    assert weights.cache_dir() == tmp_path / "elsewhere"  # the setting beats the environment
    weights.set_cache_dir(None)
    assert weights.cache_dir() == isolated
    assert weights.weights_dir() is None
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(tmp_path / "mine"))
    assert weights.weights_dir() == tmp_path / "mine"
    assert not weights.is_offline()
    monkeypatch.setenv(weights.ENV_OFFLINE, "1")
    assert weights.is_offline()
    weights.set_offline(False)
    assert not weights.is_offline()


# -- download ------------------------------------------------------------------------------------------
def test_good_download_over_http(tmp_path, isolated, monkeypatch, server, tiny):
    model, data, digest, _ = tiny
    url = server.serve("/tiny.pth", data)
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "urls": [url], "sha256": digest,
                                                  "hash_published": True, "size": len(data)}})
    assert weights.status("tiny") == weights.MISSING
    calls = []
    result = weights.download("tiny", progress=lambda done, total: calls.append((done, total)))
    assert result.path == isolated / "tiny" / "tiny.pth" and result.sha256 == digest
    assert result.path.read_bytes() == data
    assert calls and calls[-1] == (len(data), len(data))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert weights.status("tiny") == weights.PRESENT and weights.missing(["tiny"]) == []
    assert weights.path("tiny") == result.path
    assert sorted(p.name for p in (isolated / "tiny").iterdir()) == ["tiny.pth"]
    again = weights.download("tiny")
    assert again.already_present and server.hits == ["/tiny.pth"]


def test_good_download_from_file_url(tmp_path, isolated, monkeypatch, tiny):
    _, data, digest, source = tiny
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "urls": [source.as_uri()],
                                                  "sha256": digest, "hash_published": True}})
    assert weights.download("tiny").path.read_bytes() == data


def test_truncated_download_is_deleted(tmp_path, isolated, monkeypatch, server, tiny):
    _, data, digest, _ = tiny
    url = server.serve("/short.pth", data[: len(data) // 2])
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "urls": [url], "sha256": digest,
                                                  "hash_published": True, "size": len(data)}})
    with pytest.raises(weights.DownloadError) as caught:
        weights.download("tiny")
    message = str(caught.value)
    assert url in message and "size mismatch" in message
    assert f"expected {len(data)} bytes, got {len(data) // 2}" in message
    assert not (isolated / "tiny").exists() and leftovers(isolated) == []
    assert weights.status("tiny") == weights.MISSING


def test_connection_closed_early_is_an_error(tmp_path, isolated, monkeypatch, server, tiny):
    _, data, digest, _ = tiny
    url = server.serve("/cut.pth", data[:100], Content_Length=str(len(data)))
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "urls": [url], "sha256": digest,
                                                  "hash_published": True}})
    with pytest.raises(weights.DownloadError, match=rf"(?s){url}.*stopped after 100 of {len(data)} bytes"):
        weights.download("tiny")
    assert not (isolated / "tiny").exists() and leftovers(isolated) == []


def test_tampered_download_names_url_and_both_hashes(tmp_path, isolated, monkeypatch, server, tiny):
    _, data, digest, _ = tiny
    tampered = bytearray(data)
    tampered[-10] ^= 0xFF
    url = server.serve("/tampered.pth", bytes(tampered))
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "urls": [url], "sha256": digest,
                                                  "hash_published": True, "size": len(data)}})
    with pytest.raises(weights.DownloadError) as caught:
        weights.download("tiny")
    message = str(caught.value)
    assert url in message and f"expected {digest}" in message and f"got {sha(bytes(tampered))}" in message
    (attempt_url, attempt_error), = caught.value.attempts
    assert attempt_url == url and isinstance(attempt_error, weights.VerificationError)
    assert attempt_error.actual_sha256 == sha(bytes(tampered))
    assert not (isolated / "tiny").exists() and leftovers(isolated) == []


def test_urls_are_tried_in_order(tmp_path, isolated, monkeypatch, server, tiny):
    _, data, digest, _ = tiny
    good = server.serve("/good.pth", data)
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "sha256": digest, "hash_published": True,
                                                  "urls": [server.url("/gone.pth"), good]}})
    assert weights.download("tiny").path.read_bytes() == data
    assert server.hits == ["/gone.pth", "/good.pth"]


def test_all_urls_failing_lists_each(tmp_path, isolated, monkeypatch, server):
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "page": "https://example.org/page",
                                                  "urls": [server.url("/a"), server.url("/b")]}})
    with pytest.raises(weights.DownloadError, match=r"(?s)2 URL\(s\).*/a failed: HTTP 404.*/b failed: HTTP 404"):
        weights.download("tiny")
    assert leftovers(isolated) == [] and not (isolated / "tiny").exists()


def test_web_page_instead_of_file(tmp_path, isolated, monkeypatch, server):
    url = server.serve("/drive", b"<!DOCTYPE html><html>virus scan warning</html>", Content_Type="text/html")
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "urls": [url],
                                                  "page": "https://example.org/page"}})
    with pytest.raises(weights.DownloadError, match="returned a web page.*faceedit weights import tiny PATH"):
        weights.download("tiny")
    assert leftovers(isolated) == [] and not (isolated / "tiny").exists()
    assert not weights.pins_file().exists()  # a web page must never be pinned


def test_cancelled_download_leaves_nothing(tmp_path, isolated, monkeypatch, server):
    blob = os.urandom(3 * (1 << 20))
    url = server.serve("/big.bin", blob)
    use_catalogue(tmp_path, monkeypatch, {"big": {"file_name": "big.bin", "urls": [url], "sha256": sha(blob),
                                                 "hash_published": True}})
    seen = []
    with pytest.raises(weights.DownloadCancelled):
        weights.download("big", progress=lambda d, t: seen.append(d), cancelled=lambda: bool(seen))
    assert seen and seen[-1] < len(blob)
    assert leftovers(isolated) == [] and not (isolated / "big").exists()


def test_zip_archive_member_is_extracted(tmp_path, isolated, monkeypatch, server, tiny):
    _, data, digest, _ = tiny
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("200000-D.ckpt", b"discriminator")
        bundle.writestr("200000-G.ckpt", data)
    url = server.serve("/bundle.zip?dl=1", archive.getvalue())
    use_catalogue(tmp_path, monkeypatch, {"gen": {"file_name": "200000-G.ckpt", "urls": [url], "archive": "zip",
                                                 "archive_member": "200000-G.ckpt", "sha256": digest,
                                                 "hash_published": True, "size": len(data)}})
    result = weights.download("gen")
    assert result.path.read_bytes() == data
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["200000-G.ckpt"]


def test_offline_mode_never_touches_the_network(tmp_path, isolated, monkeypatch, server, tiny):
    _, data, digest, _ = tiny
    url = server.serve("/tiny.pth", data)
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "urls": [url], "sha256": digest,
                                                  "hash_published": True}})
    monkeypatch.setenv(weights.ENV_OFFLINE, "1")
    with pytest.raises(weights.OfflineError, match="offline mode.*faceedit weights import tiny PATH"):
        weights.download("tiny")
    monkeypatch.delenv(weights.ENV_OFFLINE)
    weights.set_offline(True)
    with pytest.raises(weights.OfflineError):
        weights.download("tiny")
    assert server.hits == [] and leftovers(isolated) == [] and not (isolated / "tiny").exists()


def test_entry_without_urls_explains_manual_download(tmp_path, isolated, monkeypatch):
    use_catalogue(tmp_path, monkeypatch, {"manual": {"file_name": "m.pth", "page": "https://example.org/drive"}})
    with pytest.raises(weights.DownloadError, match="example.org/drive.*faceedit weights import manual PATH"):
        weights.download("manual")
    with pytest.raises(weights.WeightsMissingError, match="faceedit weights import manual PATH.*example.org/drive"):
        weights.path("manual")


# -- import and trust on first use ----------------------------------------------------------------------
def test_import_good_file_copies(tmp_path, isolated, monkeypatch, tiny):
    _, data, digest, source = tiny
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "sha256": digest, "hash_published": True}})
    result = weights.import_file("tiny", source)
    assert result.path == isolated / "tiny" / "tiny.pth" and not result.path.is_symlink()
    assert result.path.read_bytes() == data and source.read_bytes() == data and not result.pinned_now
    assert weights.status("tiny") == weights.PRESENT


def test_import_link(tmp_path, isolated, monkeypatch, tiny):
    _, data, digest, source = tiny
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "sha256": digest, "hash_published": True}})
    result = weights.import_file("tiny", source, link=True)
    assert result.path.is_symlink() and result.path.resolve() == source.resolve()
    assert weights.path("tiny") == result.path and leftovers(isolated) == []


def test_import_bad_file_is_refused(tmp_path, isolated, monkeypatch, tiny):
    _, data, digest, _ = tiny
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(data[:-1] + b"x")
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "sha256": digest, "hash_published": True}})
    with pytest.raises(weights.VerificationError) as caught:
        weights.import_file("tiny", wrong)
    assert str(wrong) in str(caught.value) and digest in str(caught.value) and sha(wrong.read_bytes()) in str(caught.value)
    assert caught.value.expected_sha256 == digest and caught.value.actual_sha256 == sha(wrong.read_bytes())
    assert leftovers(isolated) == [] and not (isolated / "tiny").exists()
    with pytest.raises(weights.VerificationError):
        weights.import_file("tiny", wrong, link=True)
    assert not (isolated / "tiny").exists()


def test_trust_on_first_use_pins_then_refuses_other_files(tmp_path, isolated, monkeypatch, tiny):
    _, data, digest, source = tiny
    use_catalogue(tmp_path, monkeypatch, {"tofu": {"file_name": "tofu.pth"}})
    assert weights.expected_hash("tofu") == ("", "")
    first = weights.import_file("tofu", source)
    assert first.pinned_now and "pinned sha256 " + digest in first.message and "trust on first use" in first.message
    pins = json.loads((isolated / weights.PINS_FILE).read_text())
    assert pins["tofu"]["sha256"] == digest and pins["tofu"]["size"] == len(data)
    assert weights.expected_hash("tofu") == (digest, "pinned")
    other = tmp_path / "other.pth"
    other.write_bytes(data + b"extra")
    with pytest.raises(weights.VerificationError, match="(?s)size mismatch"):
        weights.import_file("tofu", other)
    same_size = tmp_path / "same_size.pth"  # another TinyNet: same keys, shapes and size, other values
    same_size.write_bytes(state_bytes(_fresh(seed=5).state_dict()))
    assert len(same_size.read_bytes()) == len(data)
    with pytest.raises(weights.VerificationError, match=f"expected {digest} \\(pinned.*unpin tofu"):
        weights.import_file("tofu", same_size)
    assert weights.path("tofu").read_bytes() == data  # the pinned file was left alone
    assert weights.unpin("tofu") and weights.expected_hash("tofu") == ("", "")
    assert weights.import_file("tofu", same_size).pinned_now


def test_download_pins_when_no_hash_is_published(tmp_path, isolated, monkeypatch, server, tiny):
    _, data, digest, _ = tiny
    url = server.serve("/tofu.pth", data)
    use_catalogue(tmp_path, monkeypatch, {"tofu": {"file_name": "tofu.pth", "urls": [url]}})
    result = weights.download("tofu")
    assert result.pinned_now and url in result.message and weights.pinned_sha256("tofu") == digest
    server.serve("/tofu.pth", data[::-1])  # upstream changes: the pin now refuses it
    with pytest.raises(weights.DownloadError, match=f"expected {digest}"):
        weights.download("tofu", force=True)
    assert weights.path("tofu").read_bytes() == data and leftovers(isolated) == []


# -- weights folder, corrupt files ---------------------------------------------------------------------
def test_weights_folder_is_searched_first(tmp_path, isolated, monkeypatch, tiny):
    _, data, digest, source = tiny
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "sha256": digest, "hash_published": True},
                                         "tofu": {"file_name": "tofu.pth"}})
    folder = tmp_path / "mine"
    (folder / "tofu").mkdir(parents=True)
    (folder / "tiny.pth").write_bytes(data)
    (folder / "tofu" / "tofu.pth").write_bytes(data)
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(folder))
    assert weights.path("tiny") == folder / "tiny.pth"
    # First use of a file without a published hash pins it.
    assert weights.pinned_sha256("tofu") is None
    assert weights.path("tofu") == folder / "tofu" / "tofu.pth"
    assert weights.pinned_sha256("tofu") == digest
    # A corrupt copy in the folder is skipped when the cache has a good one.
    weights.import_file("tiny", source)
    (folder / "tiny.pth").write_bytes(data[:-1] + b"?")
    assert weights.path("tiny") == isolated / "tiny" / "tiny.pth"
    weights.set_weights_dir(tmp_path / "empty")  # the setting beats the environment
    assert weights.status("tofu") == weights.MISSING


def test_corrupt_cache_file_is_reported_and_repaired(tmp_path, isolated, monkeypatch, server, tiny):
    _, data, digest, _ = tiny
    url = server.serve("/tiny.pth", data)
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "urls": [url], "sha256": digest,
                                                  "hash_published": True}})
    target = weights.download("tiny").path
    target.write_bytes(data[:-1] + b"!")
    found = weights.check("tiny")
    assert found.state == weights.CORRUPT and digest in found.message and sha(target.read_bytes()) in found.message
    assert weights.missing(["tiny"]) == ["tiny"]
    with pytest.raises(weights.VerificationError, match="sha256 mismatch"):
        weights.path("tiny")
    weights.download("tiny")
    assert weights.status("tiny") == weights.PRESENT and target.read_bytes() == data


def test_hash_is_cached_by_size_and_mtime(tmp_path, isolated):
    file = tmp_path / "blob.bin"
    file.write_bytes(b"a" * 1000)
    first = weights.sha256_file(file)
    stamp = file.stat()
    file.write_bytes(b"b" * 1000)
    os.utime(file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert weights.sha256_file(file) == first  # same (path, size, mtime): not re-read
    assert weights.sha256_file(file, use_cache=False) == sha(b"b" * 1000)
    file.write_bytes(b"c" * 1000)
    os.utime(file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    assert weights.sha256_file(file) == sha(b"c" * 1000)
    # The cache survives a new session (persisted next to the weights).
    weights.reset_settings()
    assert json.loads((isolated / weights.HASH_CACHE_FILE).read_text())[str(file.resolve())][2] == sha(b"c" * 1000)


# -- loading -------------------------------------------------------------------------------------------
def _fresh(width=4, seed=1):
    torch.manual_seed(seed)
    return TinyNet(width)


def _assert_same(model, reference):
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_load_state_dict_by_id(tmp_path, isolated, monkeypatch, tiny):
    model, data, digest, source = tiny
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "sha256": digest, "hash_published": True}})
    weights.import_file("tiny", source)
    target = _fresh()
    assert weights.load_state_dict("tiny", target) == digest
    _assert_same(target, model)


@pytest.mark.parametrize("wrap", ["state_dict", "params_ema", "model", "module_prefix", "legacy_format"])
def test_load_state_dict_unwraps(tmp_path, isolated, wrap, tiny):
    model = tiny[0]
    state = model.state_dict()
    if wrap == "module_prefix":
        payload = state_bytes({"module." + k: v for k, v in state.items()})
    elif wrap == "legacy_format":
        payload = state_bytes(state, legacy=True)
    elif wrap == "params_ema":
        decoy = {k: torch.zeros_like(v) for k, v in state.items()}
        payload = state_bytes({"params": decoy, "params_ema": state})
    else:
        payload = state_bytes({wrap: state, "epoch": 7})
    file = tmp_path / "wrapped.pth"
    file.write_bytes(payload)
    target = _fresh()
    assert weights.load_state_dict(file, target, expected_sha256=sha(payload)) == sha(payload)
    _assert_same(target, model)


@pytest.mark.parametrize("problem", ["extra", "missing", "shape"])
def test_mismatching_checkpoint_lists_keys_and_loads_nothing(tmp_path, isolated, problem, tiny):
    state = dict(tiny[0].state_dict())
    if problem == "extra":
        state["head.extra_weight"] = torch.ones(2)
        expected = ["1 unexpected key(s): head.extra_weight"]
    elif problem == "missing":
        del state["conv.weight"], state["head.bias"]
        expected = ["2 missing key(s): conv.weight, head.bias"]
    else:
        state = TinyNet(width=6).state_dict()
        expected = ["conv.weight (checkpoint [6,3,3,3] vs model [4,3,3,3])", "shape mismatch"]
    file = tmp_path / f"{problem}.pth"
    file.write_bytes(state_bytes(state))
    target = _fresh()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(weights.StateDictMismatchError) as caught:
        weights.load_state_dict(file, target)
    for fragment in expected:
        assert fragment in str(caught.value)
    assert "Nothing was loaded" in str(caught.value)
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_mismatch_message_is_limited_to_the_first_keys(tmp_path, isolated):
    big = nn.Sequential(*[nn.Linear(2, 2) for _ in range(8)])
    file = tmp_path / "other.pth"
    file.write_bytes(state_bytes(big.state_dict()))
    with pytest.raises(weights.StateDictMismatchError, match=r"16 unexpected key\(s\): 0.weight.*and 11 more"):
        weights.load_state_dict(file, _fresh())


def test_wrong_expected_hash_refuses_to_load(tmp_path, isolated, tiny):
    _, data, digest, source = tiny
    target = _fresh()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(weights.VerificationError, match=f"expected {'0' * 64}, got {digest}"):
        weights.load_state_dict(source, target, expected_sha256="0" * 64)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_catalogue_id_file_tampered_after_import_is_not_loaded(tmp_path, isolated, monkeypatch, tiny):
    _, data, digest, source = tiny
    use_catalogue(tmp_path, monkeypatch, {"tiny": {"file_name": "tiny.pth", "sha256": digest, "hash_published": True}})
    target_file = weights.import_file("tiny", source).path
    tampered = state_bytes(_fresh(seed=5).state_dict())
    assert len(tampered) == len(data)
    target_file.write_bytes(tampered)
    with pytest.raises(weights.VerificationError, match=f"expected {digest}"):
        weights.load_state_dict("tiny", _fresh())


def test_tolerated_keys(tmp_path, isolated, tiny):
    state = dict(tiny[0].state_dict())
    del state["norm.num_batches_tracked"]  # old checkpoints predate this buffer
    state["norm.running_mean"] = torch.full((4,), 7.0)
    file = tmp_path / "old.pth"
    file.write_bytes(state_bytes(state))
    target = _fresh()
    weights.load_state_dict(file, target, keep_from_model=["norm.running_*"])
    assert torch.equal(target.norm.running_mean, torch.zeros(4))  # the model's own value was kept
    assert torch.equal(target.conv.weight, tiny[0].conv.weight)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/save are deprecated in torch >= 2.9
def test_torchscript_archive_needs_catalogue_permission(tmp_path, isolated, monkeypatch):
    torch.manual_seed(3)
    module = TinyNet()
    module.register_buffer("input_resolution", torch.tensor(224))
    scripted = torch.jit.script(module)
    file = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(file))
    digest = sha(file.read_bytes())
    with pytest.raises(weights.WeightsError, match="TorchScript archive"):
        weights.load_state_dict(file, _fresh())
    use_catalogue(tmp_path, monkeypatch, {"clip": {"file_name": "scripted.pt", "format": "torchscript",
                                                  "sha256": digest, "hash_published": True,
                                                  "drop_keys": ["input_resolution"]}})
    weights.import_file("clip", file)
    target = _fresh()
    assert weights.load_state_dict("clip", target) == digest
    assert torch.equal(target.head.weight, module.head.weight)


def test_backend_readiness_names_missing_corrupt_and_bundled_files(tmp_path, monkeypatch, isolated, server, tiny):
    from napari_faceedit.backend import Backend

    data, _, _ = serve_tiny_catalogue(tmp_path, monkeypatch, server, tiny, "research only")

    class NeedsTiny(Backend):
        name = "needs-tiny"
        weights = ("tiny",)

    class ShipsModel(Backend):
        name = "ships-model"
        bundled = ("faceparse_compact.pt",)

    class LostModel(Backend):
        name = "lost-model"
        bundled = ("no_such_model.pt",)

    ok, why = NeedsTiny.ready()
    assert not ok and "'tiny'" in why and "faceedit weights download tiny" in why and "missing" in why
    (isolated / "tiny").mkdir(parents=True)
    (isolated / "tiny" / "tiny.pth").write_bytes(data[:-10] + b"0123456789")  # same size, wrong bytes
    ok, why = NeedsTiny.ready()
    assert not ok and "corrupt" in why and "sha256 mismatch" in why and "--force" in why
    (isolated / "tiny" / "tiny.pth").write_bytes(data)
    assert NeedsTiny.ready() == (True, "ready")
    assert ShipsModel.ready() == (True, "ready")
    ok, why = LostModel.ready()
    assert not ok and "no_such_model.pt" in why and "reinstall" in why


def test_bundled_models_load_strictly_and_a_missing_one_is_named(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    fresh = tmp_path / "tiny_export.pt"
    torch.save(model.state_dict(), fresh)
    other = TinyNet()
    assert weights.load_bundled("tiny_export.pt", other, fresh) == sha(fresh.read_bytes())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    with pytest.raises(weights.WeightsMissingError, match="embedded model 'no_such_model.pt' is missing.*reinstall"):
        weights.load_bundled("no_such_model.pt", TinyNet())
