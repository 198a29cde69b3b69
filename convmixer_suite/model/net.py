"""ConvMixer ("Patches Are All You Need?", locuslab/convmixer) as an exportable PyTorch model.

The layers and the ``nn.Sequential`` indices are upstream's, so the released checkpoints load with
``strict=True``: ``0`` stem conv, ``1`` activation, ``2`` stem BN, ``3``..``3+depth-1`` blocks
(``N.0.fn.0`` depthwise conv, ``N.0.fn.2`` BN, ``N.1`` pointwise conv, ``N.3`` BN), then pooling,
flatten and the ``Linear`` head. The one change from upstream is the padding: ``padding="same"`` is
replaced by the explicit symmetric ``kernel_size // 2`` (identical for odd kernels), which ONNX opset 11
and atc accept.

The model's eval data config (timm's ``resolve_data_config`` for these models), ``DATA_CONFIG`` and its class
``DataConfig``, is defined in ``convmixer_suite.model.data_config`` (no torch there, so that decoding and the other
runtimes never import it) and re-exported here under the same names.
"""
from dataclasses import dataclass

import torch.nn as nn

from convmixer_suite.model.data_config import DATA_CONFIG, DataConfig

__all__ = ["ACTIVATIONS", "ARCHS", "ArchSpec", "ConvMixer", "DATA_CONFIG", "DEFAULT_ARCH", "DataConfig",
           "RELEASE_URL", "Residual", "build_model", "convmixer_1024_20_ks9_p14", "convmixer_1536_20",
           "convmixer_768_32"]


@dataclass(frozen=True)
class ArchSpec:
    """One released ConvMixer variant: its shape, activation, checkpoint file and download address, and the
    ImageNet top-1 its paper reports for that checkpoint where it does. All of them were evaluated with the one
    ``DATA_CONFIG``."""
    name: str
    dim: int
    depth: int
    kernel_size: int
    patch_size: int
    activation: str = "gelu"
    checkpoint: str = ""
    paper_top1_percent: "float | None" = None

    @property
    def url(self) -> str:
        return RELEASE_URL + self.checkpoint

    def build(self, n_classes: int = 1000) -> nn.Sequential:
        return ConvMixer(self.dim, self.depth, self.kernel_size, self.patch_size, n_classes,
                         activation=ACTIVATIONS[self.activation])


RELEASE_URL = "https://github.com/tmp-iclr/convmixer/releases/download/v1.0/"
ARCHS = {spec.name: spec for spec in (
    ArchSpec("convmixer_1536_20", 1536, 20, 9, 7, "gelu", "convmixer_1536_20_ks9_p7.pth.tar", 81.37),
    ArchSpec("convmixer_1024_20_ks9_p14", 1024, 20, 9, 14, "gelu", "convmixer_1024_20_ks9_p14.pth.tar"),
    ArchSpec("convmixer_768_32", 768, 32, 7, 7, "relu", "convmixer_768_32_ks7_p7_relu.pth.tar", 80.16),
)}
DEFAULT_ARCH = "convmixer_1536_20"
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def ConvMixer(dim, depth, kernel_size=9, patch_size=7, n_classes=1000, activation=nn.GELU):
    """Upstream's ConvMixer with explicit symmetric padding; same layers, same state-dict keys."""
    return nn.Sequential(
        nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size),
        activation(),
        nn.BatchNorm2d(dim),
        *[nn.Sequential(
            Residual(nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2),
                activation(),
                nn.BatchNorm2d(dim),
            )),
            nn.Conv2d(dim, dim, kernel_size=1),
            activation(),
            nn.BatchNorm2d(dim),
        ) for _ in range(depth)],
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(dim, n_classes),
    )


def build_model(arch: str = DEFAULT_ARCH, n_classes: int = 1000) -> nn.Sequential:
    return ARCHS[arch].build(n_classes)


def convmixer_1536_20(n_classes: int = 1000) -> nn.Sequential:
    return build_model("convmixer_1536_20", n_classes)


def convmixer_1024_20_ks9_p14(n_classes: int = 1000) -> nn.Sequential:
    return build_model("convmixer_1024_20_ks9_p14", n_classes)


def convmixer_768_32(n_classes: int = 1000) -> nn.Sequential:
    """Released with ReLU instead of GELU (kernel 7, patch 7)."""
    return build_model("convmixer_768_32", n_classes)
