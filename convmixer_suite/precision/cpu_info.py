"""Which CPU a measurement ran on: vendor, family/model, the instruction-set flags that decide int8/bf16 speed.

Figures of the benchmark depend on them (CPU generations with the same flags differ widely, and AMX, where
present, changes int8 and bf16 again), so every report names them.
"""
import os
import platform
from pathlib import Path

from convmixer_suite.util.errors import UserError

# The flags that decide which kernels the runtimes pick for fp32, bf16 and int8.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
CPUINFO_FIELDS = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "model name": "model_name",
                  "stepping": "stepping"}


def parse_cpuinfo(text: str) -> dict:
    """The first processor's vendor, family, model, model name and stepping, and the speed flags it has."""
    info, flags = {}, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in CPUINFO_FIELDS and CPUINFO_FIELDS[key] not in info:
            info[CPUINFO_FIELDS[key]] = value
        elif key == "flags" and not flags:
            flags = set(value.split())
    info["flags"] = [f for f in SPEED_FLAGS if f in flags]
    return info


def cpu_info() -> dict:
    """This machine's CPU as ``parse_cpuinfo`` reads /proc/cpuinfo (platform's names where it is absent),
    with the logical CPU count and the 1-minute load average at the time of the call."""
    try:
        info = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        info = {"model_name": platform.processor() or platform.machine(), "flags": []}
    info["logical_cpus"] = os.cpu_count()
    info["load_average_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return info


def describe_cpu(info: dict) -> str:
    """One line: ``AuthenticAMD AMD EPYC (family 25, model 17), 2 logical CPUs; avx512_bf16, …; no AMX``."""
    name = " ".join(v for v in (info.get("vendor"), info.get("model_name")) if v) or "unknown CPU"
    where = f" (family {info['family']}, model {info['model']})" if info.get("family") else ""
    flags = info.get("flags") or []
    amx = "" if any(f.startswith("amx") for f in flags) else "; no AMX"
    return f"{name}{where}, {info.get('logical_cpus')} logical CPUs; {', '.join(flags) or 'no listed flags'}{amx}"


# The int8 classes. Without VNNI or AMX, x86 int8 kernels multiply u8 by s8 and add pairs of products in 16 bits
# (vpmaddubsw), which saturates with 8-bit weights (docs/precision.md); VNNI and AMX add in 32 bits.
INT8_CLASSES = ("avx2", "vnni", "amx")
# oneDNN's ONEDNN_MAX_CPU_ISA values (lower case) -> the best int8 class they allow. OpenVINO's CPU plugin honours
# the cap, so a VNNI machine runs the AVX2-only kernels with ONEDNN_MAX_CPU_ISA=AVX2.
ISA_CAP_CLASSES = {"sse41": "avx2", "avx": "avx2", "avx2": "avx2", "avx512_core": "avx2",
                   "avx2_vnni": "vnni", "avx2_vnni_2": "vnni", "avx512_core_vnni": "vnni", "avx512_core_bf16": "vnni",
                   "avx10_1_512": "vnni", "avx512_core_fp16": "vnni", "avx10_1_512_amx": "amx",
                   "avx512_core_amx": "amx", "avx10_1_512_amx_fp16": "amx", "avx512_core_amx_fp16": "amx",
                   "all": "amx", "default": "amx"}


def int8_class(flags, isa_cap=None) -> str:
    """``amx``, ``vnni`` (AVX512-VNNI or AVX-VNNI) or ``avx2`` (neither: the saturating u8 x s8 kernels) for a set
    of /proc/cpuinfo flags, lowered to what ``isa_cap`` (an ONEDNN_MAX_CPU_ISA value) lets the kernels use."""
    flags = set(flags)
    if "amx_int8" in flags:
        found = "amx"
    elif flags & {"avx512_vnni", "avx_vnni"}:
        found = "vnni"
    else:
        found = "avx2"
    if not isa_cap:
        return found
    cap = isa_cap.strip().lower()
    if cap not in ISA_CAP_CLASSES:
        raise UserError(f"ONEDNN_MAX_CPU_ISA={isa_cap}: not a oneDNN ISA name "
                         f"({', '.join(sorted(ISA_CAP_CLASSES))})")
    allowed = ISA_CAP_CLASSES[cap]
    if cap.startswith("avx2_vnni") and "avx_vnni" not in flags:
        allowed = "avx2"  # AVX2 kernels with VNNI need the 256-bit AVX-VNNI, not AVX512-VNNI
    return min(found, allowed, key=INT8_CLASSES.index)


def this_int8_class() -> str:
    """This machine's int8 class, following ONEDNN_MAX_CPU_ISA where it is set."""
    return int8_class(cpu_info()["flags"], os.environ.get("ONEDNN_MAX_CPU_ISA"))


# The libraries whose versions a run's summary records, when the run loaded them.
RUN_LIBRARIES = ("numpy", "onnxruntime", "openvino", "torch", "nncf", "PIL", "ray")


def peak_rss_mb():
    """This process's peak resident memory (Linux's VmHWM) in MB, or None where /proc/self/status has no such
    line."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024.0 for line in lines if line.startswith("VmHWM:")), None)


def host_record(device=None) -> dict:
    """Where and when a run ran, for its summary: the CPU in one line, the GPU's name where the run used CUDA
    through PyTorch, OS, Python, the versions of the libraries the run loaded, the time it finished."""
    import sys
    import time
    record = {"cpu": describe_cpu(cpu_info()), "os": platform.platform(), "python": platform.python_version(),
              "libraries": {name: getattr(sys.modules[name], "__version__", "unknown")
                            for name in RUN_LIBRARIES if name in sys.modules},
              "finished": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    torch = sys.modules.get("torch")
    if device and str(device).startswith("cuda") and torch is not None and torch.cuda.is_available():
        index = int(str(device).partition(":")[2] or 0)
        record["gpu"] = torch.cuda.get_device_name(index)
    return record
