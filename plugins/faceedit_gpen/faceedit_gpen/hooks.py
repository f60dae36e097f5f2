from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_backends():
    from .backend import CompactRestoration, GPEN256, GPEN512, GPEN1024

    return [CompactRestoration, GPEN256, GPEN512, GPEN1024]


@hookimpl
def faceedit_parity_models():
    from .model import parity_model

    return [parity_model()]


@hookimpl
def faceedit_trainers():
    from .train import main

    return {"restorer": main}


@hookimpl
def faceedit_weights():
    from pathlib import Path

    from napari_faceedit.weights import WeightsCatalogue

    def full_generator(config: dict):
        from .model import FullGenerator

        return FullGenerator(**config)

    builders = {weights_id: full_generator for weights_id in ("gpen-bfr-256", "gpen-bfr-512", "gpen-bfr-1024")}
    return [WeightsCatalogue.in_folder(Path(__file__).parent, builders)]
