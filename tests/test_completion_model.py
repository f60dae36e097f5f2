"""The attribute-controlled completion GAN: network stages, inference, holes, losses, trainer."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import SHARED, require_shared  # noqa: E402
from napari_faceedit.training import CheckpointError, celebamask_training_folder, read_training_checkpoint  # noqa: E402
from faceedit_completion import holes, losses  # noqa: E402
from faceedit_completion.attributes import (N_ATTRIBUTES, SUPPORTED_ATTRIBUTES,  # noqa: E402
                                            attribute_vector)
from faceedit_completion.data import load_sources  # noqa: E402
from faceedit_completion.model import (CompletionDiscriminator, CompletionGenerator,  # noqa: E402
                                       complete, composite, load_generator)
from faceedit_completion.train import main, parse_schedule, stage_at  # noqa: E402

from napari_faceedit.vocab import CELEBA_ATTRIBUTES, CLASS_INDEX  # noqa: E402


def shared(*parts: str) -> Path:
    """Like conftest.require_shared, but a missing ../shared fails under CI=true instead of skipping."""
    if os.environ.get("CI", "").lower() == "true" and not SHARED.joinpath(*parts).exists():
        pytest.fail(f"CI=true but ../shared is missing {SHARED.joinpath(*parts)}")
    return require_shared(*parts)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    hole = torch.zeros(n, 1, size, size)
    hole[..., size // 4: size // 2, size // 4: 3 * size // 4] = 1
    return image, hole, torch.zeros(n, N_ATTRIBUTES)


# ------------------------------------------------------------------------------------ network
def test_generator_and_discriminator_shapes_at_every_stage_and_during_fade_in():
    torch.manual_seed(0)
    G, D = CompletionGenerator(max_resolution=32), CompletionDiscriminator(max_resolution=32)
    assert G.levels == [8, 16, 32]
    for resolution in G.levels:
        for alpha in (0.0, 0.4, 1.0):
            image, hole, attrs = _inputs(2, resolution)
            out = G(image, hole, attrs, resolution, alpha)
            assert out.shape == (2, 3, resolution, resolution) and torch.isfinite(out).all()
            score, logits = D(out, resolution, alpha)
            assert score.shape == (2,) and logits.shape == (2, N_ATTRIBUTES)
    # Alpha 0 at a new level reproduces the previous level's image upsampled (a smooth fade-in).
    image, hole, attrs = _inputs(1, 16)
    faded_out = G(image, hole, attrs, 16, 0.0)
    small_image = torch.nn.functional.avg_pool2d(image, 2)
    small_hole = torch.nn.functional.max_pool2d(hole, 2)
    with torch.no_grad():
        expected = G(small_image, small_hole, attrs, 8, 1.0)
    assert torch.allclose(faded_out[..., ::2, ::2], expected, atol=1e-5)
    with pytest.raises(ValueError, match="not a level"):
        G(*_inputs(1, 64), 64)


def test_network_builds_for_256_and_ships_small():
    G = CompletionGenerator(max_resolution=256)
    assert G.levels[-1] == 256
    image, hole, attrs = _inputs(1, 256)
    with torch.no_grad():
        assert G(image, hole, attrs).shape == (1, 3, 256, 256)
    default = CompletionGenerator()
    assert default.max_resolution == 128
    half_bytes = sum(v.numel() * (2 if v.is_floating_point() else v.element_size())
                     for v in default.state_dict().values())
    assert half_bytes <= 8 * 2 ** 20  # fp16 state dict within the shipping budget


def test_complete_keeps_outside_pixels_bit_identical_and_fills_inside():
    torch.manual_seed(1)
    G = CompletionGenerator(max_resolution=32)
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (90, 90, 3), dtype=np.uint8)
    hole = holes.random_strokes(rng, 90) | holes.random_rectangle(rng, 90)
    out = complete(G, crop, hole, {"Smiling": 1.0})
    assert out.dtype == np.uint8 and out.shape == crop.shape
    assert np.array_equal(out[~hole], crop[~hole])
    assert not np.array_equal(out[hole], crop[hole])
    assert np.array_equal(complete(G, crop, np.zeros((90, 90), bool)), crop)
    small = crop[:20, :24]  # smaller than the network (upsampled and back), not square
    small_hole = hole[:20, :24] | (np.arange(24)[None, :] > 18)
    out = complete(G, small, small_hole)
    assert np.array_equal(out[~small_hole], small[~small_hole])


def test_unsupported_attribute_is_a_clear_error():
    G = CompletionGenerator(max_resolution=16)
    crop = np.zeros((16, 16, 3), np.uint8)
    hole = np.zeros((16, 16), bool)
    hole[4:8, 4:8] = True
    for bad in ("Blond_Hair", "Not_An_Attribute"):
        with pytest.raises(ValueError, match=bad) as info:
            complete(G, crop, hole, {bad: 1.0})
        assert "Smiling" in str(info.value) and "Narrow_Eyes" in str(info.value)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attribute_vector({"Smiling": 2.0})
    required = {"Smiling", "Mouth_Slightly_Open", "Eyeglasses", "Male", "Young", "Heavy_Makeup",
                "Bushy_Eyebrows", "Narrow_Eyes"}
    assert required <= set(SUPPORTED_ATTRIBUTES) <= set(CELEBA_ATTRIBUTES)
    vector = attribute_vector({"Male": 1.0, "Smiling": 0.0})
    assert vector[SUPPORTED_ATTRIBUTES.index("Male")] == 1 and vector[SUPPORTED_ATTRIBUTES.index("Smiling")] == -1
    assert np.count_nonzero(vector) == 2  # the others are "not specified"


def test_attribute_vector_changes_the_output():
    torch.manual_seed(2)
    G = CompletionGenerator(max_resolution=32)
    image, hole, _ = _inputs(1, 32)
    with torch.no_grad():
        smiling = G(image, hole, torch.from_numpy(attribute_vector({"Smiling": 1.0}))[None])
        serious = G(image, hole, torch.from_numpy(attribute_vector({"Smiling": 0.0}))[None])
    assert (smiling - serious).abs().max() > 1e-3
    rng = np.random.default_rng(3)
    crop = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = hole[0, 0].numpy().astype(bool)
    assert not np.array_equal(complete(G, crop, mask, {"Male": 1.0}), complete(G, crop, mask, {"Male": 0.0}))


# ------------------------------------------------------------------------------------ holes
@pytest.mark.parametrize("size", [32, 128])
def test_random_holes_are_nonempty_and_within_bounds(size):
    rng = np.random.default_rng(size)
    for _ in range(20):
        for hole in (holes.random_rectangle(rng, size), holes.random_strokes(rng, size),
                     holes.random_hole(rng, size)):
            assert hole.shape == (size, size) and hole.dtype == bool
            assert hole.any() and not hole.all()
            assert hole.mean() <= holes.MAX_HOLE_FRACTION


def test_component_holes_from_a_real_label_map():
    from PIL import Image

    masks = shared("data", "celebamask_hq", "train", "masks")
    labels = np.asarray(Image.open(sorted(masks.glob("*.png"))[0]))
    rng = np.random.default_rng(0)
    eyes = (labels == CLASS_INDEX["l_eye"]) | (labels == CLASS_INDEX["r_eye"])
    assert eyes.any()
    hole = holes.component_hole(rng, labels, labels.shape[0], groups=("eyes",))
    assert hole is not None and hole.shape == labels.shape
    assert hole[eyes].all()  # covers the part ...
    assert hole.sum() > eyes.sum() and hole.mean() < 0.2  # ... dilated a little, not much more
    for size in (32, 128):
        for _ in range(10):
            hole = holes.random_hole(rng, size, labels)
            assert hole.shape == (size, size) and hole.any() and not hole.all()
    nothing = np.zeros_like(labels)
    assert holes.component_hole(rng, nothing, 64) is None


# ------------------------------------------------------------------------------------ losses
def test_losses_are_finite_and_boundary_loss_sees_seams():
    torch.manual_seed(3)
    D = CompletionDiscriminator(max_resolution=32)
    target, hole, _ = _inputs(2, 32)
    target = torch.nn.functional.avg_pool2d(target, 3, 1, 1)  # some image structure
    generated = target + 0.3 * torch.randn_like(target)
    completed = composite(target, generated, hole)
    real_score, real_logits = D(target)
    fake_score, fake_logits = D(completed)
    labels = torch.randint(0, 2, (2, N_ATTRIBUTES)).float()
    known = torch.tensor([[1.0] * N_ATTRIBUTES, [0.0] * N_ATTRIBUTES])
    values = [
        losses.critic_loss(real_score, fake_score),
        losses.gradient_penalty(D, target, completed, torch.full((2, 1, 1, 1), 0.5)),
        losses.drift_penalty(real_score),
        losses.generator_adversarial_loss(fake_score),
        losses.attribute_loss(fake_logits, labels, known),
        losses.reconstruction_loss(generated, target, hole),
        losses.boundary_loss(completed, target, hole),
    ]
    assert all(torch.isfinite(v) and v.ndim == 0 for v in values)
    # Unknown labels contribute nothing.
    assert losses.attribute_loss(fake_logits, labels, torch.zeros_like(known)) == 0
    # The hole counts more than the rest.
    inside_error = composite(target, target + 0.1, hole)
    outside_error = composite(target + 0.1, target, hole)
    inside_loss = losses.reconstruction_loss(inside_error, target, hole)
    assert inside_loss > losses.reconstruction_loss(outside_error, target, hole)
    # Boundary: zero for a seamless composite, positive for a seam (the hole filled 0.2 too bright).
    assert losses.boundary_loss(composite(target, target, hole), target, hole) == 0
    seam = losses.boundary_loss(composite(target, target + 0.2, hole), target, hole)
    assert seam > 0.01
    # Feature networks: both adapters load our weights and give a finite loss (zero for identical images).
    for name in ("parser", "classifier"):
        net = losses.feature_network(name)
        assert all(not p.requires_grad for p in net.parameters())
        value = losses.feature_loss(net, completed, target)
        assert torch.isfinite(value) and value > 0
        assert losses.feature_loss(net, target, target) == 0
        net.train()
        assert not net.training  # stays frozen (BatchNorm statistics untouched)
    assert losses.feature_network("none") is None
    with pytest.raises(ValueError, match="parser"):
        losses.feature_network("vgg19")


# ------------------------------------------------------------------------------------ schedule, data
def test_schedule_parsing_and_stage_lookup():
    stages = parse_schedule("8:4,16:2+2,32:6")
    assert [(s.resolution, s.fade, s.stable) for s in stages] == [(8, 0, 4), (16, 2, 2), (32, 3, 3)]
    assert stage_at(stages, 0) == (8, 1.0)
    assert stage_at(stages, 4) == (16, pytest.approx(1 / 3))
    assert stage_at(stages, 5) == (16, pytest.approx(2 / 3))
    assert stage_at(stages, 6) == (16, 1.0)
    assert stage_at(stages, 100) == (32, 1.0)
    with pytest.raises(ValueError, match="double"):
        parse_schedule("8:4,32:4")
    with pytest.raises(ValueError, match="only 16"):
        parse_schedule("8:4,16:4,32:4", max_resolution=16)


def _tiny_celeba(root: Path, n: int = 10) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    with open(root / "attributes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", *CELEBA_ATTRIBUTES])
        for i in range(n):
            name = f"{i + 1:06d}.jpg"
            base = rng.integers(40, 220, 3)
            image = np.clip(base + rng.normal(0, 20, (109, 89, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / name)
            writer.writerow([name, *rng.choice([1, -1], len(CELEBA_ATTRIBUTES))])
    return root


def _tiny_celebamask(root: Path, n: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        (root / "train" / sub).mkdir(parents=True)
    for i in range(n):
        labels = np.full((64, 64), CLASS_INDEX["skin"], np.uint8)
        labels[:12] = CLASS_INDEX["hair"]
        labels[24:28, 16:24] = CLASS_INDEX["r_eye"]
        labels[24:28, 40:48] = CLASS_INDEX["l_eye"]
        labels[44:50, 24:40] = CLASS_INDEX["u_lip"]
        image = np.clip(rng.normal(0, 15, (64, 64, 3)) + 120 + labels[..., None] * 5, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "train" / "images" / f"{i:032x}.jpg")
        Image.fromarray(labels, mode="L").save(root / "train" / "masks" / f"{i:032x}.png")
    return root


def test_dev_split_and_test_set_refusal(tmp_path):
    celeba = _tiny_celeba(tmp_path / "celeba")
    celebamask = _tiny_celebamask(tmp_path / "cmhq")
    train, dev = load_sources(celeba, celebamask, None, dev_celeba=3, dev_celebamask=2)
    assert [(s.name, len(s)) for s in train] == [("celeba", 7), ("celebamask", 4)]
    assert [(s.name, len(s)) for s in dev] == [("celeba", 3), ("celebamask", 2)]
    assert train[0].known.all() and not train[1].known.any()  # CelebAMask-HQ attributes are unknown
    assert train[1].label_maps.shape == (4, 64, 64)
    (tmp_path / "cmhq" / "val" / "images").mkdir(parents=True)
    (tmp_path / "cmhq" / "val" / "masks").mkdir()
    with pytest.raises(ValueError, match="test set"):
        celebamask_training_folder(tmp_path / "cmhq" / "val")


# ------------------------------------------------------------------------------------ trainer
def test_tiny_training_runs_checkpoints_resumes_exactly_and_exports(tmp_path):
    celeba = _tiny_celeba(tmp_path / "celeba")
    celebamask = _tiny_celebamask(tmp_path / "cmhq")
    common = ["--data-celeba", str(celeba), "--data-celebamask", str(celebamask),
              "--max-resolution", "32", "--schedule", "8:4,16:2+2,32:1+1", "--batch", "3",
              "--dev-celeba", "2", "--dev-celebamask", "2", "--dev-every", "5", "--log-every", "2",
              "--checkpoint-every", "100", "--cache", ""]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*common, "--out", str(straight)]) == 0
    assert main([*common, "--out", str(split), "--steps", "5"]) == 0
    first_leg = read_training_checkpoint(split / "checkpoint_last.pt")
    assert first_leg["step"] == 5 and first_leg["resolution"] == 16
    assert main([*common, "--out", str(split), "--resume", "--export", str(tmp_path / "g16.pt")]) == 0

    a, b = read_training_checkpoint(straight / "checkpoint_last.pt"), read_training_checkpoint(split / "checkpoint_last.pt")
    assert a["step"] == b["step"] == 10 and b["resolution"] == 32 and b["alpha"] == 1.0
    for key in ("generator", "generator_ema", "discriminator"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key  # resumed == uninterrupted
    history = json.loads((split / "history.json").read_text())
    train_steps = [r["step"] for r in history["records"] if r["kind"] == "train"]
    assert train_steps == [2, 4, 5, 6, 8, 10]
    dev = [r for r in history["records"] if r["kind"] == "dev"]
    assert dev and all(np.isfinite(r["dev_l1_hole"]) and np.isfinite(r["dev_psnr_hole"]) for r in dev)
    assert (split / "generator_best.pt").is_file()

    shipped = load_generator(tmp_path / "g16.pt")
    assert shipped.trained_stage() == (32, 1.0)  # complete() runs at the stage it was trained to
    assert first_leg["generator_ema"]["stage_resolution"] == 16
    state = read_training_checkpoint(tmp_path / "g16.pt")
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert state["architecture"].dtype == torch.int64
    crop = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    hole = np.zeros((40, 40), bool)
    hole[10:20, 12:30] = True
    out = complete(shipped, crop, hole, {"Eyeglasses": 1.0})
    assert np.array_equal(out[~hole], crop[~hole])


def test_a_schedule_grown_on_resume_keeps_a_best_model_at_its_new_end(tmp_path):
    """A run that ended at 16 px and resumes with a schedule ending at 32 px: the best-dev file is the
    best at 32 px, not blocked by a lower error measured at 16 px."""
    celeba = _tiny_celeba(tmp_path / "celeba")
    celebamask = _tiny_celebamask(tmp_path / "cmhq")
    common = ["--data-celeba", str(celeba), "--data-celebamask", str(celebamask), "--out", str(tmp_path / "run"),
              "--max-resolution", "32", "--batch", "3", "--dev-celeba", "2", "--dev-celebamask", "2",
              "--dev-every", "2", "--log-every", "2", "--checkpoint-every", "100", "--cache", ""]
    assert main([*common, "--schedule", "8:2,16:1+3"]) == 0
    first = read_training_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    first["best_dev_l1"] = torch.tensor(0.0).item()  # an unbeatable best at 16 px
    torch.save(first, tmp_path / "run" / "checkpoint_last.pt")
    assert main([*common, "--schedule", "8:2,16:1+3,32:1+3", "--resume"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    best = [r for r in history["records"] if r["kind"] == "dev" and r.get("best")]
    assert best and best[-1]["resolution"] == 32
    assert load_generator(tmp_path / "run" / "generator_best.pt").trained_stage() == (32, 1.0)


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('pwned')",)

    torch.save({"generator": {}, "payload": Payload()}, path)


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    marker = tmp_path / "marker"
    bad = tmp_path / "run" / "checkpoint_last.pt"
    bad.parent.mkdir()
    _malicious_checkpoint(bad, marker)
    with pytest.raises(CheckpointError, match="weights-only"):
        read_training_checkpoint(bad)
    assert main(["--out", str(bad.parent), "--resume", "--data-celeba", str(tmp_path / "absent")]) == 2
    from napari_faceedit.weights import WeightsError

    with pytest.raises(WeightsError, match="weights-only"):
        load_generator(bad)
    assert not marker.exists()
