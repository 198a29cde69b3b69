"""Which CPU a measurement ran on: vendor, family/model, the instruction-set flags that decide int8/bf16 speed.

Figures of the benchmark depend on them (Zen 4 and Zen 5 differ by about 2x; AMX, where present, changes int8
and bf16 again), so every report names them.
"""
import os
import platform
from pathlib import Path

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
