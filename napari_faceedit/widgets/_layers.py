"""napari layer <-> core array conversions. The only module that knows how layers map to requests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..tasks import Result
from ..vocab import FACE_CLASSES

PROVENANCE_KEY = "faceedit_provenance"
# A parse result's labels as parsed: what "Render from labels" compares the painted labels with.
PARSED_LABELS_KEY = "faceedit_parsed_labels"


def face_label_colormap():
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[Any, Any] = {c.index: np.array([*c.color, 255]) / 255.0 for c in FACE_CLASSES}
    colors[0] = np.zeros(4)  # background shows the photo through
    colors[None] = np.zeros(4)
    return DirectLabelColormap(color_dict=colors)


def face_label_features() -> dict[str, list]:
    return {
        "index": [c.index for c in FACE_CLASSES],
        "name": [c.name for c in FACE_CLASSES],
        "description": [c.description for c in FACE_CLASSES],
    }


def face_labels_kwargs(name: str, like=None) -> dict:
    """Keyword arguments for ``viewer.add_labels`` of a layer holding our 19 named face classes."""
    kwargs = dict(name=name, colormap=face_label_colormap(), features=face_label_features(), opacity=0.6,
                  metadata={"faceedit_vocabulary": "celebamask-hq-19"})
    if like is not None:
        kwargs.update(scale=like.scale, translate=like.translate)
    return kwargs


def image_array(layer) -> np.ndarray:
    """The pixels of an Image layer as a fresh array, with a clear error for what we cannot edit."""
    from ..tasks import check_image_size

    if layer is None:
        raise ValueError("select an image layer first")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if len(data.shape) >= 2:  # before np.asarray: a lazy (dask, zarr) layer is not loaded to be refused
        check_image_size(data.shape[1], data.shape[0], what=f"layer '{layer.name}'")
    data = np.asarray(data)
    if layer.rgb:
        if data.ndim != 3:
            raise ValueError(f"layer '{layer.name}' is an RGB stack of shape {data.shape}; select a single 2-D image")
        return data.copy()
    if data.ndim != 2:
        raise ValueError(f"layer '{layer.name}' has shape {data.shape}; select a single 2-D RGB or grayscale image")
    return data.copy()


def mask_array(layer, shape: tuple[int, int]) -> np.ndarray:
    """A hole mask from a Shapes layer (filled shapes) or a Labels layer (non-zero pixels)."""
    if layer is None:
        raise ValueError("select the layer holding the region to complete (Shapes or Labels)")
    if layer._type_string == "shapes":
        if len(layer.data) == 0:
            raise ValueError(f"shapes layer '{layer.name}' is empty: draw the region first")
        return np.asarray(layer.to_masks(mask_shape=shape)).any(axis=0)
    data = np.asarray(layer.data)
    if data.shape != tuple(shape):
        raise ValueError(f"region layer '{layer.name}' has shape {data.shape}, but the image is {tuple(shape)}")
    return data != 0


def labels_array(layer, shape: tuple[int, int]) -> np.ndarray:
    data = np.asarray(layer.data)
    if data.shape != tuple(shape):
        raise ValueError(f"labels layer '{layer.name}' has shape {data.shape}, but the image is {tuple(shape)}")
    return data.copy()


@dataclass(frozen=True)
class InputInfo:
    """What a run needs to remember about its input layer: captured when Run is pressed."""

    name: str
    scale: tuple
    translate: tuple

    @classmethod
    def of(cls, layer) -> "InputInfo":
        return cls(layer.name, tuple(layer.scale), tuple(layer.translate))


@dataclass(frozen=True)
class LayerSpec:
    """One layer to add: ``viewer.add_<kind>(data, **kwargs)``."""

    kind: str  # "image", "labels", "points" or "shapes"
    data: Any
    kwargs: dict

    def add_to(self, viewer):
        return getattr(viewer, f"add_{self.kind}")(self.data, **self.kwargs)


def result_layer_specs(result: Result, source: InputInfo, task: str, backend: str) -> list[LayerSpec]:
    """The layers showing a result, named after input, task and backend, with all their data computed.
    Runs in the worker thread, so that the GUI thread only adds layers (never touches existing ones)."""
    provenance = result.provenance.to_dict() if result.provenance else {}
    base = f"{source.name} · {task} · {backend}"
    common = dict(scale=source.scale, translate=source.translate, metadata={PROVENANCE_KEY: provenance})
    specs = []
    if result.image is not None:
        specs.append(LayerSpec("image", result.image, dict(name=base, rgb=True, **common)))
    if result.labels is not None:
        labels = np.asarray(result.labels).astype(np.uint8)
        kwargs = face_labels_kwargs(base + " labels")
        kwargs["metadata"] = {**kwargs["metadata"], **common["metadata"]}
        if task == "parse":
            kwargs["metadata"][PARSED_LABELS_KEY] = labels.copy()
        kwargs.update(scale=source.scale, translate=source.translate)
        specs.append(LayerSpec("labels", labels, kwargs))
    for key, array in result.extras.items():
        array = np.asarray(array)
        meta = {PROVENANCE_KEY: provenance}
        if key == "landmarks" and array.ndim == 3 and array.shape[-1] == 2:  # (faces, 5, x/y) -> napari (y, x)
            # napari keeps features as a pandas table: built here, so that pandas' first import (~0.3 s)
            # and the conversion happen in the worker, not in the GUI thread.
            import pandas as pd

            points = array.reshape(-1, 2)[:, ::-1]
            face = pd.DataFrame({"face": np.repeat(np.arange(len(array)), array.shape[1])})
            specs.append(LayerSpec("points", points, dict(
                name=f"{base} landmarks", size=4, face_color="yellow", features=face,
                scale=source.scale, translate=source.translate, metadata=meta)))
        elif key == "boxes" and array.ndim == 2 and array.shape[1] == 4:  # (faces, x0 y0 x1 y1)
            rectangles = [np.array([[y0, x0], [y1, x1]]) for x0, y0, x1, y1 in array]
            specs.append(LayerSpec("shapes", rectangles, dict(
                shape_type="rectangle", name=f"{base} faces", edge_color="yellow", face_color="transparent",
                edge_width=2, scale=source.scale, translate=source.translate, metadata=meta)))
        elif array.dtype == np.uint8 and array.ndim in (3, 4) and array.shape[-1] == 3:
            # Crops (N, S, S, 3) or another photo; an upscaled photo is shown over the input at its size.
            factor = array.shape[0] / result.image.shape[0] if (array.ndim == 3 and result.image is not None) else 1.0
            scale = tuple(s / factor for s in source.scale) if array.ndim == 3 else None
            specs.append(LayerSpec("image", array, dict(
                name=f"{base} {key}", rgb=True, metadata=meta, visible=False,
                **({"scale": scale, "translate": source.translate} if scale else {}))))
    return specs
