"""Training objectives of the completion GAN (Chen, Nie, Wu & Healey 2018, after Karras et al. 2018).

* Adversarial: the paper trains its progressive GAN with the Wasserstein loss and gradient penalty
  (WGAN-GP, Gulrajani et al. 2017) of the progressive-GAN recipe it builds on, including its small
  "drift" term that keeps the critic's scores near 0. We follow that: :func:`critic_loss`,
  :func:`gradient_penalty`, :func:`drift_penalty`, :func:`generator_adversarial_loss`.
* Attribute classification (auxiliary classifier on D): binary cross-entropy of D's attribute logits
  against the known labels, on real images for D and on completed images for G; entries whose label
  is unknown (CelebAMask-HQ faces) are masked out.
* Reconstruction: L1 against the original, with the hole weighted more than the known part.
* Feature (perceptual) loss: L1 between a frozen network's feature maps of the completed and the
  original image. The paper uses an ImageNet VGG; its weights are not available offline, so the
  network is pluggable through :func:`feature_network`.
* Boundary loss: penalises seams, i.e. image gradients of the completed image that differ from the
  original's in a thin band around the hole edge (the paper's boundary term also concentrates the
  error near the edge; we compare gradients, which is what a visible seam is).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

FEATURE_NETWORKS = ("parser", "classifier", "none")
DEFAULT_FEATURE_NETWORK = "parser"


# ------------------------------------------------------------------------------------ adversarial
def critic_loss(real_score: torch.Tensor, fake_score: torch.Tensor) -> torch.Tensor:
    """Wasserstein critic loss: D(fake) - D(real), to be minimised by D."""
    return fake_score.mean() - real_score.mean()


def drift_penalty(real_score: torch.Tensor) -> torch.Tensor:
    """E[D(real)^2] (progressive GAN, weight 0.001): stops the critic's scores drifting away."""
    return real_score.pow(2).mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, mix: torch.Tensor,
                     **critic_kwargs) -> torch.Tensor:
    """(||grad D(x_hat)||_2 - 1)^2 at random points x_hat between real and fake images;
    ``mix`` (N, 1, 1, 1) in [0, 1] picks the points (drawn by the caller for reproducibility)."""
    x_hat = (mix * real.detach() + (1 - mix) * fake.detach()).requires_grad_(True)
    score, _ = critic(x_hat, **critic_kwargs)
    grad, = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def generator_adversarial_loss(fake_score: torch.Tensor) -> torch.Tensor:
    return -fake_score.mean()


# ------------------------------------------------------------------------------------ attributes
def attribute_loss(logits: torch.Tensor, labels: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the known entries; ``labels`` in {0, 1}, ``known`` in {0, 1}
    with the same shape (0 = label unknown: no loss). Zero (with a graph) when nothing is known."""
    bce = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    known = known.to(logits.dtype)
    return (bce * known).sum() / known.sum().clamp(min=1.0)


# ------------------------------------------------------------------------------------ pixels
def masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (N, C, H, W) over the pixels where ``weight`` (N, 1, H, W) is set."""
    weight = weight.to(values.dtype).expand_as(values)
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def reconstruction_loss(generated: torch.Tensor, target: torch.Tensor, hole: torch.Tensor,
                        hole_weight: float = 5.0) -> torch.Tensor:
    """hole_weight * mean L1 inside the hole + mean L1 outside it. The known part is replaced by
    the input at inference, but fitting it too keeps the decoder's features grounded."""
    error = (generated - target).abs()
    return hole_weight * masked_mean(error, hole) + masked_mean(error, 1 - hole)


def boundary_band(hole: torch.Tensor, width: int) -> torch.Tensor:
    """(N, 1, H, W) {0, 1}: pixels within ``width`` pixels of the hole edge, on either side."""
    k = 2 * int(width) + 1
    near_hole = F.max_pool2d(hole.float(), k, stride=1, padding=width)
    near_known = F.max_pool2d(1 - hole.float(), k, stride=1, padding=width)
    return near_hole * near_known


def boundary_loss(completed: torch.Tensor, target: torch.Tensor, hole: torch.Tensor,
                  width: int | None = None) -> torch.Tensor:
    """Mean |gradient(completed) - gradient(target)| (horizontal and vertical finite differences)
    over a band of ``width`` px (default: size / 32, at least 1) around the hole boundary. Zero when
    the completion continues the original seamlessly there; positive for a seam (e.g. an offset)."""
    width = max(1, completed.shape[-1] // 32) if width is None else int(width)
    band = boundary_band(hole, width)
    loss = completed.new_zeros(())
    for dim in (-1, -2):
        n = completed.shape[dim]
        diff_completed = completed.narrow(dim, 1, n - 1) - completed.narrow(dim, 0, n - 1)
        diff_target = target.narrow(dim, 1, n - 1) - target.narrow(dim, 0, n - 1)
        band_pairs = torch.maximum(band.narrow(dim, 1, n - 1), band.narrow(dim, 0, n - 1))
        loss = loss + masked_mean((diff_completed - diff_target).abs(), band_pairs)
    return loss


# ------------------------------------------------------------------------------------ features
class FeatureNetwork(nn.Module):
    """A frozen network: image (N, 3, H, W) in [-1, 1] -> list of feature maps. ``stages`` are run
    in order and each stage's output is one feature map; inputs are resized to ``input_size``
    (None: kept) first, because the wrapped network was trained at that size."""

    def __init__(self, stages: list[nn.Module], input_size: int | None, min_size: int = 64,
                 name: str = ""):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.input_size, self.min_size, self.name = input_size, min_size, name
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always frozen: BatchNorm must keep its statistics
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = self.input_size or max(self.min_size, x.shape[-1])
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _parser_features() -> FeatureNetwork:
    from faceedit_parsing.compact import CompactParser

    from napari_faceedit.weights import load_bundled

    parser = CompactParser()
    load_bundled("faceparse_compact.pt", parser)
    # Its input normalisation ((x - 0.5) / 0.5 of [0, 1] RGB) is exactly our [-1, 1] range.
    return FeatureNetwork([parser.stem, parser.enc2, parser.enc3], input_size=None, name="parser")


def _classifier_features() -> FeatureNetwork:
    from faceedit_stargan.classifier import CLASSIFIER_FILE, CLASSIFIER_SIZE, load_classifier

    from napari_faceedit.weights import WeightsMissingError

    classifier = load_classifier()
    if classifier is None:
        raise WeightsMissingError(f"the CelebA attribute classifier ({CLASSIFIER_FILE}) is not installed")
    layers = list(classifier.features)
    # Cut after the ReLUs at 32, 16 and 8 px (before each max-pool); input in [-1, 1] as trained.
    return FeatureNetwork([nn.Sequential(*layers[:3]), nn.Sequential(*layers[3:6]),
                           nn.Sequential(*layers[6:10])], input_size=CLASSIFIER_SIZE, name="classifier")


def feature_network(name: str = DEFAULT_FEATURE_NETWORK) -> FeatureNetwork | None:
    """The frozen network of the feature loss; the one place that decides where its weights come from.

    * ``"parser"`` (default): the first three stages (1/2, 1/4, 1/8 resolution) of our compact face
      parser (``faceedit_parsing.compact.CompactParser``, shipped ``faceparse_compact.pt``). It was
      trained to label every pixel of a face into eyes, brows, lips, skin, hair ..., so its features
      are local, part-aware and sharp at the part boundaries completion must get right, and it runs
      at any resolution. This is why it is the default.
    * ``"classifier"``: the first three conv stages of our CelebA attribute classifier
      (``faceedit_stargan.classifier``). Trained only for 5 global attributes at 64 px, its features
      say less about local structure; offered for comparison.
    * ``"none"``: no feature loss (returns None).
    """
    if name == "parser":
        return _parser_features()
    if name == "classifier":
        return _classifier_features()
    if name == "none":
        return None
    raise ValueError(f"unknown feature network {name!r}; choose one of {list(FEATURE_NETWORKS)}")


def feature_loss(network: FeatureNetwork | None, completed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the network's feature maps of the mean L1 distance (target features not differentiated)."""
    if network is None:
        return completed.new_zeros(())
    with torch.no_grad():
        wanted = network(target)
    got = network(completed)
    return sum(F.l1_loss(a, b) for a, b in zip(got, wanted))
