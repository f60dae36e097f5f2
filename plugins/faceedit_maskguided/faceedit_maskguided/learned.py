"""Our own mask-guided portrait editing model (``maskguided-compact``): the design of Gu et al. (CVPR 2019)
at a size that trains on a CPU in hours and ships in a few MB, trained here on CelebAMask-HQ.

Same parts and data flow as the authors' networks (``model.py``), with the same test-time
preprocessing (``preprocess.py``: Helen labels, component centres, the 10 % enlargement of eyes and
mouth, eye crops 32x48, masked mouth crop 80x144, masked 256x256 skin and hair images):

* five component encoders (left eye, right eye, skin, hair, mouth) -> (mu, logvar) codes;
* five feature decoders: code -> feature map (eyes 8x12, mouth 20x36, skin/hair 64x64);
* G (:class:`model.MaskGuidedGenerator`, reused with smaller widths): label encoder on the one-hot
  11-class target map, eye/mouth features placed at the target's part centres on zero 64x64 maps,
  decoded to face features and fused with the background features of the input photo;
* training only: component image decoders (the autoencoder branch; skin and hair reconstruct a
  64x64 version of their masked image) and the variance heads (:mod:`.train`).

Smaller than the authors' model: codes of 128 instead of 512, one linear layer per code head
instead of two, 32 feature channels per component instead of 256, and G with 16 base channels and
4 residual blocks instead of 64 and 9. The exported file records those sizes in its
``architecture`` buffer.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from napari_faceedit.synthesis import with_components

from . import preprocess as pp
from .compact_backend import COMPACT_FILE, REDRAW_MODES
from .model import COMPONENTS, DecoderBlock, EncoderBlock, MaskGuidedGenerator

FEATURE_SIZE = pp.IMAGE_SIZE // pp.FEATURE_STRIDE  # 64
# Spatial size of each component's feature map (the authors' sizes: G places them on 64x64 maps).
FEATURE_MAP_SIZE = {"left_eye": (8, 12), "right_eye": (8, 12), "mouth": (20, 36), "skin": (64, 64),
                    "hair": (64, 64)}
PLACED = ("left_eye", "right_eye", "mouth")
# Encoder halvings per component (input size -> the code head's grid): 256 -> 4x4, 32x48 -> 2x3, 80x144 -> 5x9.
ENCODER_BLOCKS = {"left_eye": 4, "right_eye": 4, "mouth": 4, "skin": 6, "hair": 6}
# The image decoders of skin and hair reconstruct the masked image at this size (the full 256x256
# decoder of the paper is the costliest part of training; the code cannot hold fine detail anyway).
SKIN_HAIR_IMAGE_SIZE = 64
# Our face components -> the model's component codes (brows and nose belong to the skin code).
MODEL_COMPONENTS = {"eyes": ("left_eye", "right_eye"), "mouth": ("mouth",), "skin": ("skin",), "hair": ("hair",)}

ARCHITECTURE_KEYS = ("ngf", "n_blocks", "feature_channels", "code_size", "encoder_width")
DEFAULT_ARCHITECTURE = {"ngf": 16, "n_blocks": 4, "feature_channels": 32, "code_size": 128, "encoder_width": 32}


class CompactComponentEncoder(nn.Module):
    """Component image -> code: ``n_blocks`` of conv 4x4/2 + BN + ReLU (the authors' block), widths
    w, 2w, ..., 2w, w (the last block narrow: the flattened grid feeds the linear heads), then a linear
    ``mu`` head (and a ``logvar`` head when ``variational``)."""

    def __init__(self, input_size: tuple[int, int], n_blocks: int, width: int, code_size: int,
                 variational: bool = True):
        super().__init__()
        self.input_size = tuple(input_size)
        channels = [3, width] + [2 * width] * (n_blocks - 2) + [width]
        blocks = [EncoderBlock(channels[i], channels[i + 1]) for i in range(n_blocks)]
        for block in blocks:
            block.bn.momentum = 0.1  # PyTorch's default: the authors' 0.9 makes the running stats follow the last batch
        self.conv = nn.Sequential(*blocks)
        h, w = (s // 2 ** n_blocks for s in input_size)
        self.mu = nn.Linear(channels[-1] * h * w, code_size)
        self.logvar = nn.Linear(channels[-1] * h * w, code_size) if variational else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"component encoder expects {self.input_size} input, got {tuple(x.shape[-2:])}")
        flat = torch.flatten(self.conv(x), 1)
        logvar = None if self.logvar is None else self.logvar(flat).clamp(-10.0, 10.0)
        return self.mu(flat), logvar


class CompactCodeDecoder(nn.Module):
    """Code -> Linear -> (width, h0, w0) -> upsampling blocks (transposed conv 4x4/2 + BN + ReLU) with
    ``channels``; image decoders end with a 3x3 convolution to RGB and tanh."""

    def __init__(self, code_size: int, start_size: tuple[int, int], channels: list[int], to_image: bool = False):
        super().__init__()
        self.start_size = tuple(start_size)
        self.start_channels = channels[0]
        self.fc = nn.Linear(code_size, channels[0] * start_size[0] * start_size[1])
        layers: list[nn.Module] = [DecoderBlock(channels[i], channels[i + 1]) for i in range(len(channels) - 1)]
        if to_image:
            layers += [nn.Conv2d(channels[-1], 3, 3, padding=1), nn.Tanh()]
        self.conv = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(code)).view(code.shape[0], self.start_channels, *self.start_size)
        return self.conv(x)


def _encoder_grid(component: str) -> tuple[int, int]:
    h, w = pp.IMAGE_SIZE, pp.IMAGE_SIZE
    if component in pp.EYE_CLASSES:
        h, w = pp.EYE_CROP
    elif component == "mouth":
        h, w = pp.MOUTH_CROP
    n = ENCODER_BLOCKS[component]
    return h // 2 ** n, w // 2 ** n


def encoder_input_size(component: str) -> tuple[int, int]:
    if component in pp.EYE_CLASSES:
        return pp.EYE_CROP
    if component == "mouth":
        return pp.MOUTH_CROP
    return pp.IMAGE_SIZE, pp.IMAGE_SIZE


def feature_decoder(component: str, code_size: int, width: int, feature_channels: int) -> CompactCodeDecoder:
    """Code -> the component's feature map (FEATURE_MAP_SIZE) with ``feature_channels`` channels."""
    start = _encoder_grid(component)
    halvings = int(np.log2(FEATURE_MAP_SIZE[component][0] // start[0]))
    channels = [width] + [2 * width] * (halvings - 1) + [feature_channels]
    return CompactCodeDecoder(code_size, start, channels)


def image_decoder(component: str, code_size: int, width: int) -> CompactCodeDecoder:
    """Code -> the component's image (eyes 32x48, mouth 80x144, skin/hair 64x64) for the local
    reconstruction loss (training only)."""
    start = _encoder_grid(component)
    size = encoder_input_size(component)
    if component in ("skin", "hair"):
        size = (SKIN_HAIR_IMAGE_SIZE, SKIN_HAIR_IMAGE_SIZE)
    halvings = int(np.log2(size[0] // start[0]))
    channels = [width] + [2 * width] * (halvings - 2) + [width, width]
    return CompactCodeDecoder(code_size, start, channels, to_image=True)


class CompactMaskGuided(nn.Module):
    """The test-time networks: component encoders, feature decoders and G (see the module docstring).

    ``variational``: also the encoders' logvar heads (training); the exported model has none."""

    def __init__(self, ngf: int = DEFAULT_ARCHITECTURE["ngf"], n_blocks: int = DEFAULT_ARCHITECTURE["n_blocks"],
                 feature_channels: int = DEFAULT_ARCHITECTURE["feature_channels"],
                 code_size: int = DEFAULT_ARCHITECTURE["code_size"],
                 encoder_width: int = DEFAULT_ARCHITECTURE["encoder_width"], variational: bool = False):
        super().__init__()
        self.config = {"ngf": ngf, "n_blocks": n_blocks, "feature_channels": feature_channels,
                       "code_size": code_size, "encoder_width": encoder_width}
        self.register_buffer("architecture", torch.tensor([self.config[k] for k in ARCHITECTURE_KEYS]))
        self.feature_channels = feature_channels
        self.encoders = nn.ModuleDict({c: CompactComponentEncoder(encoder_input_size(c), ENCODER_BLOCKS[c],
                                                                  encoder_width, code_size, variational)
                                       for c in COMPONENTS})
        self.decoders = nn.ModuleDict({c: feature_decoder(c, code_size, encoder_width, feature_channels)
                                       for c in COMPONENTS})
        self.G = MaskGuidedGenerator(label_nc=pp.N_HELEN, ngf=ngf, n_downsampling=2, n_blocks=n_blocks,
                                     embed_nc=len(COMPONENTS) * feature_channels)

    @classmethod
    def for_state(cls, state: dict, variational: bool = False) -> "CompactMaskGuided":
        """An untrained model with the sizes recorded in ``state['architecture']``."""
        if "architecture" not in state:
            raise ValueError("not a maskguided-compact state dict (no 'architecture' entry)")
        values = [int(v) for v in state["architecture"]]
        if len(values) != len(ARCHITECTURE_KEYS):
            raise ValueError(f"architecture entry has {len(values)} values, expected {len(ARCHITECTURE_KEYS)}")
        return cls(**dict(zip(ARCHITECTURE_KEYS, values)), variational=variational)

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """(mu, logvar) per component from the encoder inputs (``preprocess.component_inputs``)."""
        return {c: self.encoders[c](inputs[c]) for c in COMPONENTS}

    def decode_features(self, codes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {c: self.decoders[c](codes[c]) for c in COMPONENTS}

    def embed(self, features: dict[str, torch.Tensor], centres: np.ndarray) -> torch.Tensor:
        """G's component input (B, 5*C, 64, 64) in ``COMPONENTS`` order: eye and mouth maps on zeros at
        their windows around each sample's part centres (``centres``: (B, 6)); skin and hair whole."""
        from .inference import placement_windows

        centres = np.asarray(centres).reshape(-1, 6)
        windows = [placement_windows(row) for row in centres]
        blocks = []
        for component in COMPONENTS:
            feature = features[component]
            if component in PLACED:
                placed = []
                for b, window in enumerate(windows):
                    top, left, h, w = window[component]
                    placed.append(F.pad(feature[b], (left, FEATURE_SIZE - left - w, top, FEATURE_SIZE - top - h)))
                feature = torch.stack(placed)
            blocks.append(feature)
        return torch.cat(blocks, 1)

    def compose(self, target_one_hot: torch.Tensor, features: dict[str, torch.Tensor], centres: np.ndarray,
                background_image: torch.Tensor, background_mask: torch.Tensor) -> torch.Tensor:
        """Render: components in the target layout over the photo's background -> (B, 3, 256, 256) in [-1, 1].

        ``target_one_hot``: (B, 11, 256, 256) of the enlarged target map; ``centres``: its part centres;
        ``background_mask``: (B, 1, 256, 256), 1 where the enlarged target is background."""
        face = self.G.generate_face(torch.cat([self.G.encode_label(target_one_hot), self.embed(features, centres)], 1))
        background = self.G.encode_background(background_image) * background_mask
        return self.G.decode(face, background)


class ComponentImageDecoders(nn.Module):
    """The autoencoder branch (training only): code -> the component's image."""

    def __init__(self, code_size: int = DEFAULT_ARCHITECTURE["code_size"],
                 encoder_width: int = DEFAULT_ARCHITECTURE["encoder_width"]):
        super().__init__()
        self.decoders = nn.ModuleDict({c: image_decoder(c, code_size, encoder_width) for c in COMPONENTS})

    def forward(self, codes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {c: self.decoders[c](codes[c]) for c in COMPONENTS}


def component_image_targets(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What each image decoder reconstructs: the encoder input itself (skin and hair at 64x64)."""
    factor = pp.IMAGE_SIZE // SKIN_HAIR_IMAGE_SIZE
    return {c: F.avg_pool2d(x, factor) if c in ("skin", "hair") else x for c, x in inputs.items()}


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def export_state_dict(model: CompactMaskGuided) -> dict[str, torch.Tensor]:
    """float16 test-time state dict (the logvar heads dropped; the int ``architecture`` kept as is)."""
    return {k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().clone()
            for k, v in model.state_dict().items() if ".logvar." not in k}


def load_exported(path, device="cpu") -> tuple[CompactMaskGuided, str]:
    """(model in eval mode, sha256) from an exported file (any architecture), read weights-only and
    loaded strictly through the weights manager."""
    from napari_faceedit import weights

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = CompactMaskGuided.for_state(state)
    sha = weights.load_bundled(COMPACT_FILE, model, path)
    return model.float().eval().to(device), sha


# ------------------------------------------------------------------------------------------------ inference
def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batch(array: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None].to(device)


def face_features(model: CompactMaskGuided, face: pp.PreparedFace) -> dict[str, torch.Tensor]:
    """Feature map of each component of a prepared face (code = mu, no sampling)."""
    device = _device(model)
    inputs = pp.component_inputs(face.image, face.layout.labels, face.layout.centres)
    codes = {c: mu for c, (mu, _) in model.encode({c: _batch(x, device) for c, x in inputs.items()}).items()}
    return model.decode_features(codes)


def render_layout(model: CompactMaskGuided, features: dict[str, torch.Tensor], layout: pp.PreparedLayout,
                  background_image: np.ndarray) -> torch.Tensor:
    """(1, 3, 256, 256) in [-1, 1]: ``features`` in ``layout`` over ``background_image`` ((3, H, W), [-1, 1])."""
    device = _device(model)
    return model.compose(_batch(pp.one_hot(layout.labels), device), features, layout.centres[None],
                         _batch(background_image, device), _batch(pp.background_mask(layout.labels)[None], device))


# redraw="changed": the render replaces pixels within this many px of a changed label, easing back
# to the input's own pixels over the next FEATHER px (pixels beyond are the input's, bit for bit).
REDRAW_MARGIN = 6
REDRAW_FEATHER = 6


def blend_changed(image: np.ndarray, rendered: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """``rendered`` near the ``changed`` pixels, the input ``image`` elsewhere (feathered)."""
    if not changed.any():
        return image.copy()
    distance = ndimage.distance_transform_edt(~changed)
    alpha = np.clip((REDRAW_MARGIN + REDRAW_FEATHER - distance) / REDRAW_FEATHER, 0.0, 1.0)[..., None]
    out = np.rint(alpha * rendered + (1.0 - alpha) * image)
    out = np.where(alpha > 0, out, image)
    return np.clip(out, 0, 255).astype(np.uint8)


def _check_redraw(redraw: str) -> None:
    if redraw not in REDRAW_MODES:
        raise ValueError(f"redraw must be one of {REDRAW_MODES}, got {redraw!r}")


@torch.inference_mode()
def render(model: CompactMaskGuided, image: np.ndarray, labels19: np.ndarray, target19: np.ndarray,
           redraw: str = "face") -> np.ndarray:
    """``image`` (uint8 256x256x3, labelled ``labels19``) re-drawn to follow ``target19`` with its own
    component appearance (the faithful backend's ``render``). ``redraw="face"`` returns the model's
    whole render (as the paper); ``"changed"`` only replaces pixels near the changed labels."""
    _check_redraw(redraw)
    face = pp.prepare_face(image, pp.celebamask_to_helen(labels19))
    layout = pp.prepare_layout(pp.celebamask_to_helen(target19))
    output = render_layout(model, face_features(model, face), layout, face.image)
    rendered = pp.to_uint8_image(output[0].float().cpu().numpy())
    if redraw == "changed":
        return blend_changed(image, rendered, np.asarray(labels19) != np.asarray(target19))
    return rendered


@torch.inference_mode()
def transfer(model: CompactMaskGuided, image: np.ndarray, labels19: np.ndarray, donor_image: np.ndarray,
             donor_labels19: np.ndarray, components: tuple[str, ...], redraw: str = "face"
             ) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels): ``components`` (eyes, mouth, skin, hair) encoded from the donor face, the rest
    from the face itself, rendered in the face's layout with the donor's component shapes swapped in
    (the faithful backend's ``transfer``)."""
    _check_redraw(redraw)
    components = (components,) if isinstance(components, str) else tuple(components)
    unsupported = [c for c in components if c not in MODEL_COMPONENTS]
    if unsupported:
        raise ValueError(f"maskguided-compact cannot take {unsupported} alone (it transfers "
                         f"{', '.join(MODEL_COMPONENTS)}); use classic-synthesize for those")
    target19 = with_components(labels19, donor_labels19, components)
    own = pp.prepare_face(image, pp.celebamask_to_helen(labels19))
    donor = pp.prepare_face(donor_image, pp.celebamask_to_helen(donor_labels19))
    features = face_features(model, own)
    donor_features = face_features(model, donor)
    for component in components:
        for part in MODEL_COMPONENTS[component]:
            features[part] = donor_features[part]
    layout = pp.prepare_layout(pp.celebamask_to_helen(target19))
    rendered = pp.to_uint8_image(render_layout(model, features, layout, own.image)[0].float().cpu().numpy())
    if redraw == "changed":
        from napari_faceedit.vocab import FACE_COMPONENTS

        # The taken components change appearance even where their shape stays: redraw all of them.
        taken = [c for name in components for c in FACE_COMPONENTS[name]]
        changed = (np.asarray(labels19) != target19) | np.isin(labels19, taken) | np.isin(target19, taken)
        rendered = blend_changed(image, rendered, changed)
    return rendered, np.asarray(target19)
