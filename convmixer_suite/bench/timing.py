"""Side-by-side timing of loaded backends: each in turn on its batch, so any drift of the machine hits all alike."""
import time

import numpy as np


def time_alternating(backends: dict, batches: dict, iters: int, warmup: int, log=None) -> dict:
    """{name: [latency ms, …]}: warm-up for each first, then each in turn on ``batches[name]``, ``iters`` rounds;
    ``log``, where given, gets a line after each round with the time it took and an estimate of the time left.

    Each turn runs one untimed batch before the timed one: on two cores the runtime that ran last still
    holds them for a while (ONNX Runtime's and OpenMP's threads spin after a run), and measured here that
    added about 15% to the next runtime's first batch, always to the same neighbour in the rotation.
    """
    for name, backend in backends.items():
        for _ in range(warmup):
            backend.predict(batches[name])
    times = {name: [] for name in backends}
    for round_index in range(iters):
        started_round = time.perf_counter()
        for name, backend in backends.items():
            batch = batches[name]
            backend.predict(batch)
            started = time.perf_counter()
            backend.predict(batch)
            times[name].append((time.perf_counter() - started) * 1000.0)
        if log is not None:
            seconds = time.perf_counter() - started_round
            log(f"    round {round_index + 1}/{iters}: {seconds:.0f} s; about {seconds * (iters - round_index - 1):.0f} "
                f"s left")
    return times


def latency_row(name, backend, batch_size, times_ms) -> dict:
    t = np.asarray(times_ms)
    return {"config": name, "backend": backend.name, "precision": backend.precision, "batch_size": batch_size,
            "latency_ms": {"p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)),
                           "p99": float(np.percentile(t, 99)), "mean": float(t.mean()), "min": float(t.min())},
            "per_image_ms": float(t.mean()) / batch_size,
            "throughput_images_per_s": batch_size * 1000.0 / float(t.mean()), "iterations": int(t.size)}


def add_ratios(rows, reference: str) -> None:
    """Each row's throughput over the reference's at the same batch size (``ratio_to_torch_fp32``)."""
    ref = {r["batch_size"]: r["throughput_images_per_s"] for r in rows if r["config"] == reference}
    for r in rows:
        r["ratio_to_torch_fp32"] = r["throughput_images_per_s"] / ref[r["batch_size"]]


def row_of(rows, config, batch_size):
    return next((r for r in rows if r["config"] == config and r["batch_size"] == batch_size), None)
