"""Batch norm folded into the layer before it, for the inference paths of the faithful networks:
``norm(layer(x))`` becomes one layer with a scaled weight and a bias (eval-mode statistics). Same
function up to float rounding; the state-dict keys change, so weights are loaded first."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_batchnorm_into(layer: nn.Module, norm: nn.Module, bias: torch.Tensor | None = None,
                        weight_scale: float = 1.0) -> None:
    """Fold ``norm(layer_without_bias(x) * weight_scale + bias)`` into ``layer``'s weight and bias, in
    place; ``bias`` defaults to the layer's own. ``layer`` is an ``nn.Conv2d``, ``nn.ConvTranspose2d``
    or ``nn.Linear``."""
    if norm.training:
        raise RuntimeError("batch norm folding needs eval mode (running statistics); call .eval() first")
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    if bias is None:
        bias = layer.bias
    if bias is not None:
        shift = shift + bias * scale
    # Output channels are the weight's first axis, but the second for a transposed convolution.
    shape = [1] * layer.weight.ndim
    shape[1 if isinstance(layer, nn.ConvTranspose2d) else 0] = -1
    layer.weight.mul_((scale * weight_scale).view(shape))
    layer.bias = nn.Parameter(shift.clone())


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d into the (transposed) convolution registered right before it, in place,
    replacing the norm by an identity. Convolution -> norm pairs are found in registration order,
    which is the execution order in every network here."""
    children = list(module.named_children())
    for (_, layer), (norm_name, norm) in zip(children, children[1:]):
        if isinstance(norm, nn.BatchNorm2d) and isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            fold_batchnorm_into(layer, norm)
            setattr(module, norm_name, nn.Identity())
    for child in module.children():
        fold_batchnorm(child)
    return module
