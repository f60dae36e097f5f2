"""Default reference networks for ``benchmarks/run.py``: each network computed the straightforward way.

The official implementations are not installed here (and cannot be fetched offline). This module
stands in for them: our key-compatible modules exactly as the parity fixtures check them, with no
inference optimisation, doing the work the official test code does (the same layers and operations,
batch norm separate, NCHW, ``torch.no_grad()`` as in the authors' scripts, every output head the
official forward computes). Where our plain module already differs from the official CPU code, the
official operations are used here instead: GPEN's FIR filters run as the official CPU fallback does
(zero insertion, padding, a one-channel convolution over channels moved into the batch).

Plugging in the official code: write a module with the same ``build_<case>`` functions and pass it as
``python benchmarks/run.py --reference your.module``. Each builder receives

* ``state``: the network's state dict in the official key layout (our modules are key-compatible;
  mask-guided editing: ``"<checkpoint label>.<key>"`` for its 11 test-time networks);
* ``inputs``: the case's inputs (tensors/arrays, see ``perf_cases.py``);

and returns a zero-argument callable running one forward pass (batch 1) the way the official code
does. A builder that is missing, or a module that does not import, makes run.py time ours alone.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

Run = Callable[[], Any]


def _no_grad(function: Callable[[], Any]) -> Run:
    def run():
        with torch.no_grad():
            return function()
    return run


def _loaded(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    model.load_state_dict(state, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------- StarGAN
def _stargan(state: dict, inputs: dict) -> Run:
    from faceedit_stargan.model import Generator

    generator = _loaded(Generator(64, 5, 6), state)  # per-image statistics: the authors' test script
    return _no_grad(lambda: generator(inputs["image"], inputs["labels"]))


build_stargan_128 = _stargan
build_stargan_256 = _stargan


# ------------------------------------------------------------------------------------------- BiSeNet
def build_bisenet(state: dict, inputs: dict) -> Run:
    from faceedit_parsing.bisenet import BiSeNet

    model = _loaded(BiSeNet(19), state)
    return _no_grad(lambda: model(inputs["image"]))  # the official forward: all three heads, full size


# ---------------------------------------------------------------------------------------------- GPEN
def upfirdn2d_official_cpu(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
                           pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """upfirdn2d the way GPEN's CPU fallback computes it: channels last, zero insertion by padding a
    unit axis, padding (negative = cropping), then every channel map filtered as its own batch item by
    a one-channel convolution with the flipped kernel, then every ``down``-th sample."""
    batch, channels, height, width = x.shape
    taps_h, taps_w = kernel.shape
    pad0, pad1 = pad
    out = x.permute(0, 2, 3, 1).reshape(-1, height, 1, width, 1, channels)
    out = F.pad(out, [0, 0, 0, up - 1, 0, 0, 0, up - 1])
    out = out.reshape(-1, height * up, width * up, channels)
    out = F.pad(out, [0, 0, max(pad0, 0), max(pad1, 0), max(pad0, 0), max(pad1, 0)])
    out = out[:, max(-pad0, 0):out.shape[1] - max(-pad1, 0), max(-pad0, 0):out.shape[2] - max(-pad1, 0), :]
    out = out.permute(0, 3, 1, 2).reshape(-1, 1, height * up + pad0 + pad1, width * up + pad0 + pad1)
    out = F.conv2d(out, torch.flip(kernel, (0, 1)).view(1, 1, taps_h, taps_w).to(out.dtype))
    out = out.reshape(batch, channels, out.shape[2], out.shape[3])
    return out[:, :, ::down, ::down]


def use_official_fir(model: torch.nn.Module) -> torch.nn.Module:
    """Replace our FIR filters (one grouped conv / conv_transpose) by the official CPU formulation."""
    from faceedit_gpen.model import Blur, Upsample

    for module in model.modules():
        if isinstance(module, Blur):
            module.forward = (lambda m: lambda x: upfirdn2d_official_cpu(x, m.kernel, pad=m.pad))(module)
        elif isinstance(module, Upsample):
            module.forward = (lambda m: lambda x: upfirdn2d_official_cpu(x, m.kernel, up=2, pad=m.pad))(module)
    return model


def _gpen(size: int) -> Callable[[dict, dict], Run]:
    def build(state: dict, inputs: dict) -> Run:
        from faceedit_gpen.model import BFR_CONFIGS, FullGenerator

        model = use_official_fir(_loaded(FullGenerator(**BFR_CONFIGS[size]), state))
        return _no_grad(lambda: model(inputs["image"]))
    return build


build_gpen_256 = _gpen(256)
build_gpen_512 = _gpen(512)


# ----------------------------------------------------------------------------------- mask-guided edit
def build_maskguided_edit(state: dict, inputs: dict) -> Run:
    """The authors' test-time inference: preprocessing, both renders (the style photo's
    reconstruction and the edit) and the logvar heads, with the checkpoints' layers."""
    from faceedit_maskguided import preprocess as pp
    from faceedit_maskguided.inference import edit_prepared, prepare_for_inference
    from faceedit_maskguided.model import EditingNetworks

    networks = prepare_for_inference(_loaded(EditingNetworks(), state), fold=False, channels_last=False)

    def run():
        style = pp.prepare_face(inputs["photo"], inputs["source_labels"])
        layout = pp.prepare_layout(inputs["target_labels"])
        outputs = edit_prepared(networks, style, layout, reconstruct=True, with_logvar=True)
        return outputs["output_content"]
    return _no_grad(run)


# ---------------------------------------------------------------------------------------------- CLIP
def build_clip_image(state: dict, inputs: dict) -> Run:
    from faceedit_tedigan.clip import CLIP

    model = _loaded(CLIP(), state)
    return _no_grad(lambda: model.encode_image(inputs["image"]))


def build_clip_text(state: dict, inputs: dict) -> Run:
    from faceedit_tedigan.clip import CLIP

    model = _loaded(CLIP(), state)
    return _no_grad(lambda: model.encode_text(inputs["token_ids"]))  # all 77 positions, as tokenize() pads


# ------------------------------------------------------------------------------------------- TediGAN
def build_tedigan_generator(state: dict, inputs: dict) -> Run:
    from faceedit_tedigan.stylegan import StyleGANGenerator

    generator = _loaded(StyleGANGenerator.from_official_config(inputs["config"]), state)
    return _no_grad(lambda: generator.synthesize(inputs["wp"]))


def build_tedigan_encoder(state: dict, inputs: dict) -> Run:
    from faceedit_tedigan.encoder import StyleGANEncoder

    encoder = _loaded(StyleGANEncoder.from_official_config(inputs["config"]), state)
    return _no_grad(lambda: encoder(inputs["image"]))
