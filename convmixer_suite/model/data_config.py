"""The model's eval data config (timm's ``resolve_data_config`` for the released ConvMixers), without PyTorch.

Preprocessing (``transform``) and the runtimes' input shape (``backends``) read it from here, so that a process
that only decodes images or runs ONNX Runtime never imports torch (a Ray decode task or replica would pay seconds
for it at start-up). ``convmixer_net`` re-exports both names: it is where the model and its config are documented.
"""
import math
from dataclasses import asdict, dataclass
from functools import reduce


@dataclass(frozen=True)
class DataConfig:
    """The eval transform's parameters: resize the shorter side, center crop, scale, normalize."""
    input_size: tuple = (3, 224, 224)
    crop_pct: float = 0.96
    interpolation: str = "bicubic"
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)

    @property
    def crop_size(self) -> int:
        return self.input_size[-1]

    @property
    def resize_size(self) -> int:
        """Shorter side before the crop, as timm computes it: floor(224 / 0.96) = 233."""
        return math.floor(self.crop_size / self.crop_pct)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resize_size"] = self.resize_size
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        return cls(input_size=tuple(d["input_size"]), crop_pct=float(d["crop_pct"]),
                   interpolation=d["interpolation"], mean=tuple(d["mean"]), std=tuple(d["std"]))


DATA_CONFIG = DataConfig()
IMAGE_SHAPE = tuple(DATA_CONFIG.input_size)  # one image as the model takes it: channels, height, width
IMAGE_BYTES = reduce(lambda a, b: a * b, IMAGE_SHAPE) * 4  # one float32 image in a .bin batch file
