from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_parity_models():
    from .parity_clip import CLIP_PARITY
    from .parity_stylegan import ENCODER_PARITY, STYLEGAN_PARITY

    return [CLIP_PARITY, STYLEGAN_PARITY, ENCODER_PARITY]


@hookimpl
def faceedit_weights():
    from pathlib import Path

    from napari_faceedit.weights import WeightsCatalogue

    def clip(config: dict):
        from .clip import build_clip

        return build_clip(config)

    def generator(config: dict):
        from .stylegan import StyleGANGenerator

        return StyleGANGenerator.from_official_config(config)

    def encoder(config: dict):
        from .encoder import StyleGANEncoder

        return StyleGANEncoder.from_official_config(config)

    def bpe_merges(path: Path, config: dict):
        from .clip_tokenizer import read_merges

        read_merges(path)  # raises unless it holds CLIP's 48,894 merge rules

    return [WeightsCatalogue.in_folder(Path(__file__).parent, {
        "clip-vit-b32": clip, "tedigan-ffhq256-generator": generator, "tedigan-ffhq256-encoder": encoder},
        checkers={"clip-bpe-vocab": bpe_merges})]


@hookimpl
def faceedit_backends():
    from .backend import TediGANBackend

    return [TediGANBackend]
