"""Process-wide CUDA settings the GPU backends share: the card a torch backend runs on, after the one-line
refusals, and fp32 as IEEE fp32 (no TF32) in torch and in TensorRT."""
import os

from convmixer_suite.util.errors import SettingError

BF16_MIN_CAPABILITY = (8, 0)  # CUDA bf16 arithmetic: Ampere (compute capability 8.0) and later
# NVIDIA's libraries use no TF32 with this at 0; TensorRT has no other switch through ONNX Runtime
TF32_OVERRIDE = "NVIDIA_TF32_OVERRIDE"


def cuda_device(torch, device, index, precision):
    """The torch.device for cuda:N, after the one-line refusals: no CUDA, no such card, bf16 on a card before
    Ampere (compute capability 8.0). Each is something this machine lacks (``unavailable``)."""
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise SettingError("device", f"{device}: this torch ({torch.__version__}, {build}) sees no CUDA device",
                           unavailable=True)
    count = torch.cuda.device_count()
    if index >= count:
        raise SettingError("device", f"{device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}",
                           unavailable=True)
    if precision == "bf16":
        capability = tuple(torch.cuda.get_device_capability(index))
        if capability < BF16_MIN_CAPABILITY:
            raise SettingError("precision", f"bf16: cuda:{index} ({torch.cuda.get_device_name(index)}) has compute "
                                            f"capability {capability[0]}.{capability[1]}; bf16 needs "
                                            f"{BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]} or later (Ampere); "
                                            f"use fp16", unavailable=True)
    torch.backends.cudnn.benchmark = True  # a fixed shape per batch size: cuDNN times its algorithms once
    ieee_fp32(torch)
    return torch.device(f"cuda:{index}")


def ieee_fp32(torch) -> None:
    """fp32 means IEEE fp32, on every backend of this process alike: no TF32 in cuDNN convolutions or cuBLAS
    matmuls. torch 2.13 reads the ``fp32_precision`` settings (its ``allow_tf32`` flags are their deprecated
    aliases: turned off, they leave convolutions at "none", IEEE only through the defaults above them); the old
    flags are turned off first, as setting them resets the new ones, and so that what still reads them (the
    guards of torch.compile, say) finds them agreeing with the new, rather than an error."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cudnn.rnn.fp32_precision = "ieee"  # read with conv's by allow_tf32: the two must agree


def tensorrt_ieee_fp32() -> None:
    """TensorRT builds its engines without TF32: read when it builds, its only TF32 switch."""
    os.environ[TF32_OVERRIDE] = "0"
