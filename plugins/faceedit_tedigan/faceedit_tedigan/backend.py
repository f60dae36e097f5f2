"""TediGAN (Xia et al., CVPR 2021): text-guided manipulation and text-to-image through the W+
latent space of the published StyleGAN (FFHQ 256), with CLIP ViT-B/32 as the text-image similarity.

Manipulation, per face (on the core face pipeline): align to the FFHQ framing at 256 px, invert the
crop with the encoder (W+, 14 x 512), then optimise the code instance by instance:
``clip_weight * (1 - cos(CLIP(G(w)), text)) + reconstruction_weight * mse(G(w), crop)
+ latent_weight * mse(w, w_encoded)``, changing only the chosen layers (coarse 0-3 = shape,
middle 4-7, fine 8-13 = colour/texture); the result is pasted back over the face region.
Text-to-image optimises from the mean latent (the generator's ``w_avg``) under the CLIP term alone.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from napari_faceedit.backend import CropResult, FaceBackend, FaceCrop, Paste, RunContext
from napari_faceedit.params import Param
from napari_faceedit.tasks import EditTextRequest, Result, Task

GENERATOR_ID = "tedigan-ffhq256-generator"
ENCODER_ID = "tedigan-ffhq256-encoder"
CLIP_ID = "clip-vit-b32"
VOCAB_ID = "clip-bpe-vocab"
LAYER_CHOICES = ("all", "coarse", "middle", "fine", "coarse+middle", "middle+fine")


class TediGANBackend(FaceBackend):
    name = "tedigan"
    version = "1"
    tasks = frozenset({Task.EDIT_TEXT})
    description = ("TediGAN (Xia et al., CVPR 2021) with the published FFHQ-256 StyleGAN, its encoder and CLIP "
                   "ViT-B/32: edits each face to match your text by optimising its StyleGAN code, or generates a "
                   "new face from text when no image is chosen.")
    limitations = ("Needs about 800 MB of published weights (StyleGAN + encoder: TediGAN authors; CLIP: OpenAI). "
                   "Slow on a CPU (seconds per step, 100 steps by default); a 256 px face, and identity drifts "
                   "when the text asks for much. CLIP follows the words, not always the intent.")
    weights = (GENERATOR_ID, ENCODER_ID, CLIP_ID, VOCAB_ID)
    uses_torch = True
    priority = 30
    template = "ffhq"
    crop_size = 256
    paste = Paste.FACE_REGION
    parameters = (
        Param("steps", 100, "optimisation steps", min=1, max=2000),
        Param("learning_rate", 0.01, "Adam learning rate on the latent code", min=1e-5, max=1.0),
        Param("clip_weight", 2.0, "weight of the CLIP text-image term", min=0.0, max=100.0),
        Param("reconstruction_weight", 1.0, "keep the face close to the input (pixel MSE)", min=0.0, max=100.0),
        Param("latent_weight", 1.0, "keep the code close to the inverted one", min=0.0, max=100.0),
        Param("layers", "all", "which W+ layers the edit may change (coarse = shape, fine = colour)",
              choices=LAYER_CHOICES),
    )

    def __init__(self, networks: Optional[tuple] = None):
        """``networks`` = (generator, encoder or None, clip, tokenizer): injected (tests, other sizes)."""
        self._injected = networks
        if networks is not None:
            self.crop_size = networks[0].resolution
            self.ready = lambda: (True, "ready (networks supplied by the caller)")  # type: ignore[method-assign]

    # -- models -------------------------------------------------------------------------------------
    def load(self, ctx: RunContext):
        if self._injected is not None:
            generator, encoder, clip, tokenizer = self._injected
            return (generator.to(ctx.device).eval(), None if encoder is None else encoder.to(ctx.device).eval(),
                    clip.to(ctx.device).eval(), tokenizer)
        from napari_faceedit import weights

        from . import clip as clip_module
        from . import encoder as encoder_module
        from . import stylegan as stylegan_module
        from .clip_tokenizer import CLIPTokenizer

        # The parity-checked fast paths (folded layers, fused epilogues, pooled-token transformer ends),
        # prepared once per cached model. Gradients to the code still flow.
        generator = ctx.load_weights(GENERATOR_ID, stylegan_module.StyleGANGenerator.from_official_config,
                                     prepare=stylegan_module.prepare_for_inference)
        encoder = ctx.load_weights(ENCODER_ID, encoder_module.StyleGANEncoder.from_official_config,
                                   prepare=encoder_module.prepare_for_inference)
        clip = ctx.load_weights(CLIP_ID, lambda config: clip_module.build_clip(config or None),
                                prepare=clip_module.prepare_for_inference)
        return generator, encoder, clip, CLIPTokenizer(weights.path(VOCAB_ID))

    def text_features(self, text: str, clip, tokenizer, device):
        import torch

        tokens = torch.from_numpy(tokenizer.tokenize([text], context_length=clip.context_length, truncate=True))
        with torch.no_grad():
            return clip.encode_text(tokens.to(device))

    def prepare(self, request: EditTextRequest, ctx: RunContext) -> None:
        self.generator, self.encoder, self.clip, tokenizer = self.load(ctx)
        self.text = self.text_features(request.text, self.clip, tokenizer, ctx.device)
        for network in (self.generator, self.encoder, self.clip):
            if network is not None:
                network.requires_grad_(False)
        ctx.note(f"{ctx.params['steps']} steps, layers {ctx.params['layers']}")

    # -- optimisation -------------------------------------------------------------------------------
    def optimise(self, start_wp, ctx: RunContext, target=None):
        """Optimise the W+ code from ``start_wp`` (1, L, 512); ``target`` (1, 3, S, S) in [-1, 1] adds
        the reconstruction and latent terms. Returns (final image tensor, final code, CLIP loss per step)."""
        import torch
        import torch.nn.functional as F

        from .clip import tedigan_clip_loss
        from .stylegan import resolve_layers, restrict_layers

        params = ctx.params
        layers = params["layers"].split("+")
        if not resolve_layers(layers, start_wp.shape[1]):
            raise ValueError(f"a {self.generator.resolution} px generator has no '{params['layers']}' layers")
        torch.manual_seed(ctx.seed)
        free = start_wp.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([free], lr=params["learning_rate"])
        losses = []
        steps = params["steps"]
        for step in range(steps):
            ctx.check()
            wp = restrict_layers(start_wp, free, layers)
            image = self.generator.synthesize(wp)
            clip_loss = tedigan_clip_loss(self.clip, image, text_features=self.text)[0, 0]
            loss = params["clip_weight"] * clip_loss
            if target is not None:
                loss = (loss + params["reconstruction_weight"] * F.mse_loss(image, target)
                        + params["latent_weight"] * F.mse_loss(wp, start_wp))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(clip_loss))
            ctx.progress(step + 1, steps, f"step {step + 1}/{steps}: CLIP loss {losses[-1]:.4f}")
        with torch.no_grad():
            wp = restrict_layers(start_wp, free, layers)
            final = self.generator.synthesize(wp)
            losses.append(float(tedigan_clip_loss(self.clip, final, text_features=self.text)[0, 0]))
        return final, wp.detach(), np.asarray(losses, np.float32)

    def process_crop(self, face: FaceCrop, ctx: RunContext) -> CropResult:
        import torch

        x = torch.from_numpy(face.image).permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(ctx.device)
        with torch.no_grad():
            start = self.encoder(x) if self.encoder is not None else self.mean_code()
        final, wp, losses = self.optimise(start, ctx, target=x)
        return CropResult(image=to_uint8(final), extras={"clip_loss": losses, "latent": wp[0].cpu().numpy(),
                                                         "latent_start": start[0].cpu().numpy()})

    def mean_code(self):
        """The mean latent repeated over every layer: TediGAN's start for text-to-image."""
        w_avg = self.generator.truncation.w_avg
        return w_avg.view(1, 1, -1).repeat(1, self.generator.num_layers, 1)

    def run(self, request: EditTextRequest, ctx: RunContext) -> Result:
        if request.image is not None:
            return super().run(request, ctx)
        if request.face_index is not None:
            raise ValueError("a face index needs an image to edit")
        self.prepare(request, ctx)
        final, wp, losses = self.optimise(self.mean_code(), ctx)
        ctx.note("generated from the mean latent")
        return Result(image=to_uint8(final), extras={"clip_loss": losses[None]})


def to_uint8(image) -> np.ndarray:
    """(1, 3, S, S) in [-1, 1] -> (S, S, 3) uint8."""
    return ((image[0].detach().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
