"""The networks ``benchmarks/run.py`` times: weights, inputs and our optimisation steps per network.

Every case gives identical weights and inputs to the reference (``perf_reference.py`` or a plugged-in
module) and to ours. Weights follow the parity fixtures' deterministic formula from the official key
lists in ``../shared/parity`` (realistic magnitudes: the default initialisation of some of these
networks underflows into denormal floats, which would time the CPU's denormal handling instead);
without ``../shared`` the modules' own initialisation is used and the results say so.

``steps`` are ours, cumulative: each adds one optimisation to the previous one, the last is the
path the backend runs. Steps with ``kept=False`` were tried and are not used (the reason is given).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "parity"
Run = Callable[[], Any]


@dataclass(frozen=True)
class Step:
    label: str
    build: Callable[[dict, dict], Run]  # (state, inputs) -> run
    kept: bool = True
    note: str = ""


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    make_model: Callable[[dict], torch.nn.Module]  # inputs -> an unloaded module (for weights)
    key_file: str  # relative to ../shared/parity
    rescaled: bool
    make_inputs: Callable[[], dict]
    steps: tuple[Step, ...]
    ours_does: str  # what our last step computes, where it differs from the reference's work
    extra: dict = field(default_factory=dict)


def inference(function: Callable[[], Any]) -> Run:
    def run():
        with torch.inference_mode():
            return function()
    return run


def weights_and_note(case: Case, inputs: dict) -> tuple[dict, str]:
    """(state dict, where it came from) for ``case``."""
    model = case.make_model(inputs)
    key_file = PARITY / case.key_file
    if key_file.exists():
        from napari_faceedit.parity import read_keys, synth_state_dict

        state = synth_state_dict(read_keys(key_file), model, rescaled=case.rescaled)
        return {k: v.clone() for k, v in state.items()}, f"parity formula from {case.key_file}" + (
            " (rescaled variant)" if case.rescaled else "")
    torch.manual_seed(0)
    return model.state_dict(), "module default initialisation (../shared/parity absent)"


def loaded(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    model.load_state_dict(copy.deepcopy(state), strict=True)
    return model.eval()


def uniform_image(size: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (1, 3, size, size)).astype(np.float32))


# ------------------------------------------------------------------------------------------- StarGAN
def stargan_case(size: int) -> Case:
    from faceedit_stargan.model import Generator, prepare_for_inference

    def plain(context):
        def build(state, inputs):
            model = loaded(Generator(64, 5, 6), state)
            return context(lambda: model(inputs["image"], inputs["labels"]))
        return build

    def fast(channels_last):
        def build(state, inputs):
            model = prepare_for_inference(loaded(Generator(64, 5, 6), state), channels_last=channels_last)
            return inference(lambda: model(inputs["image"], inputs["labels"]))
        return build

    return Case(
        f"stargan_{size}", f"StarGAN generator, CelebA {size}x{size}", lambda inputs: Generator(64, 5, 6),
        "stargan/keys.tsv", False,
        lambda: {"image": uniform_image(size), "labels": torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0]])},
        (Step("torch.inference_mode()", plain(inference)),
         Step("instance norm by the group-norm kernel", fast(False)),
         Step("channels-last weights", fast(True))),
        "the same layers")


# ------------------------------------------------------------------------------------------- BiSeNet
def bisenet_case() -> Case:
    from faceedit_parsing.bisenet import BiSeNet, prepare_for_inference
    from napari_faceedit.folding import fold_batchnorm

    def folded(channels_last, main_head_only):
        def build(state, inputs):
            model = loaded(BiSeNet(19), state)
            if channels_last:
                prepare_for_inference(model)
            else:
                fold_batchnorm(model.requires_grad_(False))
            if main_head_only:
                return inference(lambda: model.parse_logits(inputs["image"]))
            return inference(lambda: model(inputs["image"]))
        return build

    return Case(
        "bisenet", "BiSeNet face parser, 512x512", lambda inputs: BiSeNet(19), "bisenet/keys.tsv", False,
        lambda: {"image": torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 512, 512)).astype(np.float32))},
        (Step("batch norm folded into convolutions", folded(False, False)),
         Step("channels-last weights", folded(True, False)),
         Step("main head only (auxiliary heads are for training)", folded(True, True))),
        "the main head only (the logits the backend uses)")


# ---------------------------------------------------------------------------------------------- GPEN
def gpen_case(size: int) -> Case:
    from faceedit_gpen.model import BFR_CONFIGS, FullGenerator, prepare_for_inference

    def ours(level):
        def build(state, inputs):
            model = loaded(FullGenerator(**BFR_CONFIGS[size]), state)
            if level == "plain":
                model.requires_grad_(False)
            else:
                prepare_for_inference(model, channels_last=level == "channels_last")
            return inference(lambda: model(inputs["image"]))
        return build

    return Case(
        f"gpen_{size}", f"GPEN-BFR-{size} FullGenerator", lambda inputs: FullGenerator(**BFR_CONFIGS[size]),
        f"gpen/keys_bfr{size}.tsv", True, lambda: {"image": uniform_image(size)},
        (Step("FIR filters as one grouped (transposed) convolution", ours("plain")),
         Step("scales, bias and activation gain folded; fused concat+bias+LeakyReLU", ours("folded")),
         Step("channels-last weights", ours("channels_last"))),
        "the same layers")


# ----------------------------------------------------------------------------------- mask-guided edit
def maskguided_case() -> Case:
    from faceedit_maskguided import preprocess as pp
    from faceedit_maskguided.inference import edit, edit_prepared, prepare_for_inference
    from faceedit_maskguided.model import EditingNetworks

    def make_inputs():
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from maskguided_speed import inputs as maskguided_inputs

        source, photo, source_labels, target_labels = maskguided_inputs()
        return {"photo": photo, "source_labels": source_labels, "target_labels": target_labels,
                "inputs_from": source}

    def edit_only(state, inputs):
        networks = prepare_for_inference(loaded(EditingNetworks(), state), fold=False, channels_last=False)

        def run():
            style = pp.prepare_face(inputs["photo"], inputs["source_labels"])
            return edit_prepared(networks, style, pp.prepare_layout(inputs["target_labels"]))["output_content"]
        return inference(run)

    def folded(channels_last):
        def build(state, inputs):
            networks = prepare_for_inference(loaded(EditingNetworks(), state), fold=True, channels_last=channels_last)
            return inference(lambda: edit(networks, inputs["photo"], inputs["source_labels"], inputs["target_labels"]))
        return build

    return Case(
        "maskguided_edit", "Mask-guided editing (Gu et al.), one 256x256 edit, 11 networks",
        lambda inputs: EditingNetworks(), "maskguided_helen/fixture_keys.tsv", False, make_inputs,
        (Step("the edit only (no style reconstruction, no logvar heads)", edit_only),
         Step("batch norm folded into convolutions", folded(False)),
         Step("channels-last weights", folded(True))),
        "one render (the edit) instead of two, no logvar heads, uint8 output")


# ---------------------------------------------------------------------------------------------- CLIP
def _clip_inputs() -> dict:
    from faceedit_tedigan.clip_tokenizer import CLIPTokenizer

    vocab = PARITY / "clip_vit_b32" / "bpe_simple_vocab_16e6.txt.gz"
    prompt = "a smiling woman with blond hair"
    if vocab.exists():
        token_ids = torch.from_numpy(CLIPTokenizer(vocab).tokenize([prompt], context_length=77))
    else:  # start, 6 words, end: the same length
        token_ids = torch.zeros(1, 77, dtype=torch.long)
        token_ids[0, :8] = torch.tensor([49406, 320, 9200, 2308, 593, 8625, 2225, 49407])
    image = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    return {"image": image, "token_ids": token_ids, "prompt": prompt}


def clip_case(tower: str) -> Case:
    from faceedit_tedigan.clip import CLIP, prepare_for_inference

    def build_step(level):
        def build(state, inputs):
            model = loaded(CLIP(), state)
            if level != "plain":
                prepare_for_inference(model, onednn_linear=level == "onednn")
            if tower == "image":
                return inference(lambda: model.encode_image(inputs["image"]))
            return inference(lambda: model.encode_text(inputs["token_ids"]))
        return build

    pooled = ("last block at the class token only" if tower == "image"
              else "text cut after the end-of-text token; last block at that token only")
    return Case(
        f"clip_{tower}", f"CLIP ViT-B/32 {tower} tower" + (" (224x224)" if tower == "image" else " (one prompt)"),
        lambda inputs: CLIP(), "clip_vit_b32/keys.tsv", False, _clip_inputs,
        (Step("torch.inference_mode()", build_step("plain")),
         Step(pooled, build_step("pooled")),
         Step("oneDNN matmul for the linear layers (no-gradient calls)", build_step("onednn"))),
        "the pooled output only" + ("" if tower == "image" else ", over the prompt's tokens (not 77)"))


# ------------------------------------------------------------------------------------------- TediGAN
def _official_config(folder: str, fallback: dict) -> dict:
    path = PARITY / folder / "config.json"
    return json.loads(path.read_text())["constructor"] if path.exists() else fallback


def tedigan_generator_case() -> Case:
    from faceedit_tedigan.stylegan import StyleGANGenerator, prepare_for_inference

    fallback = {"resolution": 256, "repeat_w": False, "final_tanh": True}

    def make_inputs():
        config = _official_config("tedigan_stylegan_ffhq256", fallback)
        return {"config": config}

    def finish_inputs(state, inputs):
        # W+ from the loaded mapping network (seed 0), truncated: what TediGAN's generation starts from.
        if "wp" not in inputs:
            generator = loaded(StyleGANGenerator.from_official_config(inputs["config"]), state)
            with torch.no_grad():
                z = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32))
                inputs["wp"] = generator.truncate(generator.map(z))
        return inputs

    def build_step(level):
        def build(state, inputs):
            model = loaded(StyleGANGenerator.from_official_config(inputs["config"]), state)
            model.requires_grad_(False)
            if level != "plain":
                prepare_for_inference(model, channels_last=level == "channels_last")
            return inference(lambda: model.synthesize(inputs["wp"]))
        return build

    return Case(
        "tedigan_generator", "TediGAN StyleGAN synthesis, FFHQ 256 (W+ -> image)",
        lambda inputs: StyleGANGenerator.from_official_config(inputs["config"]),
        "tedigan_stylegan_ffhq256/keys.tsv", True, make_inputs,
        (Step("torch.inference_mode()", build_step("plain")),
         Step("folded scales, transposed-conv upsampling, fused epilogue (group norm)", build_step("fused")),
         Step("channels-last weights", build_step("channels_last"), kept=False,
              note="faster, but oneDNN's NHWC 3x3 convolutions round differently and 14 instance norms "
                   "amplify it past the parity tolerance (1.3e-3 vs 1e-4 on fixture.npz)")),
        "the same layers", extra={"finish_inputs": finish_inputs})


def tedigan_encoder_case() -> Case:
    from faceedit_tedigan.encoder import StyleGANEncoder, prepare_for_inference

    fallback = {"resolution": 256}

    def build_step(level):
        def build(state, inputs):
            model = loaded(StyleGANEncoder.from_official_config(inputs["config"]), state)
            model.requires_grad_(False)
            if level != "plain":
                prepare_for_inference(model, channels_last=level != "folded", gemm_small_convs=level == "gemm")
            return inference(lambda: model(inputs["image"]))
        return build

    return Case(
        "tedigan_encoder", "TediGAN encoder, FFHQ 256 (image -> W+)",
        lambda inputs: StyleGANEncoder.from_official_config(inputs["config"]),
        "tedigan_encoder_ffhq256/keys.tsv", True,
        lambda: {"config": _official_config("tedigan_encoder_ffhq256", fallback), "image": uniform_image(256)},
        (Step("batch norm (and conv bias / dense scale) folded", build_step("folded")),
         Step("channels-last weights", build_step("channels_last")),
         Step("1024-channel 3x3 convolutions on 8x8 and 4x4 maps as im2col + GEMM", build_step("gemm"))),
        "the same layers")


CASE_FACTORIES: dict[str, Callable[[], Case]] = {
    "stargan_128": lambda: stargan_case(128),
    "stargan_256": lambda: stargan_case(256),
    "bisenet": bisenet_case,
    "gpen_256": lambda: gpen_case(256),
    "gpen_512": lambda: gpen_case(512),
    "maskguided_edit": maskguided_case,
    "clip_image": lambda: clip_case("image"),
    "clip_text": lambda: clip_case("text"),
    "tedigan_generator": tedigan_generator_case,
    "tedigan_encoder": tedigan_encoder_case,
}


def prepared_inputs(case: Case) -> tuple[dict, dict, str]:
    """(state, inputs, weights note) for ``case``, the inputs completed from the weights if needed."""
    inputs = case.make_inputs()
    state, note = weights_and_note(case, inputs)
    finish = case.extra.get("finish_inputs")
    if finish is not None:
        inputs = finish(state, inputs)
    return state, inputs, note
