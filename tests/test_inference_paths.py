"""The optimised inference paths the backends run (folded norms, fused epilogues, channels-last,
pooled-token transformer ends): parity fixtures pass on them, preparing twice changes nothing,
gradients still flow where TediGAN needs them, and the backends use them."""
from __future__ import annotations

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import require_shared  # noqa: E402
from napari_faceedit.parity import check_folder, main as parity_main  # noqa: E402

# (parity model name, fixture folder): every faithful network with a separate optimised path.
OPTIMISED_NETWORKS = [
    ("stargan", "stargan"),
    ("bisenet", "bisenet"),
    ("gpen", "gpen"),
    ("clip_vit_b32", "clip_vit_b32"),
    ("tedigan_stylegan_ffhq256", "tedigan_stylegan_ffhq256"),
    ("tedigan_encoder_ffhq256", "tedigan_encoder_ffhq256"),
]


@pytest.fixture(scope="module")
def parity_models():
    from napari_faceedit.registry import get_registry

    return get_registry().parity_models()


@pytest.mark.parametrize("name, folder", OPTIMISED_NETWORKS)
def test_parity_fixtures_pass_on_the_optimised_path(parity_models, name, folder):
    spec = parity_models[name]
    assert spec.optimise is not None, f"{name} has no optimised path to check"
    log = io.StringIO()
    assert check_folder(spec, require_shared("parity", folder), out=log, optimised=True), log.getvalue()
    assert " ok" in log.getvalue() and "FAIL" not in log.getvalue()


def test_maskguided_checks_its_one_inference_path(parity_models):
    # Its parity model already runs the backend's folded, channels-last path.
    log = io.StringIO()
    assert check_folder(parity_models["maskguided_helen"], require_shared("parity", "maskguided_helen"), out=log,
                        optimised=True), log.getvalue()


def test_parity_cli_optimised_flag(capsys):
    folder = require_shared("parity", "stargan")
    assert parity_main(["stargan", str(folder), "--optimised"]) == 0
    assert capsys.readouterr().out.strip().endswith("PASS")


def _same(a, b, tolerance=1e-4):
    a, b = (x[0] if isinstance(x, tuple) else x for x in (a, b))
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= tolerance * max(scale, 1e-12)


# -- prepare twice: no double folding ----------------------------------------------------------------
def test_stargan_prepared_matches_plain_in_both_modes_and_twice():
    from faceedit_stargan.model import Generator, prepare_for_inference

    torch.manual_seed(0)
    plain = Generator(8, 5, 2).eval()
    fast = prepare_for_inference(prepare_for_inference(copy.deepcopy(plain)))
    x, c = torch.rand(1, 3, 32, 32) * 2 - 1, torch.tensor([[1.0, 0, 0, 1, 0]])
    for mode in ("instance", "running"):
        plain.norm_mode = fast.norm_mode = mode
        with torch.no_grad():
            _same(fast(x, c), plain(x, c))
    assert set(fast.state_dict()) == set(plain.state_dict())  # keys unchanged: loads still work


def test_bisenet_prepared_twice_and_backend_crop_labels():
    from faceedit_parsing.backend import bisenet_parse_crop
    from faceedit_parsing.bisenet import BiSeNet, prepare_for_inference

    torch.manual_seed(0)
    plain = BiSeNet(19).eval()
    for module in plain.modules():  # non-trivial running statistics, so folding is visible
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    fast = prepare_for_inference(prepare_for_inference(copy.deepcopy(plain)))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        _same(fast.parse_logits(x), plain(x)[0])
    crop = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    ours, reference = bisenet_parse_crop(fast, crop), bisenet_parse_crop(plain, crop)
    assert ours.shape == (64, 48) and np.mean(ours == reference) > 0.999


def test_gpen_prepared_twice_equals_plain():
    from faceedit_gpen.model import FullGenerator, prepare_for_inference

    torch.manual_seed(0)
    plain = FullGenerator(size=64, style_dim=32, n_mlp=2, channel_multiplier=1, narrow=0.0625).eval()
    with torch.no_grad():
        for module in plain.modules():  # visible noise injection
            if type(module).__name__ == "NoiseInjection":
                module.weight.fill_(0.5)
    fast = prepare_for_inference(prepare_for_inference(copy.deepcopy(plain)))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        _same(fast(x), plain(x))


def test_tedigan_generator_prepared_twice_and_gradients_to_the_code():
    from faceedit_tedigan.stylegan import StyleGANGenerator, prepare_for_inference

    torch.manual_seed(0)
    plain = StyleGANGenerator(resolution=64, fmaps_base=512, fmaps_max=64).eval()
    with torch.no_grad():  # magnitudes away from underflow (the default init leaves the styles ~0)
        for name, parameter in plain.named_parameters():
            if "apply_noise.weight" in name or name.endswith("style_mod.dense.wscale.bias"):
                parameter.normal_(0, 0.3)
    plain.requires_grad_(False)
    fast = prepare_for_inference(prepare_for_inference(copy.deepcopy(plain)))
    wp = plain.truncate(plain.map(torch.randn(1, plain.z_dim)))
    grads = []
    for model in (plain, fast):
        code = wp.clone().requires_grad_(True)
        image = model.synthesize(code)
        image.square().mean().backward()
        grads.append((image.detach(), code.grad))
    _same(grads[1][0], grads[0][0])
    _same(grads[1][1], grads[0][1], tolerance=1e-3)


def test_tedigan_encoder_prepared_twice_equals_plain():
    from faceedit_tedigan.encoder import StyleGANEncoder, prepare_for_inference

    torch.manual_seed(0)
    plain = StyleGANEncoder(resolution=32, channels_base=16, channels_max=64).eval()
    for module in plain.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    fast = prepare_for_inference(prepare_for_inference(copy.deepcopy(plain)))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        _same(fast(x), plain(x))


def test_clip_prepared_text_image_and_gradients_to_the_image():
    from faceedit_tedigan.clip import CLIP, prepare_for_inference, tedigan_clip_loss

    torch.manual_seed(0)
    config = dict(embed_dim=32, image_resolution=224, vision_layers=2, vision_width=64, vision_patch_size=32,
                  context_length=16, vocab_size=100, transformer_width=32, transformer_heads=4, transformer_layers=2)
    plain = CLIP(**config).eval().requires_grad_(False)
    fast = prepare_for_inference(copy.deepcopy(plain))
    tokens = torch.zeros(2, 16, dtype=torch.long)
    tokens[0, :5] = torch.tensor([97, 5, 6, 7, 99])  # end-of-text (largest id) at 4 and at 2
    tokens[1, :3] = torch.tensor([97, 8, 99])
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _same(fast.encode_text(tokens), plain.encode_text(tokens))
        _same(fast.encode_image(image), plain.encode_image(image))
    grads, text_features = [], torch.randn(1, 32)
    for model in (plain, fast):  # TediGAN's loop: the image tower with gradients (F.linear path)
        x = torch.tanh(image[:, :, ::4, ::4]).clone().requires_grad_(True)  # a 56 px "generator image"
        tedigan_clip_loss(model, x, text_features=text_features).sum().backward()
        grads.append(x.grad)
    _same(grads[1], grads[0], tolerance=1e-3)


def test_maskguided_split_decode_equals_concatenation():
    from faceedit_maskguided.inference import decode
    from faceedit_maskguided.model import MaskGuidedGenerator

    torch.manual_seed(0)
    generator = MaskGuidedGenerator(ngf=8, n_blocks=1, embed_nc=40).eval()
    face, background = torch.randn(1, 8, 32, 32), torch.randn(1, 8, 32, 32)
    with torch.no_grad():
        _same(decode(generator, face, background), generator.decode(face, background))
