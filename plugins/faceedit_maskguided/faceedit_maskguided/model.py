"""The 17 networks of Mask-Guided Portrait Editing (Gu et al., CVPR 2019), key-compatible with the
authors' released Helen model (``checkpoints/pretrained/latest_net_<label>.pth``).

Written from the paper and the key lists in ``shared/parity/maskguided_helen``. Shapes at 256 px:

* ``G`` (:class:`MaskGuidedGenerator`): label encoder (one-hot 11 -> 256x64x64), image generator
  (1536x64x64 -> 64x256x256 face features), background encoder (RGB -> 64x256x256) and background
  decoder (128x256x256 -> RGB, tanh). pix2pixHD's global generator split into those four parts.
* component encoders (VAE style, only ``mu`` is used at test time): skin/hair 256x256, eyes 32x48,
  mouth 80x144 -> (mu, logvar), 512 each.
* feature decoders: code -> 256-channel feature map (skin/hair 64x64, eyes 8x12, mouth 20x36), the
  pieces G composes.
* image decoders (training-time autoencoder branch): code -> RGB patch.
* ``P`` (:class:`UNetParser`): pix2pix U-Net, RGB -> softmax over the 11 Helen classes (training only).

Every convolution is followed by BatchNorm2d (eps 1e-5); test time uses the running statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N_HELEN_CLASSES = 11
CODE_SIZE = 512
FEATURE_CHANNELS = 256

# Component -> input size (H, W) and the encoder's final spatial size.
COMPONENT_INPUT_SIZE = {"skin": (256, 256), "hair": (256, 256), "left_eye": (32, 48), "right_eye": (32, 48),
                        "mouth": (80, 144)}
COMPONENTS = ("left_eye", "right_eye", "skin", "hair", "mouth")  # order of G's input blocks after the label


# ---------------------------------------------------------------------------------------------------------
# component encoders


class EncoderBlock(nn.Module):
    """conv 4x4 stride 2 -> BN -> ReLU (keys ``conv.weight``, ``bn.*``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1)
        # The authors' momentum (0.9) only matters when training; eval uses the running statistics.
        self.bn = nn.BatchNorm2d(out_channels, momentum=0.9)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _code_head(in_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, 1024), nn.ReLU(inplace=True), nn.Linear(1024, CODE_SIZE))


class ComponentEncoder(nn.Module):
    """Image (3xHxW) -> (mu, logvar). Channels 3->64->128->256->512, then 512->512 blocks until
    ``n_blocks`` halvings; the flattened (C, H, W) map feeds two separate heads."""

    def __init__(self, input_size: tuple[int, int], n_blocks: int):
        super().__init__()
        channels = [3, 64, 128, 256] + [512] * (n_blocks - 2)
        self.input_size = tuple(input_size)
        self.conv = nn.Sequential(*(EncoderBlock(channels[i], channels[i + 1]) for i in range(n_blocks)))
        h, w = (s // 2 ** n_blocks for s in input_size)
        self.fc_mu = _code_head(512 * h * w)
        self.fc_var = _code_head(512 * h * w)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"{type(self).__name__} expects {self.input_size[0]}x{self.input_size[1]} input, "
                             f"got {tuple(x.shape[-2:])}")
        return torch.flatten(self.conv(x), 1)

    def encode_mu(self, x: torch.Tensor) -> torch.Tensor:
        """The code used at test time (no sampling); skips the unused logvar head."""
        return self.fc_mu(self.features(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = self.features(x)
        return self.fc_mu(flat), self.fc_var(flat)


class SkinHairEncoder(ComponentEncoder):
    """``encoder_skin`` / ``encoder_hair``: masked 256x256 image -> 2x2 -> codes."""

    def __init__(self):
        super().__init__((256, 256), 7)


class EyeEncoder(ComponentEncoder):
    """``encoder_left_eye`` / ``encoder_right_eye``: 32x48 crop -> 2x3 -> codes."""

    def __init__(self):
        super().__init__((32, 48), 4)


class MouthEncoder(ComponentEncoder):
    """``encoder_mouth``: masked 80x144 crop -> 5x9 -> codes."""

    def __init__(self):
        super().__init__((80, 144), 4)


# ---------------------------------------------------------------------------------------------------------
# feature and image decoders


class DecoderBlock(nn.Module):
    """transposed conv 4x4 stride 2 -> BN -> ReLU (keys ``conv.0.*``, ``conv.1.*``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1),
                                  nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CodeDecoder(nn.Module):
    """Code (512) -> Linear -> 512 x h0 x w0 -> upsampling blocks with the given channels. Image
    decoders end with reflection pad 2, conv 5x5 -> RGB, tanh (parameter-free layers take indices)."""

    def __init__(self, start_size: tuple[int, int], channels: list[int], fc_bias: bool = True,
                 to_image: bool = False):
        super().__init__()
        self.start_size = tuple(start_size)
        self.fc = nn.Sequential(nn.Linear(CODE_SIZE, 512 * start_size[0] * start_size[1], bias=fc_bias))
        layers: list[nn.Module] = [DecoderBlock(channels[i], channels[i + 1]) for i in range(len(channels) - 1)]
        if to_image:
            # Untested by the fixture (training-only networks): padding choice keeps the size.
            layers += [nn.ReflectionPad2d(2), nn.Conv2d(channels[-1], 3, 5), nn.Tanh()]
        self.conv = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = self.fc(code).view(code.shape[0], 512, *self.start_size)
        return self.conv(x)


class SkinHairFeatureDecoder(CodeDecoder):
    """``decoder_skin`` / ``decoder_hair``: code -> 256x64x64."""

    def __init__(self):
        super().__init__((2, 2), [512, 256, 256, 256, 256, 256])


class EyeFeatureDecoder(CodeDecoder):
    """``decoder_left_eye`` / ``decoder_right_eye``: code -> 256x8x12 (Linear without bias)."""

    def __init__(self):
        super().__init__((2, 3), [512, 256, 256], fc_bias=False)


class MouthFeatureDecoder(CodeDecoder):
    """``decoder_mouth``: code -> 256x20x36."""

    def __init__(self):
        super().__init__((5, 9), [512, 256, 256])


class SkinHairImageDecoder(CodeDecoder):
    """``decoder_skin_image`` / ``decoder_hair_image``: code -> RGB 256x256."""

    def __init__(self):
        super().__init__((2, 2), [512, 512, 512, 512, 512, 256, 128, 64], to_image=True)


class EyeImageDecoder(CodeDecoder):
    """``decoder_left_eye_image`` / ``decoder_right_eye_image``: code -> RGB 32x48."""

    def __init__(self):
        super().__init__((2, 3), [512, 256, 128, 64, 64], fc_bias=False, to_image=True)


class MouthImageDecoder(CodeDecoder):
    """``decoder_mouth_image``: code -> RGB 80x144."""

    def __init__(self):
        super().__init__((5, 9), [512, 256, 128, 64, 64], to_image=True)


# ---------------------------------------------------------------------------------------------------------
# G


class ResidualBlock(nn.Module):
    """x + (pad, conv3x3, BN, ReLU, pad, conv3x3, BN); no activation after the sum."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class MaskGuidedGenerator(nn.Module):
    """``G``: the four sub-networks of the authors' embedding generator with background fusion.

    ``downsample_model``: one-hot label (11x256x256) -> 256x64x64.
    ``model``: [label feature, 5 component feature maps] (1536x64x64) -> 64x256x256 face features.
    ``bg_encoder``: RGB -> 64x256x256. ``bg_decoder``: [face, masked background] (128) -> RGB, tanh.
    """

    def __init__(self, label_nc: int = N_HELEN_CLASSES, ngf: int = 64, n_downsampling: int = 2, n_blocks: int = 9,
                 embed_nc: int = 5 * FEATURE_CHANNELS):
        super().__init__()
        down: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(label_nc, ngf, 7), nn.BatchNorm2d(ngf),
                                 nn.ReLU(inplace=True)]
        for i in range(n_downsampling):
            c = ngf * 2 ** i
            down += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(inplace=True)]
        self.downsample_model = nn.Sequential(*down)

        width = ngf * 2 ** n_downsampling
        body: list[nn.Module] = [nn.Conv2d(width + embed_nc, width, 1)]
        body += [ResidualBlock(width) for _ in range(n_blocks)]
        for i in range(n_downsampling):
            c = width // 2 ** i
            body += [nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1), nn.BatchNorm2d(c // 2),
                     nn.ReLU(inplace=True)]
        self.model = nn.Sequential(*body)

        self.bg_encoder = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.BatchNorm2d(ngf),
                                        nn.ReLU(inplace=True))
        self.bg_decoder = nn.Sequential(nn.Conv2d(2 * ngf, ngf, 1), nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7),
                                        nn.Tanh())

    def encode_label(self, one_hot: torch.Tensor) -> torch.Tensor:
        return self.downsample_model(one_hot)

    def generate_face(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)

    def encode_background(self, image: torch.Tensor) -> torch.Tensor:
        return self.bg_encoder(image)

    def decode(self, face_features: torch.Tensor, background_features: torch.Tensor) -> torch.Tensor:
        return self.bg_decoder(torch.cat([face_features, background_features], 1))

    def forward(self, one_hot: torch.Tensor, component_features: torch.Tensor,
                background_features: torch.Tensor) -> torch.Tensor:
        face = self.generate_face(torch.cat([self.encode_label(one_hot), component_features], 1))
        return self.decode(face, background_features)


# ---------------------------------------------------------------------------------------------------------
# P


class UNetBlock(nn.Module):
    """One level of the pix2pix U-Net: down (LeakyReLU 0.2, conv 4x4/2, BN), the inner levels, up
    (ReLU, transposed conv 4x4/2, BN), concatenated with the skip. The outermost level has no norm or
    activation on the way down, a biased up-convolution and no skip; the innermost has no down-norm and
    no inner level. Convolutions before BN have no bias.

    The skip carries LeakyReLU(x), not x: in the reference design the LeakyReLU runs in place on the
    tensor the skip later reads, and the released weights were trained that way."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None, inner: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        down_conv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=False)
        if outermost:
            layers = [down_conv, inner, nn.ReLU(True),
                      nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1), nn.Softmax(dim=1)]
        elif innermost:
            layers = [nn.LeakyReLU(0.2), down_conv, nn.ReLU(True),
                      nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=False),
                      nn.BatchNorm2d(outer_nc)]
        else:
            layers = [nn.LeakyReLU(0.2), down_conv, nn.BatchNorm2d(inner_nc), inner, nn.ReLU(True),
                      nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=False),
                      nn.BatchNorm2d(outer_nc)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([F.leaky_relu(x, 0.2), self.model(x)], 1)


class UNetParser(nn.Module):
    """``P``: the authors' ``unet_128`` parser (6 levels, ngf 64), RGB -> softmax over 11 classes."""

    def __init__(self, n_classes: int = N_HELEN_CLASSES, input_nc: int = 3, num_downs: int = 6, ngf: int = 64,
                 dropout: bool = True):
        super().__init__()
        block = UNetBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = UNetBlock(ngf * 8, ngf * 8, inner=block, dropout=dropout)
        block = UNetBlock(ngf * 4, ngf * 8, inner=block)
        block = UNetBlock(ngf * 2, ngf * 4, inner=block)
        block = UNetBlock(ngf, ngf * 2, inner=block)
        self.model = UNetBlock(n_classes, ngf, input_nc=input_nc, inner=block, outermost=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


# ---------------------------------------------------------------------------------------------------------
# the released model


NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    "G": MaskGuidedGenerator,
    "encoder_skin": SkinHairEncoder,
    "encoder_hair": SkinHairEncoder,
    "encoder_left_eye": EyeEncoder,
    "encoder_right_eye": EyeEncoder,
    "encoder_mouth": MouthEncoder,
    "decoder_skin": SkinHairFeatureDecoder,
    "decoder_hair": SkinHairFeatureDecoder,
    "decoder_left_eye": EyeFeatureDecoder,
    "decoder_right_eye": EyeFeatureDecoder,
    "decoder_mouth": MouthFeatureDecoder,
    "decoder_skin_image": SkinHairImageDecoder,
    "decoder_hair_image": SkinHairImageDecoder,
    "decoder_left_eye_image": EyeImageDecoder,
    "decoder_right_eye_image": EyeImageDecoder,
    "decoder_mouth_image": MouthImageDecoder,
    "P": UNetParser,
}
# The networks the authors' editing test runs (the image decoders and P serve training only).
# Checkpoint order of the authors' model (skin, hair, eyes, mouth); G's input order is COMPONENTS.
_CHECKPOINT_COMPONENTS = ("skin", "hair", "left_eye", "right_eye", "mouth")
TEST_TIME_LABELS: tuple[str, ...] = ("G",) + tuple(f"encoder_{c}" for c in _CHECKPOINT_COMPONENTS) + tuple(
    f"decoder_{c}" for c in _CHECKPOINT_COMPONENTS)


def checkpoint_filename(label: str) -> str:
    return f"latest_net_{label}.pth"


class EditingNetworks(nn.Module):
    """The 11 test-time networks as submodules named by checkpoint label (``G``, ``encoder_skin``, ...),
    so ``state_dict()`` keys are ``<label>.<checkpoint key>``."""

    def __init__(self):
        super().__init__()
        for label in TEST_TIME_LABELS:
            self.add_module(label, NETWORK_CLASSES[label]())

    def encoder(self, component: str) -> ComponentEncoder:
        return getattr(self, f"encoder_{component}")

    def decoder(self, component: str) -> CodeDecoder:
        return getattr(self, f"decoder_{component}")

    @classmethod
    def from_checkpoints(cls, folder, map_location: str | torch.device = "cpu") -> "EditingNetworks":
        """Load ``latest_net_<label>.pth`` of the 11 test-time networks from ``folder`` (strict keys)."""
        from pathlib import Path

        networks = cls()
        for label in TEST_TIME_LABELS:
            path = Path(folder) / checkpoint_filename(label)
            if not path.exists():
                raise FileNotFoundError(f"mask-guided checkpoint '{label}' missing: {path}")
            state = torch.load(path, map_location=map_location, weights_only=True)
            load_network_state(getattr(networks, label), state, label)
        return networks.eval()


def load_network_state(network: nn.Module, state: dict, label: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the network and the differing keys."""
    expected = set(network.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"'{label}' ({type(network).__name__}) state dict does not match: "
                       f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
                       f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    network.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------------------
# deployment
