"""CLIP ViT-B/32 (Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021), key-compatible with OpenAI's released ``ViT-B-32.pt``.

Two towers map an image and a text into one 512-d space; their cosine similarity, times a learned
temperature ``exp(logit_scale)``, are the logits. Both towers are pre-LayerNorm transformers
(width 768 / 12 heads for the image, 512 / 8 for the text, 12 blocks each, QuickGELU MLPs of 4x width):

* image: 32x32 patches (a stride-32 convolution, no bias) -> 49 tokens, a learned class token in
  front, learned positions, ``ln_pre``, blocks, ``ln_post`` of the class token, linear projection;
* text: token + position embeddings, blocks under a causal mask, ``ln_final``, the features at the
  end-of-text token (the largest id, so ``argmax``), linear projection.

Also here: loading the released state dict (:func:`load_released_state_dict`), the official image
preprocessing as differentiable tensor ops (:func:`preprocess_image`), and TediGAN's CLIP loss
(:func:`tedigan_clip_input`, :func:`tedigan_clip_loss`).

:func:`prepare_for_inference` switches a loaded model to the fast path: text cut after its last
end-of-text token (exact: the mask is causal), the last block of each tower evaluated only at the
pooled position (class token / end-of-text token: nothing else reaches the output), and the linear
layers run by oneDNN's matmul (about 2x MKL's for these 50-77-row products on CPU) whenever no
gradient is needed; with gradients (TediGAN's loop) they stay on ``F.linear``.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ViT-B/32 as released; the constructor arguments carry these names in the fixtures and the weights catalogue.
VIT_B32_CONFIG = {
    "embed_dim": 512, "image_resolution": 224, "vision_layers": 12, "vision_width": 768,
    "vision_patch_size": 32, "context_length": 77, "vocab_size": 49408,
    "transformer_width": 512, "transformer_heads": 8, "transformer_layers": 12,
}
# Scalar int entries of the released TorchScript archive's state dict: configuration, not weights.
RELEASED_CONFIG_KEYS = ("input_resolution", "context_length", "vocab_size")
HEAD_WIDTH = 64  # the image tower's heads = width / 64
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # RGB statistics of CLIP's training images
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEDIGAN_LOGIT_DIVISOR = 100.0  # released logit_scale = ln(100); TediGAN divides it back out


# -- building blocks --------------------------------------------------------------------------------
class LayerNormFloat32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (keeps fp16 inference stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def _onednn_linear_usable() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], onednn: bool = False) -> torch.Tensor:
    """``F.linear``; with ``onednn`` and when nothing needs a gradient, oneDNN's matmul instead (same
    result within float rounding; it has no autograd formula, hence the fallback)."""
    if (onednn and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() >= 2
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """The sigmoid approximation of GELU that CLIP was trained with (not erf GELU)."""
    return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused input projection (rows: query, key, value blocks),
    named like ``nn.MultiheadAttention`` so checkpoints load as they are."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.normal_(self.in_proj_weight, std=width ** -0.5)
        self.onednn = False  # prepare_for_inference: oneDNN matmuls when no gradient is needed

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = linear(x, self.in_proj_weight, self.in_proj_bias, self.onednn)
        query, key, value = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return linear(attended.transpose(1, 2).reshape(batch, length, width), self.out_proj.weight,
                      self.out_proj.bias, self.onednn)

    def forward_at(self, x: torch.Tensor, positions: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention output at one position per sequence (``positions`` (N,)): (N, 1, width). Keys and
        values of every token, the query of that token only; ``mask`` rows are those positions'."""
        batch, length, width = x.shape
        head_dim = width // self.heads
        rows = torch.arange(batch, device=x.device)
        query = linear(x[rows, positions][:, None], self.in_proj_weight[:width], self.in_proj_bias[:width], self.onednn)
        key_value = linear(x, self.in_proj_weight[width:], self.in_proj_bias[width:], self.onednn)
        key, value = key_value.view(batch, length, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        query = query.view(batch, 1, self.heads, head_dim).transpose(1, 2)
        row_mask = None if mask is None else mask[positions][:, None, None, :]  # (N, 1, 1, L)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=row_mask)
        return linear(attended.transpose(1, 2).reshape(batch, 1, width), self.out_proj.weight, self.out_proj.bias,
                      self.onednn)


class FeedForward(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)
        self.onednn = False  # prepare_for_inference: oneDNN matmuls when no gradient is needed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = quick_gelu(linear(x, self.c_fc.weight, self.c_fc.bias, self.onednn))
        return linear(hidden, self.c_proj.weight, self.c_proj.bias, self.onednn)


class ResidualBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNormFloat32(width)
        self.mlp = FeedForward(width)
        self.ln_2 = LayerNormFloat32(width)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))

    def forward_at(self, x: torch.Tensor, positions: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The block's output at one position per sequence: (N, 1, width)."""
        rows = torch.arange(x.shape[0], device=x.device)
        x_at = x[rows, positions][:, None] + self.attn.forward_at(self.ln_1(x), positions, mask)
        return x_at + self.mlp(self.ln_2(x_at))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                output_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, L, width) -> (N, L, width); with ``output_positions`` (N,) only those tokens' outputs,
        (N, 1, width), and the last block computes nothing else."""
        last = len(self.resblocks) - 1 if output_positions is not None else len(self.resblocks)
        for block in self.resblocks[:last]:
            x = block(x, mask)
        if output_positions is not None:
            x = self.resblocks[last].forward_at(x, output_positions, mask)
        return x


class VisionTransformer(nn.Module):
    """CLIP's image tower. Input: (N, 3, R, R) already normalised with :data:`CLIP_MEAN`/:data:`CLIP_STD`."""

    def __init__(self, resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        if resolution % patch_size:
            raise ValueError(f"image resolution {resolution} is not a multiple of the patch size {patch_size}")
        self.resolution = resolution
        tokens = (resolution // patch_size) ** 2 + 1  # patches + the class token
        # Parameters first, then modules: the released state dict lists them in this order.
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(tokens, width) * width ** -0.5)
        self.proj = nn.Parameter(torch.randn(width, output_dim) * width ** -0.5)
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.ln_pre = LayerNormFloat32(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNormFloat32(width)
        self.class_token_only = False  # prepare_for_inference: the last block at the class token only

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[-2:]) != (self.resolution,) * 2:
            raise ValueError(f"CLIP's image tower takes (N, 3, {self.resolution}, {self.resolution}) tensors, "
                             f"got {tuple(image.shape)}; see preprocess_image()")
        patches = self.conv1(image).flatten(2).transpose(1, 2)  # (N, 49, width)
        class_token = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        x = torch.cat([class_token, patches], dim=1) + self.positional_embedding.to(patches.dtype)
        if self.class_token_only:
            positions = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            return self.ln_post(self.transformer(self.ln_pre(x), output_positions=positions)[:, 0]) @ self.proj
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """CLIP with OpenAI's state-dict names. Defaults are ViT-B/32 (:data:`VIT_B32_CONFIG`)."""

    def __init__(self, embed_dim: int = 512, image_resolution: int = 224, vision_layers: int = 12,
                 vision_width: int = 768, vision_patch_size: int = 32, context_length: int = 77,
                 vocab_size: int = 49408, transformer_width: int = 512, transformer_heads: int = 8,
                 transformer_layers: int = 12):
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.image_resolution = image_resolution
        # Parameters first, then modules: the order of the released state dict.
        self.positional_embedding = nn.Parameter(torch.randn(context_length, transformer_width) * 0.01)
        self.text_projection = nn.Parameter(torch.randn(transformer_width, embed_dim) * transformer_width ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # the paper's initial temperature
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        vision_width // HEAD_WIDTH, embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.ln_final = LayerNormFloat32(transformer_width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        # -inf above the diagonal: a text token sees only itself and earlier tokens. Built here, not saved.
        causal = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("causal_mask", causal, persistent=False)
        self.pooled_text_only = False  # prepare_for_inference: text cut after EOT, last block at EOT only

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) normalised image -> (N, 512) features, not L2-normalised."""
        return self.visual(image.to(self.dtype))

    @staticmethod
    def end_of_text_positions(token_ids: torch.Tensor) -> torch.Tensor:
        """Where each sequence is pooled: the first position of its largest id (the end-of-text token)."""
        return torch.as_tensor(token_ids).argmax(dim=-1)

    def encode_text(self, token_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, L) token ids, L <= 77 (as made by ``CLIPTokenizer.tokenize``) -> (N, 512) features,
        not L2-normalised. Shorter L gives the same result: the mask is causal and pooling is at EOT."""
        token_ids = torch.as_tensor(token_ids, device=self.token_embedding.weight.device).long()
        if token_ids.ndim != 2 or token_ids.shape[1] > self.context_length:
            raise ValueError(f"token ids must be (N, L) with L <= {self.context_length}, got {tuple(token_ids.shape)}")
        eot = self.end_of_text_positions(token_ids)
        if self.pooled_text_only:
            # Tokens after the last end-of-text token cannot reach any pooled output (causal mask).
            length = int(eot.max()) + 1
            token_ids = token_ids[:, :length]
            x = (self.token_embedding(token_ids) + self.positional_embedding[:length]).to(self.dtype)
            x = self.transformer(x, self.causal_mask[:length, :length].to(x.dtype), output_positions=eot)
            return self.ln_final(x[:, 0]) @ self.text_projection
        length = token_ids.shape[1]
        x = (self.token_embedding(token_ids) + self.positional_embedding[:length]).to(self.dtype)
        x = self.ln_final(self.transformer(x, self.causal_mask[:length, :length].to(x.dtype)))
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        return pooled @ self.text_projection

    def similarity_logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``exp(logit_scale) * cos(image, text)``: (N_images, N_texts)."""
        image_features = F.normalize(image_features, dim=-1)
        text_features = F.normalize(text_features, dim=-1)
        return self.logit_scale.exp() * image_features @ text_features.t()

    def forward(self, image: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image (N_img, N_txt), logits_per_text (N_txt, N_img))``, as the reference returns."""
        logits_per_image = self.similarity_logits(self.encode_image(image), self.encode_text(token_ids))
        return logits_per_image, logits_per_image.t()


def prepare_for_inference(model: CLIP, onednn_linear: bool = True) -> CLIP:
    """The fast path (see the module docstring), in place; weights are untouched, so it may be applied
    before or after loading and gradients with respect to the inputs still flow. ``onednn_linear``:
    oneDNN matmuls for gradient-free calls (where the build offers them)."""
    model.eval().requires_grad_(False)
    model.visual.class_token_only = True
    model.pooled_text_only = True
    onednn = onednn_linear and _onednn_linear_usable()
    for module in model.modules():
        if isinstance(module, (SelfAttention, FeedForward)):
            module.onednn = onednn
    return model


def build_clip(config: Optional[Mapping] = None) -> CLIP:
    """A CLIP from constructor arguments (the fixtures' ``constructor``, the weights catalogue's ``config``)."""
    return CLIP(**dict(config or VIT_B32_CONFIG))


# -- released checkpoint ---------------------------------------------------------------------------------
def load_released_state_dict(model: CLIP, state: Mapping[str, torch.Tensor], label: str = "CLIP checkpoint") -> None:
    """Load the state dict of OpenAI's released archive (``torch.jit.load(...).state_dict()``) strictly.

    Keys are matched by name (the archive lists them in another order). The three scalar int entries
    ``input_resolution``, ``context_length``, ``vocab_size`` are configuration: they are checked
    against the model and dropped. Float16 tensors (the archive stores conv/linear/attention weights
    so) are cast to float32. A missing, unexpected or mis-shaped key raises
    :class:`napari_faceedit.weights.StateDictMismatchError` naming it, before anything is loaded.
    """
    from napari_faceedit.weights import StateDictMismatchError, compare_state_dict

    expected_config = {"input_resolution": model.image_resolution, "context_length": model.context_length,
                       "vocab_size": model.vocab_size}
    weights = {}
    for name, value in state.items():
        if name in RELEASED_CONFIG_KEYS:
            if int(value) != expected_config[name]:
                raise StateDictMismatchError(
                    f"{label} is for a CLIP with {name}={int(value)}, this model has {expected_config[name]}",
                    [], [], [(name, (int(value),), (expected_config[name],))])
            continue
        weights[name] = value.float() if torch.is_tensor(value) and value.is_floating_point() else value
    compare_state_dict(model, weights, label=label)
    model.load_state_dict(weights, strict=True)


# -- image preprocessing ---------------------------------------------------------------------------------
def _normalise(image01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, dtype=image01.dtype, device=image01.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=image01.dtype, device=image01.device).view(1, 3, 1, 1)
    return (image01 - mean) / std


def preprocess_image(image: torch.Tensor, input_range: tuple[float, float] = (-1.0, 1.0),
                     size: int = 224) -> torch.Tensor:
    """CLIP's standard preprocessing as differentiable tensor ops: (N, 3, H, W) RGB floats in
    ``input_range`` -> (N, 3, size, size) normalised for :meth:`CLIP.encode_image`.

    Shorter side resized to ``size`` (the longer to ``int(size * long / short)``), centre crop
    (offset ``round((side - size) / 2)``), then ``(x - mean) / std``, as the reference pipeline.
    The resize is ``F.interpolate(mode="bicubic", antialias=True)``: that is PIL's bicubic
    (Keys kernel a=-0.5, widened when shrinking), which the reference applies to the PIL image.
    Unlike PIL on 8-bit images nothing is rounded or clipped between or after the two resize
    passes (clipping would zero gradients). Measured on photos: mean difference 0.25-0.3 grey
    levels, over 99.8% of values within 1 (after clipping ours to [0, 1]); single pixels at hard
    edges differ by up to 5, or ~15-20 before clipping, where bicubic overshoots.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) RGB, got {tuple(image.shape)}")
    low, high = input_range
    x = (image.float() - low) / (high - low)
    height, width = x.shape[-2:]
    short, long = min(height, width), max(height, width)
    resized = (size, int(size * long / short))
    new_height, new_width = resized if height <= width else resized[::-1]
    if (new_height, new_width) != (height, width):
        x = F.interpolate(x, size=(new_height, new_width), mode="bicubic", align_corners=False, antialias=True)
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    return _normalise(x[..., top:top + size, left:left + size])


def preprocess_rgb_uint8(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """An (H, W, 3) uint8 RGB array -> (1, 3, size, size) model input (see :func:`preprocess_image`)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    tensor = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
    return preprocess_image(tensor, input_range=(0.0, 1.0), size=size)


# -- TediGAN's CLIP loss -----------------------------------------------------------------------------------
TEDIGAN_UPSAMPLED_SIZE = 7168  # TediGAN: nearest x7 for 1024 px (x28 for 256 px), then 32x32 average -> 224
TEDIGAN_POOL = 32


def _nearest_then_average(size_in: int, upsample: int, pool: int, dtype, device) -> torch.Tensor:
    """(size_out, size_in) matrix equal to nearest upsampling by ``upsample`` followed by average
    pooling over ``pool`` (stride ``pool``, remainder dropped): each output cell averages the
    input pixels it overlaps, weighted by the overlap length."""
    size_out = size_in * upsample // pool
    out_start = torch.arange(size_out, dtype=torch.float64).unsqueeze(1) * pool
    in_start = torch.arange(size_in, dtype=torch.float64).unsqueeze(0) * upsample
    overlap = (torch.minimum(out_start + pool, in_start + upsample)
               - torch.maximum(out_start, in_start)).clamp(min=0)
    return (overlap / pool).to(dtype=dtype, device=device)


def tedigan_clip_input(image: torch.Tensor, upsample: Optional[int] = None, pool: int = TEDIGAN_POOL) -> torch.Tensor:
    """TediGAN's way into CLIP: nearest upsampling by ``upsample`` (default ``7168 // size``: 28 for
    256 px, 7 for 1024 px), then ``pool`` x ``pool`` average pooling -> 224 px. No mean/std
    normalisation: TediGAN feeds the generator's [-1, 1] output as it is.

    Computed as one linear map per axis, which equals the two steps (up to float rounding) without
    their 7168 x 7168 intermediate (600 MB per 256 px image, and again for its gradient)."""
    if image.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got {tuple(image.shape)}")
    height, width = image.shape[-2:]
    if upsample is None:
        if height != width or TEDIGAN_UPSAMPLED_SIZE % height:
            raise ValueError(f"no TediGAN upsampling factor for a {height}x{width} image (needs a square "
                             f"image whose side divides {TEDIGAN_UPSAMPLED_SIZE}); pass upsample=")
        upsample = TEDIGAN_UPSAMPLED_SIZE // height
    rows = _nearest_then_average(height, upsample, pool, image.dtype, image.device)
    cols = _nearest_then_average(width, upsample, pool, image.dtype, image.device)
    return rows @ image @ cols.t()


def tedigan_clip_loss(model: CLIP, image: torch.Tensor, token_ids: Optional[torch.Tensor] = None, *,
                      text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
    """TediGAN's CLIP term: ``1 - logits_per_image / 100`` for a generator image in [-1, 1]
    (N, 3, H, W) -> (N_images, N_texts). Differentiable with respect to ``image``.

    Give the prompt as ``token_ids`` or, when optimising many steps, as ``text_features`` computed
    once with ``model.encode_text`` (same result, no text tower per step). With the released
    ``logit_scale`` (ln 100) the loss is ``1 - cos(image, text)``."""
    if (token_ids is None) == (text_features is None):
        raise ValueError("give exactly one of token_ids and text_features")
    if text_features is None:
        text_features = model.encode_text(token_ids)
    logits_per_image = model.similarity_logits(model.encode_image(tedigan_clip_input(image)), text_features)
    return 1 - logits_per_image / TEDIGAN_LOGIT_DIVISOR
