"""No path a user passes is ever unpickled: a crafted checkpoint that would create a marker file
when unpickled, passed to every command and function that accepts a checkpoint or weights path,
creates nothing and gives a clear error."""
from __future__ import annotations

import builtins
import io
import pickle

import pytest
import torch

from napari_faceedit import weights
from napari_faceedit.cli import main as faceedit
from test_weights import TinyNet, isolated, use_catalogue  # noqa: F401 - fixtures


class CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: the file appears if the pickle is ever run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.fixture(params=["torch.save", "raw pickle"])
def crafted(request, tmp_path):
    """(checkpoint path, marker path): a checkpoint-looking file whose pickle creates the marker."""
    marker = tmp_path / "MARKER"
    payload = {"model": TinyNet().state_dict(), "step": 3, "hook": CreatesMarker(marker)}
    path = tmp_path / "crafted.pth"
    if request.param == "torch.save":
        torch.save(payload, path)
    else:
        buffer = io.BytesIO()
        pickle.dump(payload, buffer, protocol=2)
        path.write_bytes(buffer.getvalue())
    # The payload is real: an unsafe load does create the marker.
    with open(path, "rb") as handle:
        torch.load(handle, weights_only=False) if request.param == "torch.save" else pickle.load(handle)
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_read_checkpoint_and_loaders_refuse_it(crafted, isolated):  # noqa: F811
    path, marker = crafted
    for call in (lambda: weights.read_checkpoint(path), lambda: weights.load_state_dict(path, TinyNet()),
                 lambda: weights.load_bundled("crafted.pth", TinyNet(), path)):
        with pytest.raises(weights.WeightsError, match="not a weights-only PyTorch checkpoint.*nothing in it was run"):
            call()
    assert not marker.exists()


def test_weights_import_refuses_it(crafted, isolated, tmp_path, monkeypatch, capsys):  # noqa: F811
    path, marker = crafted
    use_catalogue(tmp_path, monkeypatch, {"tofu": {"file_name": "tofu.pth"}})  # no published hash: read to check
    assert faceedit(["weights", "import", "tofu", str(path)]) == 1
    err = capsys.readouterr().err
    assert "not a weights-only PyTorch checkpoint" in err and "not pinned or used" in err
    weights.reset_settings()
    monkeypatch.setenv(weights.ENV_CACHE_DIR, str(isolated))
    for builtin_id in ("stargan-celeba-256", "bisenet-79999"):  # the plugins' own entries
        assert faceedit(["weights", "import", builtin_id, str(path)]) == 1
    assert not marker.exists() and weights.pinned_hashes() == {}


def _trainer_arguments(model: str, path, tmp_path) -> list[str]:
    """Each trainer's way to resume from a checkpoint, with ``path`` where it looks for one."""
    run = tmp_path / f"run-{model}"
    data = tmp_path / "no-data-needed"  # the checkpoint is read (and refused) before any data
    if model in ("parser", "completion", "maskguided"):  # OUT/checkpoint_last.pt
        run.mkdir()
        (run / "checkpoint_last.pt").write_bytes(path.read_bytes())
        if model == "completion":
            return ["--data-celeba", str(data), "--data-celebamask", str(data), "--out", str(run), "--resume"]
        return ["--data", str(data), "--out", str(run), "--resume"]
    if model == "stargan":  # the latest OUT/checkpoints/step_*.pt
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "step_00000002.pt").write_bytes(path.read_bytes())
        return ["--data", str(data), "--attributes", str(data / "list_attr_celeba.txt"), "--out", str(run),
                "--resume"]
    assert model == "restorer"
    return ["--data", str(data), "--checkpoint", str(path), "--resume"]


KNOWN_TRAINERS = ("parser", "stargan", "restorer", "completion", "maskguided")


def _registered_trainers() -> set[str]:
    from napari_faceedit.registry import get_registry

    names: set[str] = set()
    for impl in get_registry().plugin_manager.hook.faceedit_trainers.get_hookimpls():
        names.update(impl.function() or {})
    return names


def test_every_trainer_is_covered():
    assert _registered_trainers() <= set(KNOWN_TRAINERS), "add the new trainer's resume flags to this test"


@pytest.mark.parametrize("model", KNOWN_TRAINERS)
def test_trainers_refuse_to_resume_from_it(crafted, model, tmp_path, capsys):
    if model not in _registered_trainers():
        pytest.skip(f"no '{model}' trainer is installed")
    path, marker = crafted
    try:
        code = faceedit(["train", model, *_trainer_arguments(model, path, tmp_path)])
        message = capsys.readouterr().err
    except Exception as exc:  # noqa: BLE001 - a trainer may raise its own clear error instead of exiting 2
        code, message = 2, str(exc)
    assert code == 2 and "weights-only" in message and "Traceback" not in message
    assert not marker.exists()
