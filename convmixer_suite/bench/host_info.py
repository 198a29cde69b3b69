"""What this host reports about itself beyond its CPU model (convmixer_suite.precision.cpu_info): sockets and cores,
clock, caches, memory, storage, network cards, operating system, virtualization. Linux's /proc and /sys are
read; what a host does not expose comes back as ``None`` and the caller says so."""
import os
import platform
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu/cpu0")


def read_text(path) -> "str | None":
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpuinfo_values(key: str) -> list:
    """Every value of ``key`` in /proc/cpuinfo, one per logical CPU."""
    text = read_text("/proc/cpuinfo") or ""
    return [line.partition(":")[2].strip() for line in text.splitlines() if line.partition(":")[0].strip() == key]


def sockets_and_cores() -> tuple:
    """(processor packages, physical cores per package), from /proc/cpuinfo's ``physical id`` and ``cpu cores``."""
    packages = len(set(cpuinfo_values("physical id"))) or 1
    cores = cpuinfo_values("cpu cores")
    return packages, int(cores[0]) if cores else (os.cpu_count() or 1) // packages


def frequency_mhz() -> "float | None":
    """The highest clock the kernel reports (cpufreq's maximum, else /proc/cpuinfo's current ``cpu MHz``)."""
    top_khz = read_text(SYS_CPU / "cpufreq" / "cpuinfo_max_freq")
    if top_khz:
        return int(top_khz) / 1000.0
    current = cpuinfo_values("cpu MHz")
    return max(float(v) for v in current) if current else None


def caches() -> list:
    """``L1d 32K`` … of cpu0, as /sys/devices/system/cpu/cpu0/cache/index*/ describe them."""
    found = []
    for index in sorted(SYS_CPU.glob("cache/index*")):
        level, kind, size = (read_text(index / name) for name in ("level", "type", "size"))
        if level and size:
            suffix = {"Data": "d", "Instruction": "i"}.get(kind or "", "")
            found.append(f"L{level}{suffix} {size}")
    return found


def memory_gib() -> "float | None":
    total = [line.split()[1] for line in (read_text("/proc/meminfo") or "").splitlines()
             if line.startswith("MemTotal:")]
    return int(total[0]) / 2 ** 20 if total else None


def block_devices() -> list:
    """(name, size in GiB, rotational) of each disk in /sys/block, loop and RAM devices left out."""
    found = []
    for device in sorted(Path("/sys/block").glob("*")):
        if device.name.startswith(("loop", "ram", "zram")):
            continue
        sectors = read_text(device / "size")
        found.append((device.name, int(sectors) * 512 / 2 ** 30 if sectors else None,
                      read_text(device / "queue" / "rotational") == "1"))
    return found


def network_cards() -> list:
    """Network interfaces backed by a device (/sys/class/net/*/device), the virtual ones left out."""
    return [nic.name for nic in sorted(Path("/sys/class/net").glob("*")) if (nic / "device").exists()]


def operating_system() -> str:
    try:
        name = platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        name = None
    return f"{name or platform.system()} (kernel {platform.release()})"


def virtualized() -> bool:
    """The CPU flag a hypervisor sets for its guests."""
    flags = cpuinfo_values("flags")
    return bool(flags) and "hypervisor" in flags[0].split()
