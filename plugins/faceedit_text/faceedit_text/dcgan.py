"""A 64x64 DCGAN face generator (our own plain-PyTorch network) for the weights that the
``gan-face-generate`` wheel ships (MIT; a DCGAN trained on the synthetic DigiFace1M faces).

Install the weights with ``pip install --no-deps gan-face-generate==1.1.1``. The package's own code
is never imported: we find its ``weights.tar`` through the installed distribution's file list and
read it with ``torch.load(weights_only=True)`` (tensors and dicts only, nothing is executed).

The network: a 100-d latent ``z`` (N, 100, 1, 1) goes through five transposed convolutions
(4x4 -> 8 -> 16 -> 32 -> 64 px; 512, 256, 128, 64, 3 channels), each but the last followed by batch
norm and ReLU, the last by tanh. Output: RGB in [-1, 1], (N, 3, 64, 64).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

LATENT_SIZE = 100
IMAGE_SIZE = 64
DISTRIBUTION = "gan-face-generate"
DISTRIBUTION_VERSION = "1.1.1"
WEIGHTS_FILE = "gan_face_generate/weights.tar"
# sha256 of weights.tar in gan-face-generate 1.1.1: another version's file is refused, not guessed at.
WEIGHTS_SHA256 = "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"
STATE_DICT_KEY = "netG_state_dict"
INSTALL_COMMAND = f"pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION}"


class DCGANWeightsMissing(FileNotFoundError):
    """The gan-face-generate wheel (which carries the generator's weights) is not installed."""


class DCGANFaceGenerator(nn.Module):
    """z (N, 100) or (N, 100, 1, 1) -> RGB faces (N, 3, 64, 64) in [-1, 1].

    Layers live in one ``nn.Sequential`` called ``main`` (transposed conv, batch norm, ReLU per
    stage) so that parameter names match the published checkpoint key for key (``main.0.weight``,
    ``main.1.running_mean``, ...).
    """

    def __init__(self, latent_size: int = LATENT_SIZE, base_width: int = 64, channels: int = 3):
        super().__init__()
        widths = [base_width * 8, base_width * 4, base_width * 2, base_width]
        layers: list[nn.Module] = [
            # 1x1 latent -> 4x4 feature map (no padding, stride 1)
            nn.ConvTranspose2d(latent_size, widths[0], kernel_size=4, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [  # each stage doubles the resolution
                nn.ConvTranspose2d(width_in, width_out, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width_out),
                nn.ReLU(inplace=True),
            ]
        layers += [
            nn.ConvTranspose2d(widths[-1], channels, kernel_size=4, stride=2, padding=1, bias=False),
            nn.Tanh(),
        ]
        self.main = nn.Sequential(*layers)
        self.latent_size = latent_size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


def weights_path() -> Path:
    """Where the installed gan-face-generate wheel keeps ``weights.tar`` (found through the
    distribution's file list, so none of the package's modules are imported)."""
    from importlib import metadata

    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise DCGANWeightsMissing(
            f"the 64x64 DCGAN face generator needs the weights shipped by the '{DISTRIBUTION}' wheel, "
            f"which is not installed; install it with: {INSTALL_COMMAND}") from None
    for file in distribution.files or ():
        if str(file).replace("\\", "/") == WEIGHTS_FILE:
            path = Path(distribution.locate_file(file))
            if path.is_file():
                return path
    raise DCGANWeightsMissing(
        f"'{DISTRIBUTION}' {distribution.version} is installed but its {WEIGHTS_FILE} is missing; "
        f"reinstall it with: {INSTALL_COMMAND}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_dcgan(path: Path | str | None = None, *, check_sha256: bool = True) -> DCGANFaceGenerator:
    """Our generator with the published weights loaded strictly (every key and shape must match), in
    eval mode (batch norm uses the stored running statistics). ``path`` defaults to the installed
    wheel's ``weights.tar``; its sha256 must be the one of version 1.1.1 unless ``check_sha256`` is off."""
    file = Path(path) if path is not None else weights_path()
    if check_sha256:
        actual = _sha256(file)
        if actual != WEIGHTS_SHA256:
            raise ValueError(f"{file}: sha256 {actual} is not that of {DISTRIBUTION} {DISTRIBUTION_VERSION}'s "
                             f"weights ({WEIGHTS_SHA256}); not loaded. Install it with: {INSTALL_COMMAND}")
    # The wheel's file is a plain torch.save of {"netG_state_dict": {name: tensor}}: weights_only
    # reading is enough, and anything that would need unpickling code is refused by torch.
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or STATE_DICT_KEY not in checkpoint:
        found = ", ".join(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{file} has no '{STATE_DICT_KEY}' entry (found: {found})")
    generator = DCGANFaceGenerator()
    generator.load_state_dict(checkpoint[STATE_DICT_KEY], strict=True)
    return generator.eval()
