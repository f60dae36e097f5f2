"""BiSeNet face parser (Yu et al., ECCV 2018), key-compatible with the published ``79999_iter.pth``.

Layout of that checkpoint (191 keys): a ResNet-18 context path under ``cp.resnet.``, two attention
refinement modules (1/16, 1/32), a global-average context, a feature fusion module and three
heads (main on the fused 1/8 feature, two auxiliary heads). In this checkpoint the spatial path is
the ResNet's own 1/8 feature (``layer2``): there are no separate spatial-path weights.
Outputs are 19 logits in BiSeNet's class order (see ``vocab.BISENET_ORDER``); map to ours with
``vocab.BISENET_TO_CELEBAMASK``. Nothing is downloaded: weights come from the weights manager.

Inference path of the backend: :func:`prepare_for_inference` (batch norm folded into the convolutions,
channels-last weights) and :meth:`BiSeNet.parse_logits` (the main head only: the two auxiliary heads
serve training). The parity fixture is checked on that path too.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from napari_faceedit.folding import fold_batchnorm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 512  # official preprocessing resizes every face crop to 512x512


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.inplace = False  # prepare_for_inference: activations in place on fresh tensors

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=self.inplace)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.inplace = False  # prepare_for_inference: activations and the sum in place on fresh tensors

    def forward(self, x):
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)), inplace=self.inplace)))
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.inplace:
            return F.relu_(residual.add_(shortcut))
        return F.relu(shortcut + residual)


class ResNet18Features(nn.Module):
    """ResNet-18 without the classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class AttentionRefinement(nn.Module):
    """3x3 conv, then reweight channels by a sigmoid of the pooled feature."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        attention = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * attention


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18Features()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        context = F.interpolate(context, size=feat32.shape[-2:], mode="nearest")
        feat32_sum = self.arm32(feat32) + context
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, size=feat16.shape[-2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, size=feat8.shape[-2:], mode="nearest"))
        return feat8, feat16_up, feat32_up  # 1/8 backbone, 1/8 context, 1/16 context


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial, context):
        feat = self.convblk(torch.cat([spatial, context], 1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat + feat * attention


class OutputHead(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """(N,3,H,W) ImageNet-normalised RGB -> (logits, logits16, logits32), each (N,n_classes,H,W)."""

    def __init__(self, n_classes: int = 19):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    def features(self, x) -> dict[str, torch.Tensor]:
        """Every intermediate the parity fixture records, plus the three logits."""
        size = x.shape[-2:]
        feat_res8, feat_cp8, feat_cp16 = self.cp(x)
        feat_fuse = self.ffm(feat_res8, feat_cp8)  # spatial path = the backbone's 1/8 feature

        def head(module, feat):
            return F.interpolate(module(feat), size=size, mode="bilinear", align_corners=True)

        return {
            "feat_res8": feat_res8, "feat_cp8": feat_cp8, "feat_cp16": feat_cp16, "feat_fuse": feat_fuse,
            "logits": head(self.conv_out, feat_fuse),
            "logits16": head(self.conv_out16, feat_cp8),
            "logits32": head(self.conv_out32, feat_cp16),
        }

    def forward(self, x):
        out = self.features(x)
        return out["logits"], out["logits16"], out["logits32"]

    def parse_logits(self, x) -> torch.Tensor:
        """The main head's logits at the input size: ``forward(x)[0]`` without the auxiliary heads
        (their convolutions and two 19-channel upsamplings to full size are a fifth of the forward)."""
        feat_res8, feat_cp8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(feat_res8, feat_cp8))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)


def prepare_for_inference(model: BiSeNet, channels_last: bool = True) -> BiSeNet:
    """The backend's fast CPU path, in place: eval(), no parameter gradients, batch norm folded into
    the convolutions, in-place activations and channels-last weights (oneDNN's preferred layout; max pooling and the 1x1
    convolutions gain most). Call after loading the checkpoint."""
    model.eval().requires_grad_(False)
    fold_batchnorm(model)
    for module in model.modules():
        if isinstance(module, (ConvBNReLU, BasicBlock)):
            module.inplace = True  # safe once folded: every activation input is a fresh conv output
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def imagenet_normalize(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std
