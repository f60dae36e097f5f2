"""Core: vocabulary, requests, registry isolation, runner, classic backends."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.color import rgb2lab

from napari_faceedit import vocab
from napari_faceedit.backend import Backend, RunCancelled
from napari_faceedit.registry import BackendRegistry
from napari_faceedit.runner import execute
from napari_faceedit.tasks import (
    CompleteRequest, EditAttributesRequest, EditTextRequest, ParseRequest, RestoreRequest, Result, Task,
)

from conftest import require_shared


# -- vocabulary ----------------------------------------------------------------------------------
def test_vocabulary_order_and_palette_match_the_official_table():
    table = require_shared("data", "celebamask_hq", "labels.csv").read_text().splitlines()[1:]
    for line, face_class in zip(table, vocab.FACE_CLASSES):
        index, name, r, g, b = line.split(",")
        assert (int(index), name, (int(r), int(g), int(b))) == (face_class.index, face_class.name, face_class.color)
    assert len(table) == vocab.N_CLASSES == 19


def test_bisenet_and_helen_mappings():
    bisenet = np.arange(19)
    ours = vocab.remap(bisenet, vocab.BISENET_TO_CELEBAMASK)
    assert [vocab.CLASS_NAMES[i] for i in ours] == list(vocab.BISENET_ORDER)
    assert np.array_equal(vocab.remap(ours, vocab.CELEBAMASK_TO_BISENET), bisenet)  # exact round trip
    helen = vocab.remap(np.arange(19), vocab.CELEBAMASK_TO_HELEN)
    assert vocab.HELEN_ORDER[helen[vocab.CLASS_INDEX["u_lip"]]] == "u_lip"
    assert vocab.HELEN_ORDER[helen[vocab.CLASS_INDEX["cloth"]]] == "background"
    # Helen's l_eye is on the image left: our r_eye (the subject's right).
    assert vocab.HELEN_ORDER[helen[vocab.CLASS_INDEX["r_eye"]]] == "l_eye"
    assert vocab.HELEN_ORDER[helen[vocab.CLASS_INDEX["l_ear"]]] == "background"
    # Helen -> ours -> Helen is the identity.
    assert np.array_equal(vocab.CELEBAMASK_TO_HELEN[vocab.HELEN_TO_CELEBAMASK], np.arange(11))
    with pytest.raises(ValueError, match="0..18"):
        vocab.remap(np.array([19]), vocab.PALETTE)


def test_flip_permutation_swaps_left_and_right():
    perm = vocab.FLIP_PERMUTATION
    for left, right in (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")):
        assert perm[vocab.CLASS_INDEX[left]] == vocab.CLASS_INDEX[right]
    assert np.array_equal(perm[perm], np.arange(19))


def test_attribute_vocabulary():
    assert len(vocab.CELEBA_ATTRIBUTES) == 40
    header = require_shared("data", "celeba", "attributes.csv").read_text().splitlines()[0].split(",")[1:]
    assert tuple(header) == vocab.CELEBA_ATTRIBUTES
    with pytest.raises(ValueError, match="unknown attribute"):
        vocab.check_attributes({"Blonde": 1}, ("Blond_Hair",), "x")


# -- requests ------------------------------------------------------------------------------------
def test_requests_validate_and_copy(portrait):
    request = RestoreRequest(image=portrait)
    assert request.image is not portrait and np.array_equal(request.image, portrait)
    assert RestoreRequest(image=portrait.astype(np.float32) / 255).image.dtype == np.uint8
    assert RestoreRequest(image=portrait[..., 0]).image.shape == portrait.shape  # grayscale -> RGB
    with pytest.raises(ValueError, match="shape"):
        RestoreRequest(image=np.zeros((4, 10, 10, 3)))
    with pytest.raises(ValueError, match="empty"):
        CompleteRequest(image=portrait, mask=np.zeros(portrait.shape[:2]))
    with pytest.raises(ValueError, match="whole image"):
        CompleteRequest(image=portrait, mask=np.ones(portrait.shape[:2]))
    with pytest.raises(ValueError, match="shape"):
        CompleteRequest(image=portrait, mask=np.ones((5, 5)))
    with pytest.raises(ValueError, match="text"):
        EditTextRequest(text="  ")
    with pytest.raises(ValueError, match="strength"):
        EditAttributesRequest(image=portrait, attributes={"Male": 1}, strength=2)


# -- registry ------------------------------------------------------------------------------------
def test_builtin_classic_backends_are_found_through_entry_points(fresh_registry):
    registry = fresh_registry()
    assert {"classic-complete", "classic-hair", "classic-restore"} <= set(registry.backends)
    assert registry.backend_plugin["classic-restore"] == "classic"
    assert registry.best_for(Task.COMPLETE).name == "completion-progressive"  # it beats classic-complete on val


def test_third_party_package_is_loaded_and_broken_one_is_isolated(third_party_plugins):
    registry = third_party_plugins
    assert "thirdparty-invert" in registry.backends
    assert "classic-restore" in registry.backends  # the others keep working
    broken = [f for f in registry.failures if f.plugin == "thirdparty-broken"]
    assert broken and broken[0].stage == "import" and "broken on purpose" in broken[0].error


def test_hook_errors_and_invalid_backends_are_recorded_not_raised():
    from napari_faceedit.hookspecs import hookimpl

    class NoTasks(Backend):
        name = "no-tasks"

    class Raising:
        @hookimpl
        def faceedit_backends(self):
            raise ZeroDivisionError("boom")

    class Invalid:
        @hookimpl
        def faceedit_backends(self):
            return [NoTasks, object]

    class Misspelt:
        @hookimpl
        def faceedit_backendz(self):
            return []

    registry = BackendRegistry(entry_point_group=None)
    for plugin, name in ((Raising(), "raising"), (Invalid(), "invalid"), (Misspelt(), "misspelt")):
        registry.register(plugin, name)
    stages = {(f.plugin, f.stage) for f in registry.failures}
    assert ("raising", "hook") in stages and ("invalid", "backend") in stages and ("misspelt", "register") in stages
    assert not registry.backends
    with pytest.raises(KeyError, match="no backend named"):
        registry.get("nope")
    with pytest.raises(LookupError, match="no ready backend"):
        registry.best_for(Task.RESTORE)


# -- runner --------------------------------------------------------------------------------------
class _Cancelling(Backend):
    name = "cancelling"
    tasks = frozenset({Task.RESTORE})

    def run(self, request, ctx):
        request.image[:] = 0  # a request is the backend's own copy: this must not reach the caller
        ctx.check()
        return Result(image=request.image)


def test_cancelled_run_returns_nothing_and_caller_data_is_untouched(portrait):
    before = portrait.copy()
    assert execute(_Cancelling, RestoreRequest(image=portrait), cancelled=lambda: True) is None
    assert np.array_equal(portrait, before)


def test_runner_fills_provenance_and_checks_task_and_device(portrait):
    from faceedit_classic.restore import ClassicRestoration

    result = execute(ClassicRestoration, RestoreRequest(image=portrait[:64, :64], seed=3))
    p = result.provenance
    assert (p.backend, p.task, p.seed, p.device) == ("classic-restore", "restore", 3, "cpu")
    assert p.wall_time_s > 0 and "NL-means" in p.notes
    with pytest.raises(ValueError, match="does not support the task"):
        execute(ClassicRestoration, ParseRequest(image=portrait))
    with pytest.raises(ValueError, match="cannot run on device"):
        execute(ClassicRestoration, RestoreRequest(image=portrait, device="cuda:0"))


# -- classic backends -----------------------------------------------------------------------------
def test_classic_completion_changes_only_the_hole_and_beats_a_flat_fill(portrait):
    from faceedit_classic.complete import ClassicCompletion

    hole = np.zeros(portrait.shape[:2], bool)
    hole[300:330, 60:90] = True  # small hole in a smooth area
    result = execute(ClassicCompletion, CompleteRequest(image=portrait, mask=hole))
    changed = np.any(result.image != portrait, axis=2)
    assert not changed[~hole].any()
    assert changed[hole].mean() > 0.5
    error = np.abs(result.image.astype(float) - portrait)[hole].mean()
    flat = np.abs(portrait[~hole].mean(axis=0) - portrait[hole].astype(float)).mean()
    assert error < 0.5 * flat


def test_classic_completion_mirrors_large_holes_on_a_real_face():
    from faceedit_classic.complete import ClassicCompletion, biharmonic_fill
    from skimage import io

    folder = require_shared("data", "celebamask_hq", "val")
    name = "126ba6"  # a frontal face (mirror error ~15 measured)
    image_path = next((folder / "images").glob(name + "*.jpg"))
    image = io.imread(image_path)
    labels = io.imread(folder / "masks" / (image_path.stem + ".png"))
    hole = ndimage.binary_dilation(np.isin(labels, [4, 6]), iterations=6)  # subject's left eye and brow
    result = execute(ClassicCompletion, CompleteRequest(image=image, mask=hole, labels=labels))
    assert "mirror" in result.provenance.notes
    assert np.array_equal(result.image[~hole], image[~hole])
    ours = np.abs(result.image.astype(float) - image)[hole].mean()
    diffusion = np.abs(biharmonic_fill(image, hole).astype(float) - image)[hole].mean()
    assert ours < 0.8 * diffusion


def test_classic_completion_rejects_attributes(portrait):
    from faceedit_classic.complete import ClassicCompletion

    hole = np.zeros(portrait.shape[:2], bool)
    hole[10:20, 10:20] = True
    with pytest.raises(ValueError, match="does not support attribute"):
        execute(ClassicCompletion, CompleteRequest(image=portrait, mask=hole, attributes={"Smiling": 1}))


@pytest.mark.parametrize("target,check", [
    ("Blond_Hair", lambda before, after: abs(after[..., 0].mean() - 68) < 12 and after[..., 2].mean() > 15),
    ("Black_Hair", lambda before, after: after[..., 0].mean() < 25),
    ("Gray_Hair", lambda before, after: np.hypot(after[..., 1], after[..., 2]).mean() < 8),
])
def test_classic_hair_recolor_changes_hair_only(portrait, target, check):
    from faceedit_classic.hair import ClassicHairColor

    labels = np.zeros(portrait.shape[:2], int)
    labels[30:110, 160:330] = vocab.CLASS_INDEX["hair"]
    result = execute(ClassicHairColor, EditAttributesRequest(image=portrait, labels=labels, attributes={target: 1}))
    hair = labels == vocab.CLASS_INDEX["hair"]
    changed = np.any(result.image != portrait, axis=2)
    near = ndimage.binary_dilation(hair, iterations=3)
    assert not changed[~near].any()
    assert changed[hair].mean() > 0.9
    core = ndimage.binary_erosion(hair, iterations=4)
    assert check(rgb2lab(portrait)[core], rgb2lab(result.image)[core])


def test_classic_hair_strength_and_errors(portrait):
    from faceedit_classic.hair import ClassicHairColor

    labels = np.zeros(portrait.shape[:2], int)
    labels[30:110, 160:330] = 13
    full = execute(ClassicHairColor, EditAttributesRequest(image=portrait, labels=labels, attributes={"Blond_Hair": 1}))
    half = execute(ClassicHairColor, EditAttributesRequest(image=portrait, labels=labels, attributes={"Blond_Hair": 1},
                                                           strength=0.5))
    d_full = np.abs(full.image.astype(float) - portrait).mean()
    d_half = np.abs(half.image.astype(float) - portrait).mean()
    assert 0.35 * d_full < d_half < 0.65 * d_full
    with pytest.raises(ValueError, match="does not support attribute"):
        execute(ClassicHairColor, EditAttributesRequest(image=portrait, labels=labels, attributes={"Male": 1}))
    with pytest.raises(ValueError, match="exactly one"):
        execute(ClassicHairColor, EditAttributesRequest(image=portrait, labels=labels,
                                                        attributes={"Blond_Hair": 1, "Black_Hair": 1}))
    with pytest.raises(ValueError, match="no hair"):
        execute(ClassicHairColor, EditAttributesRequest(image=portrait, labels=np.zeros_like(labels),
                                                        attributes={"Blond_Hair": 1}))


def test_classic_restoration_removes_noise_and_keeps_grayscale(portrait):
    from faceedit_classic.restore import ClassicRestoration

    clean = portrait[100:260, 150:310]
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 15, clean.shape), 0, 255).astype(np.uint8)
    restored = execute(ClassicRestoration, RestoreRequest(image=noisy)).image

    def psnr(a, b):
        return 10 * np.log10(255 ** 2 / np.mean((a.astype(float) - b) ** 2))

    assert psnr(restored, clean) > psnr(noisy, clean) + 2.0
    gray = np.repeat(noisy.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    out = execute(ClassicRestoration, RestoreRequest(image=gray)).image
    assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])


def test_training_leg_cadence_time_limit_and_history(tmp_path, capsys):
    """The loop bookkeeping both trainers share: windows averaged per log line, dev and checkpoints
    on their cadence and at the end, and --max-minutes stops the leg with a checkpoint."""
    import json
    from types import SimpleNamespace

    from napari_faceedit.training import TrainingLeg

    args = SimpleNamespace(log_every=2, dev_every=3, checkpoint_every=4, max_minutes=0)
    saved, records = [], []
    leg = TrainingLeg(args, 6, records, tmp_path / "history.json", {"lr": 1}, saved.append,
                      dev_record=lambda step: {"step": step, "kind": "dev"})
    stops = []
    for step in range(1, 7):
        leg.add({"loss": step})
        stops.append(leg.end_of_step(step, lr=0.5))
    assert stops == [False] * 5 + [True]
    train = [r for r in records if r["kind"] == "train"]
    assert [(r["step"], r["loss"], r["lr"]) for r in train] == [(2, 1.5, 0.5), (4, 3.5, 0.5), (6, 5.5, 0.5)]
    assert [r["step"] for r in records if r["kind"] == "dev"] == [3, 6]
    assert saved == [4, 6]
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["config"] == {"lr": 1} and history["records"] == records

    # Out of time: the next step logs, evaluates, checkpoints and says it stops.
    args.max_minutes = 1
    leg = TrainingLeg(args, 100, [], tmp_path / "history2.json", {}, saved.append)
    leg._clock = lambda: leg.started + 61
    leg.add({"loss": 1.0})
    assert leg.end_of_step(7) is True
    assert saved[-1] == 7 and "--max-minutes reached" in capsys.readouterr().out
    leg.finish(7, tmp_path / "missing.pt")  # no checkpoint file yet: one is written
    assert saved[-1] == 7 and len(saved) == 4
