from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_parity_models():
    from .parity import PARITY_MODEL

    return [PARITY_MODEL]


@hookimpl
def faceedit_backends():
    from .backend import MaskGuidedEditing
    from .compact_backend import LearnedMaskGuided

    return [MaskGuidedEditing, LearnedMaskGuided]


@hookimpl
def faceedit_trainers():
    from .train import main

    return {"maskguided": main}


@hookimpl
def faceedit_weights():
    from functools import partial
    from pathlib import Path

    from napari_faceedit.weights import WeightsCatalogue, read_catalogue_file

    def network(label: str, config: dict):
        from .model import NETWORK_CLASSES

        return NETWORK_CLASSES[label]()

    folder = Path(__file__).parent
    # Each entry's file is one network of the authors' model: latest_net_<label>.pth.
    entries = read_catalogue_file(folder / "weights.toml")
    builders = {weights_id: partial(network, item.file_name[len("latest_net_"):-len(".pth")])
                for weights_id, item in entries.items()}
    return [WeightsCatalogue.in_folder(folder, builders)]
