"""Test-time composition of Mask-Guided Portrait Editing (Gu et al. 2019).

An edit takes the appearance of every component (eyes, mouth, skin, hair) from a style photo and renders
it in a target label layout; the background comes from a content photo (by default the style photo
itself, which is what an in-place edit wants):

1. encode each component of the style photo (code = mu, no sampling) and decode it to a feature map;
2. place the eye/mouth maps at the target layout's part centres on zero 64x64 maps (skin and hair maps
   are used whole);
3. G: label feature of the target layout + the five maps -> face features;
4. fuse with the content photo's background features (where the target layout is background) -> RGB.

``reconstruct=True`` also renders the style photo's own layout over its own background (the authors'
first return value); an edit does not need it.

Typical use from a backend::

    networks = prepare_for_inference(EditingNetworks.from_checkpoints(folder))
    edited = edit_celebamask(networks, image_u8, source_labels19, target_labels19)   # (256, 256, 3) uint8
"""
from __future__ import annotations

import numpy as np
import torch

from napari_faceedit.folding import fold_batchnorm

from . import preprocess as pp
from .model import COMPONENTS, FEATURE_CHANNELS, EditingNetworks

EYE_FEATURE = (8, 12)
MOUTH_FEATURE = (20, 36)
FEATURE_SIZE = pp.IMAGE_SIZE // pp.FEATURE_STRIDE
PLACED_COMPONENTS = {"left_eye": EYE_FEATURE, "right_eye": EYE_FEATURE, "mouth": MOUTH_FEATURE}


def prepare_for_inference(networks: EditingNetworks, fold: bool = True, channels_last: bool = True,
                          split_decode: bool | None = None) -> EditingNetworks:
    """eval(), no gradients, BatchNorm folded into the convolutions and channels-last convolution weights
    (faster on CPU), all in place and each within float rounding of the
    checkpoint's function. Load the checkpoints first: folding changes the state-dict keys.
    ``split_decode`` (default: as ``fold``): the background decoder's first 1x1 convolution applied to
    the face and background features separately (see :func:`decode`), never building their concatenation."""
    networks.eval().requires_grad_(False)
    networks.split_decode = fold if split_decode is None else split_decode
    if fold:
        fold_batchnorm(networks)
    if channels_last:
        networks.to(memory_format=torch.channels_last)
    return networks


def _tensor(array: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None].to(device)


def _record(record: dict | None, name: str, compute) -> None:
    """Store ``compute()`` (a tensor) as numpy; the reduction is only computed when recording."""
    if record is not None:
        record[name] = compute().detach().cpu().numpy().copy()


def _network_device(networks: EditingNetworks) -> torch.device:
    return next(networks.parameters()).device


def _channel_stats(record: dict | None, prefix: str, feature: torch.Tensor) -> None:
    _record(record, f"{prefix}_chmean", lambda: feature.mean(dim=(2, 3)))
    _record(record, f"{prefix}_chsum", lambda: feature.sum(dim=1, keepdim=True))


def encode_components(networks: EditingNetworks, style: pp.PreparedFace, record: dict | None = None,
                      with_logvar: bool = False) -> dict[str, torch.Tensor]:
    """Feature map of each component of the style photo: eyes 256x8x12, mouth 256x20x36, skin/hair 256x64x64."""
    device = _network_device(networks)
    inputs = pp.component_inputs(style.image, style.layout.labels, style.layout.centres)
    features = {}
    for component in COMPONENTS:
        x = _tensor(inputs[component], device)
        if component in PLACED_COMPONENTS:
            _record(record, f"crop_{component}", lambda: x)
        encoder = networks.encoder(component)
        if with_logvar or record is not None:
            mu, logvar = encoder(x)
            _record(record, f"logvar_{component}", lambda: logvar)
        else:
            mu = encoder.encode_mu(x)
        _record(record, f"mu_{component}", lambda: mu)
        feature = networks.decoder(component)(mu)
        _channel_stats(record, f"dec_{component}", feature)
        features[component] = feature
    return features


def placement_windows(centres: np.ndarray) -> dict[str, tuple[int, int, int, int]]:
    """(top, left, height, width) on the 64x64 feature map of the eye and mouth features: centred at the
    layout's part centres divided by 4, rounded half up."""
    windows = {}
    for component, (h, w) in PLACED_COMPONENTS.items():
        cy, cx = pp.feature_centre(*pp.part_centres(centres)[component])
        top, left = cy - h // 2, cx - w // 2
        if top < 0 or left < 0 or top + h > FEATURE_SIZE or left + w > FEATURE_SIZE:
            raise ValueError(f"{component} feature at ({cy}, {cx}) leaves the {FEATURE_SIZE}x{FEATURE_SIZE} map")
        windows[component] = (top, left, h, w)
    return windows


def generator_input(label_feature: torch.Tensor, features: dict[str, torch.Tensor],
                    centres: np.ndarray) -> torch.Tensor:
    """G's 1536-channel input: [label feature, left eye, right eye, skin, hair, mouth]. Eye and mouth maps
    sit on zeros at their windows; skin and hair are used whole. Written into one buffer in the label
    feature's memory format (no concatenation, no separate zero maps)."""
    channels_last = label_feature.is_contiguous(memory_format=torch.channels_last)
    out = torch.empty(label_feature.shape[0], FEATURE_CHANNELS * (1 + len(COMPONENTS)), FEATURE_SIZE, FEATURE_SIZE,
                      dtype=label_feature.dtype, device=label_feature.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format).zero_()
    out[:, :FEATURE_CHANNELS] = label_feature
    windows = placement_windows(centres)
    for i, component in enumerate(COMPONENTS, start=1):
        block = out[:, i * FEATURE_CHANNELS:(i + 1) * FEATURE_CHANNELS]
        feature = features[component]
        if component in windows:
            top, left, h, w = windows[component]
            if tuple(feature.shape[-2:]) != (h, w):
                raise ValueError(f"{component} feature map must be {h}x{w}, got {tuple(feature.shape[-2:])}")
            block[:, :, top:top + h, left:left + w] = feature
        else:
            block.copy_(feature)
    return out


def render(networks: EditingNetworks, features: dict[str, torch.Tensor], layout: pp.PreparedLayout,
           background_image: np.ndarray, record: dict | None = None, tag: str = "content",
           background_features: torch.Tensor | None = None) -> torch.Tensor:
    """Components in ``layout`` over ``background_image``'s background -> (1, 3, 256, 256) in [-1, 1].

    ``background_features`` (bg_encoder of ``background_image``, unmasked) may be passed to reuse them."""
    device = _network_device(networks)
    G = networks.G
    label_feature = G.encode_label(_tensor(pp.one_hot(layout.labels), device))
    _channel_stats(record, f"feat_label_{tag}", label_feature)
    g_input = generator_input(label_feature, features, layout.centres)
    blocks = [1 + COMPONENTS.index(c) for c in PLACED_COMPONENTS]
    _record(record, f"g_in_{tag}_placed", lambda: g_input.unflatten(1, (-1, FEATURE_CHANNELS))[:, blocks].sum(dim=2))
    face = G.generate_face(g_input)
    _record(record, f"g_out_{tag}_chmean", lambda: face.mean(dim=(2, 3)))
    mask = _tensor(pp.background_mask(layout.labels), device)
    if background_features is None:  # our own fresh tensor: mask it in place (16 MB less at the peak)
        background = G.encode_background(_tensor(background_image, device)).mul_(mask)
    else:
        background = background_features * mask
    _record(record, f"bgfeat_{tag}_chmean", lambda: background.mean(dim=(2, 3)))
    if getattr(networks, "split_decode", False):
        return decode(G, face, background)
    return G.decode(face, background)


def decode(G, face: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``G.decode(face, background)`` without materialising their 128-channel concatenation: the first
    layer of the background decoder is a 1x1 convolution, which splits into one per input."""
    first = G.bg_decoder[0]
    if not (isinstance(first, torch.nn.Conv2d) and first.kernel_size == (1, 1) and first.groups == 1):
        return G.decode(face, background)
    channels = face.shape[1]
    x = torch.nn.functional.conv2d(face, first.weight[:, :channels], first.bias)
    x = x.add_(torch.nn.functional.conv2d(background, first.weight[:, channels:]))
    return G.bg_decoder[1:](x)


def edit_prepared(networks: EditingNetworks, style: pp.PreparedFace, target: pp.PreparedLayout,
                  content_image: np.ndarray | None = None, reconstruct: bool = False,
                  record: dict | None = None, with_logvar: bool = False) -> dict[str, torch.Tensor]:
    """The authors' test-time inference on prepared inputs. Returns ``{"output_content": edit}`` and,
    with ``reconstruct``, ``"output_style"`` (style photo rendered in its own layout). ``record`` (a dict)
    receives the intermediates under the parity fixture's names; ``with_logvar`` also runs the logvar
    heads (unused by the edit; the authors compute them)."""
    with torch.inference_mode():
        features = encode_components(networks, style, record, with_logvar)
        same_photo = content_image is None or content_image is style.image
        content_image = style.image if content_image is None else content_image
        shared_background = None
        if same_photo and reconstruct:
            shared_background = networks.G.encode_background(_tensor(style.image, _network_device(networks)))
        outputs = {}
        if reconstruct:
            outputs["output_style"] = render(networks, features, style.layout, style.image, record, "style",
                                             shared_background)
        outputs["output_content"] = render(networks, features, target, content_image, record, "content",
                                           shared_background)
    if record is not None:
        record["output_content"] = outputs["output_content"].cpu().numpy().copy()
        if reconstruct:
            record["output_style_s4"] = outputs["output_style"][:, :, ::4, ::4].cpu().numpy().copy()
    return outputs


def edit(networks: EditingNetworks, image: np.ndarray, source_labels11: np.ndarray, target_labels11: np.ndarray,
         content_image: np.ndarray | None = None, record: dict | None = None) -> np.ndarray:
    """Re-render ``image`` (uint8 256x256x3) with its components laid out as ``target_labels11``.

    ``source_labels11`` is the photo's own Helen label map; ``content_image`` (uint8, default ``image``)
    supplies the background where the target is background. Returns uint8 256x256x3."""
    style = pp.prepare_face(image, source_labels11)
    target = pp.prepare_layout(target_labels11)
    content = None if content_image is None else pp.normalize_image(content_image)
    output = edit_prepared(networks, style, target, content, record=record)["output_content"]
    return pp.to_uint8_image(output[0].cpu().numpy())


def edit_celebamask(networks: EditingNetworks, image: np.ndarray, source_labels19: np.ndarray,
                    target_labels19: np.ndarray, content_image: np.ndarray | None = None,
                    record: dict | None = None) -> np.ndarray:
    """:func:`edit` with label maps in our 19-class CelebAMask-HQ order (converted to the model's Helen
    classes; ears, neck, cloth and accessories become background and are taken from the content photo)."""
    return edit(networks, image, pp.celebamask_to_helen(source_labels19), pp.celebamask_to_helen(target_labels19),
                content_image, record)
