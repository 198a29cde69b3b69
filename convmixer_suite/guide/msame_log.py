"""msame's stdout log lines and the timing summary JSON: the one place that writes (and reads) them.

convmixer_infer.py and the streaming evaluation print their timings through these functions, so
test/parse.py and every existing msame log parser read our logs as they read msame's. The formats are
msame's (see docs/formats.md): ``Inference time: <x>ms`` per file, and at the end of a folder run
``Inference average time : %.2f ms`` and ``Inference average time without first time: %.2f ms``; a single
file run (``--loop``) ends with ``Inference average time: %f ms`` and, when looped, the same "without first
time" line with ``%f``. The "without first time" line appears only when more than one run was timed.

These lines close the log: msame prints nothing after them but teardown lines without the letters ``ms``,
and the guide's parse.py depends on it (its ``without first time:.*ms`` match is greedy). So our scripts
print their own information before the averages or on stderr.
"""
import json
import re
from pathlib import Path

import numpy as np

from convmixer_suite.util.files import write_text_atomic

TIME_LINE_RE = re.compile(r"^Inference time:\s*([\d.]+)\s*ms", re.MULTILINE)
AVERAGE_PREFIX = "Inference average time"
WITHOUT_FIRST_RE = re.compile(r"Inference average time without first time\s*:\s*([\d.]+)\s*ms")
AVERAGE_RE = re.compile(r"Inference average time\s*:\s*([\d.]+)\s*ms")


def start_line(path) -> str:
    return f"[INFO] start to process file:{path}"


def time_line(latency_ms: float) -> str:
    return f"Inference time: {latency_ms:.3f}ms"


def folder_average_lines(latencies_ms) -> list:
    """msame's closing lines for a folder input: the mean over all files, then, only when more than one
    file ran, the mean without the first."""
    return average_lines(latencies_ms, "Inference average time : {:.2f} ms", "{:.2f}")


def single_file_average_lines(latencies_ms) -> list:
    """msame's closing lines for one input file run ``--loop`` times: the mean, then, only when it ran
    more than once, the mean without the first run."""
    return average_lines(latencies_ms, "Inference average time: {:f} ms", "{:f}")


def average_lines(latencies_ms, mean_line: str, number: str) -> list:
    times = list(latencies_ms)
    lines = [mean_line.format(mean_ms(times))]
    if len(times) > 1:
        lines.append(f"Inference average time without first time: {number.format(mean_ms(times[1:]))} ms")
    return lines


def mean_ms(times) -> float:
    return float(np.mean(times)) if times else 0.0


def parse_latencies_ms(log_text: str) -> list:
    """The per-file ``Inference time: <x>ms`` values of an msame log (ours or the real tool's)."""
    return [float(m) for m in TIME_LINE_RE.findall(log_text)]


def is_average_line(line: str) -> bool:
    """One of the closing average lines (both forms, with or without the first run)."""
    return line.startswith(AVERAGE_PREFIX)


def fps_from_log(log_text: str, batch_size: int):
    """Images/s from an msame log's closing averages, or None when it has none: batch_size * 1000 / the
    "without first time" average, or the plain average when that line is absent or 0.00 (one input file)."""
    averages_ms = [float(v) for v in WITHOUT_FIRST_RE.findall(log_text) if float(v) > 0]
    averages_ms = averages_ms or [float(v) for v in AVERAGE_RE.findall(log_text) if float(v) > 0]
    if not averages_ms:
        return None
    return batch_size * 1000.0 / averages_ms[-1]


def latency_stats_ms(latencies_ms) -> dict:
    """min/mean/median/p90/p99 (ms) of per-batch model-execution latencies, plus their count."""
    t = np.asarray(list(latencies_ms), dtype=np.float64)
    if t.size == 0:
        return {"count": 0}
    return {"min": float(t.min()), "mean": float(t.mean()), "median": float(np.median(t)),
            "p90": float(np.percentile(t, 90)), "p99": float(np.percentile(t, 99)),
            "max": float(t.max()), "count": int(t.size)}


def throughput_images_per_s(latencies_ms, batch_size: int) -> float:
    """Images per second of model execution, as test/parse.py computes it from the log:
    batch_size * 1000 / mean latency, leaving out the first (warm-up) batch when there are others."""
    times = list(latencies_ms)
    steady = times[1:] if len(times) > 1 else times
    if not steady or not batch_size:
        return 0.0
    mean_ms = float(np.mean(steady))
    return batch_size * 1000.0 / mean_ms if mean_ms > 0 else 0.0


def build_summary(latencies_ms, *, batch_size, backend_name, backend_version, threads, precision,
                  model, input_path, output_dir=None, **extra) -> dict:
    """The summary JSON's content. ``threads`` None means the runtime's own default; ``input_path`` is
    stored as given (callers pass the absolute input folder, which is where its .manifest.json lives)."""
    times = list(latencies_ms)
    summary = {
        "latency_ms": latency_stats_ms(times),
        "throughput_images_per_s": throughput_images_per_s(times, batch_size),
        "throughput_basis": "batch_size * 1000 / mean latency without the first batch (as test/parse.py)",
        "batch_size": batch_size,
        "backend": {"name": backend_name, "version": backend_version},
        "threads": threads,
        "precision": precision,
        "model": str(Path(model).resolve()),
        "input": input_path,
        "output_dir": str(Path(output_dir).resolve()) if output_dir is not None else None,
    }
    summary.update(extra)
    return summary


def write_summary(path, summary: dict) -> Path:
    path = Path(path)
    write_text_atomic(path, json.dumps(summary, indent=2) + "\n")
    return path
