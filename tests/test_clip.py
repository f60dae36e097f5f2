"""CLIP ViT-B/32: parity with the official towers and tokenizer, the released-checkpoint loader,
differentiable preprocessing and TediGAN's CLIP loss."""
from __future__ import annotations

import gzip
import random
from io import StringIO

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import require_shared  # noqa: E402
from faceedit_tedigan.clip import (  # noqa: E402
    CLIP, CLIP_MEAN, CLIP_STD, RELEASED_CONFIG_KEYS, load_released_state_dict, preprocess_image,
    preprocess_rgb_uint8, tedigan_clip_input, tedigan_clip_loss,
)
from faceedit_tedigan.clip_tokenizer import (  # noqa: E402
    CLIPTokenizer, PromptTooLongError, clean_text, read_merges, split_words,
)
from faceedit_tedigan.parity_clip import CLIP_PARITY, FIXTURE_INPUTS, VOCAB_ENV, vocab_path  # noqa: E402

from napari_faceedit.parity import check_folder, read_keys, synth_tensor  # noqa: E402
from napari_faceedit.weights import StateDictMismatchError  # noqa: E402

TINY = dict(embed_dim=16, image_resolution=64, vision_layers=1, vision_width=64, vision_patch_size=32,
            context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=2, transformer_layers=1)
TINY_224 = dict(TINY, image_resolution=224)  # TediGAN's input size, still cheap to backpropagate


def clip_folder():
    return require_shared("parity", "clip_vit_b32")


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer(clip_folder() / "bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture(scope="module")
def synthetic_state() -> dict:
    """The fixtures' ViT-B/32 weights as float32 tensors, in keys.tsv order."""
    return {row.name: torch.from_numpy(np.asarray(synth_tensor(row.name, row.shape)))
            for row in read_keys(clip_folder() / "keys.tsv")}


@pytest.fixture(scope="module")
def synthetic_clip(synthetic_state) -> CLIP:
    model = CLIP().eval()
    model.load_state_dict(synthetic_state, strict=True)
    return model


# -- parity ------------------------------------------------------------------------------------------
def test_parity_fixture_passes_with_every_array_compared():
    folder = clip_folder()
    report = StringIO()
    assert check_folder(CLIP_PARITY, folder, out=report), report.getvalue()
    compared = {line.split(":")[1] for line in report.getvalue().splitlines() if line.startswith("fixture.npz:")}
    assert FIXTURE_INPUTS == ("image_input",)  # the only array fed in rather than produced
    assert compared == set(np.load(folder / "fixture.npz").files) - set(FIXTURE_INPUTS), report.getvalue()
    assert "FAIL" not in report.getvalue()


def test_parity_model_is_registered_through_the_hook(fresh_registry):
    assert "clip_vit_b32" in fresh_registry().parity_models()


def test_key_list_order_and_size_match_the_official_model():
    rows = read_keys(clip_folder() / "keys.tsv")
    model = CLIP()
    assert [r.name for r in rows] == list(model.state_dict())
    assert all(tuple(model.state_dict()[r.name].shape) == r.shape for r in rows)
    assert sum(p.numel() for p in model.parameters()) == 151_277_313


def test_vocab_path_comes_from_the_fixture_folder_or_the_environment(monkeypatch, tmp_path):
    config = {"tokenizer": {"vocab_file": "v.txt.gz"}}
    assert vocab_path({**config, "fixture_dir": str(tmp_path)}) == tmp_path / "v.txt.gz"
    monkeypatch.delenv(VOCAB_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=VOCAB_ENV):
        vocab_path(config)
    monkeypatch.setenv(VOCAB_ENV, str(tmp_path / "x.gz"))
    assert vocab_path(config) == tmp_path / "x.gz"


# -- tokenizer -----------------------------------------------------------------------------------------
def test_tokenizer_matches_the_fixture_ids(tokenizer):
    arrays = np.load(clip_folder() / "fixture.npz")
    ids = tokenizer.tokenize(list(arrays["prompts"]))
    assert ids.dtype == np.int32 and ids.shape == (5, 77)
    np.testing.assert_array_equal(ids, arrays["token_ids"])
    assert list(ids[3, :3]) == [49406, 49407, 0]  # the empty prompt
    stylegan = require_shared("parity", "tedigan_stylegan_ffhq256", "fixture.npz")
    arrays = np.load(stylegan)
    np.testing.assert_array_equal(tokenizer.tokenize(list(arrays["clip_prompts"])), arrays["clip_token_ids"])


@pytest.mark.parametrize("text, pieces", [
    ("don't stop", ["don", "'t", "stop"]),
    ("it's 2024, isn't it?", ["it", "'s", "2", "0", "2", "4", ",", "isn", "'t", "it", "?"]),
    ("we'll've they're i'm he'd", ["we", "'ll", "'ve", "they", "'re", "i", "'m", "he", "'d"]),
    ("'sand", ["'s", "and"]),  # a contraction wins wherever a piece starts
    ("?'s", ["?'", "s"]),  # inside a punctuation run the apostrophe is punctuation
    ("3.14% of x_y", ["3", ".", "1", "4", "%", "of", "x", "_", "y"]),
    ("hello...world!!", ["hello", "...", "world", "!!"]),
    ("über-cool café naïve", ["über", "-", "cool", "café", "naïve"]),
    ("日本語 一二三", ["日本語", "一二三"]),  # CJK ideographs are letters (Lo)
    ("x²³ Ⅻ ٣", ["x", "²", "³", "Ⅻ", "٣"]),  # every number character (Nd, Nl, No) is its own piece
    ("a<|endoftext|>b", ["a", "<|endoftext|>", "b"]),
    ("!<|endoftext|>", ["!<|", "endoftext", "|>"]),  # the special is only seen where a piece starts
    ("😀 ok", ["😀", "ok"]),
    ("", []),
])
def test_pre_split_follows_the_reference_pattern(text, pieces):
    assert split_words(text) == pieces


def test_cleanup_normalises_like_the_reference():
    assert clean_text("  Hello\n\t WORLD  ") == "hello world"
    assert clean_text("don\u2019t \u201cquote\u201d") == "don't \"quote\""
    assert clean_text("\ufb01ne \uff26\uff55\uff4c\uff4c") == "fine full"  # ligature, full width
    assert clean_text("fish &amp;amp; chips") == "fish & chips"  # HTML unescaped twice
    assert clean_text("cafe\u0301") == "caf\u00e9"  # NFC
    assert clean_text("a\x00b\x1b[31mred\x1b[0m") == "abred"


@pytest.mark.parametrize("text", ["Don't STOP!", "naïve Ünïcödé façade – ß", "日本語のテキスト",
                                  "😀🎉 emoji_test", "x" * 40, "a'b'c''d", "100,000.5 $ € ¥"])
def test_every_text_round_trips_through_bytes(tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids and all(0 <= i < 49406 for i in ids)
    assert tokenizer.decode(ids).replace(" ", "") == clean_text(text).replace(" ", "")


def test_random_unicode_never_fails(tokenizer):
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(32, 0x3000) if not 0xD800 <= c < 0xE000]
    for _ in range(50):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        ids = tokenizer.tokenize(text, truncate=True)[0]
        assert ids[0] == tokenizer.start_id and tokenizer.end_id in ids


def test_context_length_and_truncation(tokenizer):
    fits = " ".join(["x"] * 75)  # 75 tokens + SOT + EOT = 77
    ids = tokenizer.tokenize(fits)[0]
    assert ids[-1] == tokenizer.end_id and ids[0] == tokenizer.start_id
    too_long = fits + " x"
    with pytest.raises(PromptTooLongError, match="truncate=True"):
        tokenizer.tokenize(too_long)
    cut = tokenizer.tokenize(too_long, truncate=True)[0]
    assert cut[-1] == tokenizer.end_id and int(cut.argmax()) == 76
    np.testing.assert_array_equal(cut[:-1], ids[:-1])


def test_wrong_vocabulary_file_is_refused(tmp_path):
    bad = tmp_path / "vocab.txt.gz"
    with gzip.open(bad, "wt") as handle:
        handle.write("#version: 0.2\ni n\nt h\n")
    with pytest.raises(ValueError, match="merge lines"):
        read_merges(bad)


# -- model ---------------------------------------------------------------------------------------------
def test_short_token_sequences_give_the_same_text_features():
    torch.manual_seed(0)
    model = CLIP(**TINY).eval()
    ids = torch.zeros(2, 77, dtype=torch.long)
    ids[:, 0], ids[0, 1:4], ids[1, 1:6] = 49406, torch.tensor([320, 1125, 49407]), torch.tensor([1, 2, 3, 4, 49407])
    with torch.no_grad():
        full, short = model.encode_text(ids), model.encode_text(ids[:, :8])
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="L <= 77"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="preprocess_image"):
        model.encode_image(torch.zeros(1, 3, 65, 65))


def test_released_layout_loads_float16_and_drops_the_int_keys(synthetic_state):
    rows = {r.name: r for r in read_keys(clip_folder() / "keys.tsv")}
    checkpoint_dtype = {line.split("\t")[0]: line.split("\t")[4]
                        for line in (clip_folder() / "keys.tsv").read_text().splitlines()[1:] if line}
    released = {name: value.half() if checkpoint_dtype[name] == "float16" else value
                for name, value in synthetic_state.items()}
    names = list(released)
    random.Random(0).shuffle(names)  # the archive lists keys in its own order
    released = {name: released[name] for name in names}
    released.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77),
                    vocab_size=torch.tensor(49408))
    assert sum(v.dtype == torch.float16 for v in released.values()) == 195 and len(released) == len(rows) + 3

    model = CLIP()
    load_released_state_dict(model, released)
    state = model.state_dict()
    assert not set(RELEASED_CONFIG_KEYS) & set(state)
    assert all(v.dtype == torch.float32 for v in state.values())
    weight = "visual.transformer.resblocks.3.attn.in_proj_weight"
    assert torch.equal(state[weight], synthetic_state[weight].half().float())
    assert torch.equal(state["logit_scale"], synthetic_state["logit_scale"])


def test_wrong_keys_give_a_clear_error():
    source = CLIP(**TINY).state_dict()
    renamed = dict(source)
    renamed["visual.ln_pre.gain"] = renamed.pop("visual.ln_pre.weight")
    target = CLIP(**TINY)
    before = target.visual.ln_pre.weight.clone()
    with pytest.raises(StateDictMismatchError, match=r"missing key\(s\): visual\.ln_pre\.weight") as error:
        load_released_state_dict(target, renamed)
    assert error.value.unexpected == ["visual.ln_pre.gain"]
    assert torch.equal(target.visual.ln_pre.weight, before)  # nothing loaded
    reshaped = dict(source, text_projection=torch.zeros(3, 3))
    with pytest.raises(StateDictMismatchError, match="text_projection"):
        load_released_state_dict(target, reshaped)
    with pytest.raises(StateDictMismatchError, match="context_length=64"):
        load_released_state_dict(target, dict(source, context_length=torch.tensor(64)))


# -- preprocessing and TediGAN's loss ----------------------------------------------------------------------
def test_preprocessing_is_differentiable_and_crops_the_centre():
    image = (torch.rand(2, 3, 100, 160) * 2 - 1).requires_grad_()
    out = preprocess_image(image)
    assert out.shape == (2, 3, 224, 224)
    out.square().sum().backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    # the side columns of a landscape image are cropped away: no gradient reaches them
    assert image.grad[..., :5].abs().sum() == 0 and image.grad[..., 80].abs().sum() > 0
    flat = preprocess_image(torch.full((1, 3, 224, 224), 0.5), input_range=(0.0, 1.0))
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(flat[0, :, 100, 100], expected)


def test_preprocessing_is_close_to_the_reference_pil_pipeline(portrait):
    Image = pytest.importorskip("PIL.Image")
    for image in (portrait, np.asarray(Image.fromarray(portrait).resize((150, 100)))):
        pil = Image.fromarray(image)
        width, height = pil.size
        new = (224, int(224 * height / width)) if width <= height else (int(224 * width / height), 224)
        resized = np.asarray(pil.resize(new, Image.BICUBIC)).astype(np.float32) / 255
        top, left = int(round((new[1] - 224) / 2)), int(round((new[0] - 224) / 2))
        reference = resized[top:top + 224, left:left + 224]
        ours = preprocess_rgb_uint8(image)[0].permute(1, 2, 0).numpy() * CLIP_STD + CLIP_MEAN
        grey_levels = np.abs(np.clip(ours, 0, 1) - reference) * 255  # PIL clips and rounds to 8 bits
        assert grey_levels.mean() < 0.5 and np.percentile(grey_levels, 99.5) < 1.5


def test_tedigan_input_equals_nearest_upsampling_then_average_pooling():
    image = torch.rand(2, 3, 64, 48, dtype=torch.float64)
    literal = torch.nn.functional.avg_pool2d(torch.nn.functional.interpolate(image, scale_factor=7, mode="nearest"), 32)
    torch.testing.assert_close(tedigan_clip_input(image, upsample=7), literal)
    assert tedigan_clip_input(torch.zeros(1, 3, 256, 256)).shape[-2:] == (224, 224)  # x28
    assert tedigan_clip_input(torch.zeros(1, 3, 1024, 1024)).shape[-2:] == (224, 224)  # x7
    with pytest.raises(ValueError, match="upsample="):
        tedigan_clip_input(torch.zeros(1, 3, 300, 300))


@pytest.mark.parametrize("variant", ["fixture", "fixture_rescaled"])
def test_tedigan_clip_loss_matches_the_stylegan_fixture(synthetic_clip, tokenizer, variant):
    arrays = np.load(require_shared("parity", "tedigan_stylegan_ffhq256", f"{variant}.npz"))
    image = torch.from_numpy(arrays["image"])
    token_ids = torch.from_numpy(tokenizer.tokenize(list(arrays["clip_prompts"])))
    if "clip_input_224" in arrays:
        expected = arrays["clip_input_224"]
        assert np.abs(tedigan_clip_input(image).numpy() - expected).max() <= 1e-4 * np.abs(expected).max()
    with torch.no_grad():
        text_features = synthetic_clip.encode_text(token_ids)
        logits = synthetic_clip.similarity_logits(synthetic_clip.encode_image(tedigan_clip_input(image)),
                                                  text_features)
        loss = tedigan_clip_loss(synthetic_clip, image, text_features=text_features)
    np.testing.assert_allclose(logits.numpy(), arrays["clip_logits_per_image"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(loss.numpy(), arrays["clip_loss"], rtol=0, atol=1e-5)


def test_tedigan_clip_loss_has_gradients_and_accepts_precomputed_text(tokenizer):
    torch.manual_seed(0)
    model = CLIP(**TINY_224).eval()
    token_ids = torch.from_numpy(tokenizer.tokenize(["a smiling woman", "a bald man"]))
    image = (torch.rand(1, 3, 256, 256) * 2 - 1).requires_grad_()
    loss = tedigan_clip_loss(model, image, token_ids)
    loss[0, 0].backward()
    assert loss.shape == (1, 2) and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    with torch.no_grad():
        text_features = model.encode_text(token_ids)
        again = tedigan_clip_loss(model, image, text_features=text_features)
        logits, _ = model(tedigan_clip_input(image), token_ids)
    torch.testing.assert_close(again, loss.detach())
    torch.testing.assert_close(loss.detach(), 1 - logits / 100)
    with pytest.raises(ValueError, match="exactly one"):
        tedigan_clip_loss(model, image)


def test_half_precision_model_runs_with_float32_layer_norms(tokenizer):
    """The official GPU path keeps the released float16 weights; layer norms still compute in float32."""
    torch.manual_seed(0)
    full = CLIP(**TINY_224).eval()
    half = CLIP(**TINY_224).eval()
    half.load_state_dict(full.state_dict())
    half.half()
    token_ids = torch.from_numpy(tokenizer.tokenize(["a photo of a face", "she has black hair"]))
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        expected, got = tedigan_clip_loss(full, image, token_ids), tedigan_clip_loss(half, image, token_ids)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=2e-3)
