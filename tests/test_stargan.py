"""StarGAN: parity with the official generator, normalisation modes, training/resume, backend pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from faceedit_stargan.backend import StarGAN256Backend, StarGANBackend, face_ellipse, label_vectors  # noqa: E402
from faceedit_stargan.model import Discriminator, Generator, StarInstanceNorm  # noqa: E402
from faceedit_stargan.parity import PARITY_MODEL  # noqa: E402

from napari_faceedit.tasks import EditAttributesRequest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE_DIR = SHARED / "parity" / "stargan"


def require_fixture() -> Path:
    if not (FIXTURE_DIR / "fixture.npz").exists():
        pytest.skip(f"../shared parity fixtures not available ({FIXTURE_DIR})")
    return FIXTURE_DIR


def fixture_model(norm_mode: str = "instance") -> tuple[Generator, dict]:
    from napari_faceedit.parity import read_keys, synth_state_dict

    folder = require_fixture()
    config = json.loads((folder / "config.json").read_text())
    model = Generator(**config["fixture_constructor"], norm_mode=norm_mode)
    model.load_state_dict(synth_state_dict(read_keys(folder / "fixture_keys.tsv"), model), strict=True)
    return model, dict(np.load(folder / "fixture.npz"))


# -- architecture and parity ---------------------------------------------------------------------
def test_parity_fixture_passes_check_folder():
    from io import StringIO

    from napari_faceedit.parity import check_folder

    report = StringIO()
    assert check_folder(PARITY_MODEL, require_fixture(), out=report), report.getvalue()
    text = report.getvalue()
    for name in ("output_train", "output_eval", "pre_tanh_train", "feat_bottleneck_eval", "feat_down_train"):
        assert f"fixture.npz:{name}:" in text and "FAIL" not in text


def test_parity_model_is_registered_through_the_hook(fresh_registry):
    registry = fresh_registry()
    assert "stargan" in registry.parity_models()
    assert {"stargan", "stargan-256"} <= set(registry.backends)


def test_official_key_list_loads_strict_into_full_generator():
    from napari_faceedit.parity import read_keys, synth_state_dict

    folder = require_fixture()
    rows = read_keys(folder / "keys.tsv")
    model = Generator(64, 5, 6)
    assert [r.name for r in rows] == list(model.state_dict())  # same keys, same order
    model.load_state_dict(synth_state_dict(rows, model), strict=True)
    n_float = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    assert n_float == json.loads((folder / "config.json").read_text())["full_keys"]["n_float_elements"]


def test_checkpoint_without_num_batches_tracked_loads():
    source = Generator(8, 5, 2)
    for module in source.modules():
        if isinstance(module, StarInstanceNorm):
            module.running_mean.normal_()
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) < len(source.state_dict())
    target = Generator(8, 5, 2)
    target.load_state_dict(state, strict=True)
    assert torch.equal(target.main[1].running_mean, source.main[1].running_mean)


def test_norm_modes_differ_and_each_matches_its_fixture():
    model, arrays = fixture_model()
    x, c = torch.from_numpy(arrays["input"]), torch.from_numpy(arrays["labels"])
    outputs = {}
    for mode, expected in (("instance", "output_train"), ("running", "output_eval")):
        model.norm_mode = mode
        for training in (True, False):  # the mode, not train()/eval(), decides the statistics
            model.train(training)
            with torch.inference_mode():
                y = model(x, c).numpy()
            assert np.abs(y - arrays[expected]).max() <= 1e-4 * np.abs(arrays[expected]).max()
        outputs[mode] = y
    assert np.abs(outputs["instance"] - outputs["running"]).max() > 0.1


def test_inference_never_updates_running_statistics():
    model = Generator(8, 5, 1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, c = torch.rand(2, 3, 16, 16), torch.ones(2, 5)
    with torch.no_grad():
        model(x, c)
    with torch.inference_mode():
        model(x, c)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model(x, c).mean().backward()  # training with gradients does update them (as the official training)
    assert not torch.equal(before["main.1.running_mean"], model.main[1].running_mean)
    with pytest.raises(ValueError, match="norm_mode"):
        Generator(8, 5, 1, norm_mode="batch")


def test_discriminator_official_layout_shapes():
    D = Discriminator(image_size=128, conv_dim=64, c_dim=5, repeat_num=6)
    keys = list(D.state_dict())
    assert keys[:2] == ["main.0.weight", "main.0.bias"] and keys[-2:] == ["conv1.weight", "conv2.weight"]
    assert D.conv2.weight.shape == (5, 2048, 2, 2)
    small = Discriminator(image_size=128, conv_dim=4, c_dim=5, repeat_num=6)  # same geometry, cheap forward
    src, cls = small(torch.rand(2, 3, 128, 128))
    assert src.shape == (2, 1, 2, 2) and cls.shape == (2, 5)
    assert Discriminator(256).conv2.weight.shape[-1] == 4


# -- training --------------------------------------------------------------------------------------
def write_tiny_dataset(root: Path, n: int = 4, txt: bool = False) -> tuple[Path, Path]:
    from PIL import Image

    from napari_faceedit.vocab import CELEBA_ATTRIBUTES

    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(rng.integers(0, 255, (44, 36, 3), dtype=np.uint8)).save(images / name)
        values = rng.choice([-1, 1], len(CELEBA_ATTRIBUTES))
        rows.append((name, values))
    if txt:  # the original list_attr_celeba.txt layout
        attributes = root / "list_attr_celeba.txt"
        lines = [str(n), " ".join(CELEBA_ATTRIBUTES)] + [f"{name} " + " ".join(f"{v:2d}" for v in values)
                                                         for name, values in rows]
    else:
        attributes = root / "attributes.csv"
        lines = [",".join(("filename",) + CELEBA_ATTRIBUTES)] + [",".join([name, *map(str, values)])
                                                                 for name, values in rows]
    attributes.write_text("\n".join(lines) + "\n")
    return images, attributes


def test_attribute_table_formats_agree(tmp_path):
    from faceedit_stargan.data import read_attribute_table

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, csv_file = write_tiny_dataset(tmp_path / "a")
    _, txt_file = write_tiny_dataset(tmp_path / "b", txt=True)
    names_a, attrs_a, values_a = read_attribute_table(csv_file)
    names_b, attrs_b, values_b = read_attribute_table(txt_file)
    assert names_a == names_b and attrs_a == attrs_b and len(attrs_a) == 40
    assert np.array_equal(values_a, values_b) and set(np.unique(values_a)) <= {0.0, 1.0}


def test_training_gives_finite_losses_and_resume_continues_exactly(tmp_path):
    from faceedit_stargan.train import main

    images, attributes = write_tiny_dataset(tmp_path)
    common = ["--data", str(images), "--attributes", str(attributes), "--image-size", "32",
              "--conv-dim", "8", "--d-conv-dim", "8", "--repeat-num", "2", "--batch-size", "4",
              "--n-critic", "2", "--checkpoint-every", "2", "--log-every", "1", "--threads", "1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(common + ["--out", str(straight), "--iterations", "4"]) == 0
    assert main(common + ["--out", str(resumed), "--iterations", "2"]) == 0
    assert main(common + ["--out", str(resumed), "--iterations", "4", "--resume"]) == 0

    log = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]  # resumed at 3, not from scratch
    for entry in log:
        losses = [v for k, v in entry.items() if "/" in k]
        assert losses and all(np.isfinite(losses))
    assert {"G/loss_rec", "G/loss_cls", "D/loss_gp"} <= set(log[-1])
    state = torch.load(resumed / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert state["step"] == 4 and state["config"]["image_size"] == 32
    # Resuming restores weights, optimisers and RNG: identical to the uninterrupted run.
    a = torch.load(straight / "G_latest.pt", weights_only=True)
    b = torch.load(resumed / "G_latest.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (resumed / "samples" / "00000004.png").exists()
    meta = json.loads((resumed / "generator.json").read_text())
    generator = Generator(meta["conv_dim"], meta["c_dim"], meta["repeat_num"])
    generator.load_state_dict(b, strict=True)


def test_random_targets_keep_hair_colors_exclusive():
    from faceedit_stargan.train import random_targets

    labels = torch.tensor([[1, 1, 1, 0, 1], [1, 0, 1, 1, 0], [0, 0, 0, 1, 1], [0, 1, 0, 0, 0]], dtype=torch.float32)
    rng = torch.Generator().manual_seed(0)
    for _ in range(5):
        targets = random_targets(labels, ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"), rng)
        assert (targets[:, :3].sum(1) <= 1).all()
        assert sorted(targets[:, 3].tolist()) == sorted(labels[:, 3].tolist())  # a permutation of the batch


# -- backend ----------------------------------------------------------------------------------------
def test_label_vectors_hair_exclusive_keep_source_and_strength():
    source = {"Black_Hair": 1, "Blond_Hair": 0, "Brown_Hair": 0, "Male": 1, "Young": 0}
    src, trg, mixed = label_vectors({"Blond_Hair": 1.0}, source, strength=0.5)
    assert trg.tolist() == [0, 1, 0, 1, 0]
    assert np.allclose(mixed, [0.5, 0.5, 0, 1, 0])
    _, _, unknown = label_vectors({"Young": 1.0}, {}, strength=1.0)
    assert np.allclose(unknown, [0.5, 0.5, 0.5, 0.5, 1.0])  # unknown source stays 0.5
    with pytest.raises(ValueError, match="exclusive"):
        label_vectors({"Blond_Hair": 1.0, "Brown_Hair": 1.0}, source)
    from faceedit_stargan.backend import parse_source_attributes

    assert parse_source_attributes("Male=1, Young=0") == {"Male": 1.0, "Young": 0.0}


def test_source_attributes_from_the_request_enter_the_label_vector():
    from napari_faceedit.runner import execute

    request = EditAttributesRequest(image=synthetic_photo(), attributes={"Young": 1.0}, strength=0.25, landmarks=[FACE_A],
                                    params={"source_attributes": "Black_Hair=1,Blond_Hair=0,Brown_Hair=0,Male=1,Young=0"})
    result = execute(tiny_backend(), request)
    assert np.allclose(result.extras["label_vectors"][0], [1, 0, 0, 1, 0.25])


def synthetic_photo(size=(240, 320)) -> np.ndarray:
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    photo = np.stack([(xx * 0.7) % 256, (yy * 0.9) % 256, ((xx + yy) * 0.4) % 256], axis=2)
    return photo.astype(np.uint8)


# Two faces (eyes, nose, mouth corners), placed by hand so the test needs no detector weights.
FACE_A = np.array([[70, 100], [100, 100], [85, 118], [73, 135], [97, 135]], dtype=np.float64)
FACE_B = FACE_A + [100, 10]


def tiny_backend(image_size=32):
    torch.manual_seed(0)
    return StarGANBackend.from_model(Generator(8, 5, 1), image_size=image_size, classifier=None)


def test_backend_changes_the_face_and_leaves_the_rest_untouched():
    from napari_faceedit.runner import execute

    photo = synthetic_photo()
    steps = []
    request = EditAttributesRequest(image=photo, attributes={"Blond_Hair": 1.0},
                                    landmarks=[FACE_A, FACE_B])
    result = execute(tiny_backend(), request, progress=lambda *a: steps.append(a))
    changed = np.abs(result.image.astype(int) - photo).sum(2) > 0
    for face in (FACE_A, FACE_B):
        cx, cy = face.mean(0).astype(int)
        assert changed[cy - 5:cy + 5, cx - 5:cx + 5].mean() > 0.5  # inside each face: edited
    assert not changed[:, 280:].any() and not changed[200:, :].any()  # far away: bit-identical
    assert not changed[result.extras["paste_weights"] == 0].any()
    assert result.extras["label_vectors"].shape == (2, 5)
    assert any("face 2 of 2" in s[2] for s in steps)
    assert "norm_mode=instance" in result.provenance.notes


def test_backend_edits_only_the_selected_face_and_cancels_between_faces():
    from napari_faceedit.runner import execute

    photo = synthetic_photo()
    request = EditAttributesRequest(image=photo, attributes={"Male": 0.0}, face_index=1,
                                    landmarks=[FACE_A, FACE_B])
    result = execute(tiny_backend(), request)
    changed = np.abs(result.image.astype(int) - photo).sum(2) > 0
    ax, ay = FACE_A.mean(0).astype(int)
    bx, by = FACE_B.mean(0).astype(int)
    assert not changed[ay - 30:ay + 30, ax - 30:ax + 30].any() and changed[by - 5:by + 5, bx - 5:bx + 5].any()

    calls = []

    def cancel_after_first_face():
        calls.append(1)
        return len(calls) > 2  # 1: after finding faces, 2: before face 1, 3: before face 2

    all_faces = EditAttributesRequest(image=photo, attributes={"Male": 0.0}, landmarks=[FACE_A, FACE_B])
    assert execute(tiny_backend(), all_faces, cancelled=cancel_after_first_face) is None


def test_backend_rejects_unsupported_attributes_and_bad_requests():
    from napari_faceedit.runner import execute

    photo = synthetic_photo()

    def run(attributes, **kwargs):
        return execute(tiny_backend(), EditAttributesRequest(image=photo, attributes=attributes, landmarks=[FACE_A], **kwargs))

    with pytest.raises(ValueError, match="does not support.*Smiling"):
        run({"Smiling": 1.0})
    with pytest.raises(ValueError, match="exclusive"):
        run({"Blond_Hair": 1.0, "Black_Hair": 1.0})
    with pytest.raises(ValueError, match="out of range: 1 face"):
        run({"Young": 1.0}, face_index=3)
    with pytest.raises(ValueError, match="norm_mode.*instance, running"):
        run({"Young": 1.0}, params={"norm_mode": "eval"})
    with pytest.raises(ValueError, match="no parameter 'mask_scale'.*ellipse_scale"):
        run({"Young": 1.0}, params={"mask_scale": 1.0})


def test_missing_weights_say_which_file_and_how_to_get_it(tmp_path):
    from napari_faceedit import weights
    from napari_faceedit.runner import execute

    weights.set_cache_dir(tmp_path / "cache")
    weights.set_weights_dir(tmp_path / "mine")
    weights.set_offline(True)
    try:
        for backend, weights_id in ((StarGANBackend, "stargan-celeba-128"), (StarGAN256Backend, "stargan-celeba-256")):
            ok, message = backend.ready()
            assert not ok
            assert weights_id in message and "200000-G.ckpt" in message
            assert f"faceedit weights download {weights_id}" in message
        request = EditAttributesRequest(image=synthetic_photo(), attributes={"Young": 1.0}, landmarks=[FACE_A])
        with pytest.raises(RuntimeError, match="stargan-celeba-128"):
            execute(StarGANBackend, request)
    finally:
        weights.reset_settings()


def test_face_ellipse_is_feathered_and_zero_at_the_crop_edge():
    ellipse = face_ellipse(64)
    assert ellipse[32, 32] == 1.0 and ellipse[0, 0] == 0.0 and ellipse[32, 0] < 0.1
    assert 0 < ellipse[32, 6] < 1


def test_our_attribute_classifier_is_small_and_estimates_source_attributes():
    from faceedit_stargan.classifier import default_classifier_path, load_classifier, predict_probabilities

    path = default_classifier_path()
    if not path.exists():
        pytest.skip("the stargan plugin's models/celeba_attr_classifier.pt is not trained yet (benchmarks/stargan_eval.py)")
    assert path.stat().st_size < 2 * 2**20
    classifier = load_classifier(path)
    probabilities = predict_probabilities(classifier, synthetic_photo((64, 64))[None])
    assert probabilities.shape == (1, 5) and ((probabilities >= 0) & (probabilities <= 1)).all()
    from napari_faceedit.runner import execute

    backend = StarGANBackend.from_model(Generator(8, 5, 1), image_size=32)  # classifier "auto": ours
    request = EditAttributesRequest(image=synthetic_photo(), attributes={"Young": 1.0}, landmarks=[FACE_A])
    vector = execute(backend, request).extras["label_vectors"][0]
    assert set(vector[:4].tolist()) <= {0.0, 1.0} and vector[4] == 1.0  # estimated source is binary, not 0.5


def test_official_layout_checkpoint_loads_through_the_weights_manager(tmp_path):
    """A file with the official 256 px layout (and no num_batches_tracked, like pre-0.4.1 checkpoints)
    placed in the user's weights folder makes the backend ready and runs it end to end."""
    from napari_faceedit import weights
    from napari_faceedit.runner import execute

    torch.manual_seed(0)
    official = Generator(64, 5, 6)
    state = {k: v for k, v in official.state_dict().items() if not k.endswith("num_batches_tracked")}
    folder = tmp_path / "mine" / "stargan-celeba-256"
    folder.mkdir(parents=True)
    torch.save(state, folder / "200000-G.ckpt")
    weights.set_cache_dir(tmp_path / "cache")
    weights.set_weights_dir(tmp_path / "mine")
    weights.set_offline(True)
    from napari_faceedit.model_cache import ModelCache

    cache = ModelCache()
    try:
        assert StarGAN256Backend.ready() == (True, "ready")
        request = EditAttributesRequest(image=synthetic_photo(), attributes={"Male": 1.0}, landmarks=[FACE_A],
                                        params={"source_attributes": "Black_Hair=1,Blond_Hair=0,Brown_Hair=0,"
                                                "Male=0,Young=1", "return_crops": True})
        result = execute(StarGAN256Backend, request, cache=cache)
        assert result.provenance.weights_id == "stargan-celeba-256" and len(result.provenance.weights_sha256) == 64
        assert result.extras["crops_after"].shape == (1, 256, 256, 3)
        (generator,) = [m for models in cache._models.values() for m in models.values()]
        assert torch.equal(generator.main[0].weight, official.main[0].weight)
    finally:
        weights.reset_settings()


def test_parity_fails_when_an_expected_array_is_not_compared(tmp_path):
    """A fixture array our model does not produce must fail the check, never pass unnoticed."""
    import io
    import shutil

    from napari_faceedit.parity import check_folder

    folder = require_fixture()
    for name in ("config.json", "keys.tsv", "fixture_keys.tsv"):
        shutil.copy(folder / name, tmp_path / name)
    arrays = dict(np.load(folder / "fixture.npz"))
    np.savez(tmp_path / "fixture.npz", **arrays, surprise=np.ones(3, np.float32))
    log = io.StringIO()
    assert not check_folder(PARITY_MODEL, tmp_path, out=log)
    assert "expected arrays not compared: ['surprise']" in log.getvalue()
    np.savez(tmp_path / "fixture.npz", input=arrays["input"], labels=arrays["labels"])
    log = io.StringIO()
    assert not check_folder(PARITY_MODEL, tmp_path, out=log)  # only the inputs: nothing was compared
    assert "the fixture lacks the expected arrays" in log.getvalue()
