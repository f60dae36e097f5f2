from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_backends():
    from .backend import StarGAN256Backend, StarGANBackend

    return [StarGANBackend, StarGAN256Backend]


@hookimpl
def faceedit_parity_models():
    from .parity import PARITY_MODEL

    return [PARITY_MODEL]


@hookimpl
def faceedit_trainers():
    from .train import main

    return {"stargan": main}


@hookimpl
def faceedit_weights():
    from pathlib import Path

    from napari_faceedit.weights import WeightsCatalogue

    def generator(config: dict):
        from .model import Generator

        return Generator(**config)

    return [WeightsCatalogue.in_folder(Path(__file__).parent, {"stargan-celeba-128": generator,
                                                               "stargan-celeba-256": generator})]
