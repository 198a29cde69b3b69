"""The benchmark's two pipeline checks: N images streamed through convmixer_suite.run.stream against N times the
runtime's own batch latency, and the preprocessing of convmixer_preprocess.py (convmixer_suite.guide.preprocess) at 2
workers against 1 (figures only, never judged)."""
import os
import tempfile
from pathlib import Path

import numpy as np

from convmixer_suite.bench.inputs import preprocess
from convmixer_suite.util.errors import UserError


def streaming_check(name, run, image_dir, count, batch_latency_ms) -> dict:
    """Stream ``count`` pictures through decode workers and the RunConfig ``run`` (the configuration ``name``,
    batch 1); compare the pipeline's wall time with ``count`` times that runtime's batch-1 latency measured
    before."""
    from convmixer_suite.run.stream import BatchStream, default_workers, run_stream
    from convmixer_suite.guide.transform import EvalTransform, list_images
    paths, _ = list_images(image_dir)
    paths = paths[:count]
    # spawn: this process already runs runtime threads, which a forked worker must not inherit
    with BatchStream(paths, 1, EvalTransform(run.data_config), default_workers(), start_method="spawn") as stream:
        backend = run.create_backend()
        backend.predict(np.zeros((1, *run.sample_shape), np.float32))  # warm-up, as the timed runs had
        stream.wait_first()  # spawned workers start slower than the CLI's forked ones, which decode during load
        _, times, _ = run_stream(stream, backend, [p.name for p in paths], [0] * len(paths), log=lambda line: None)
    rates = times.rates()
    expected_s = len(paths) * batch_latency_ms / 1000.0
    return {"config": name, "num_images": len(paths), "batch_size": 1, "workers": stream.workers,
            "pipeline_s": times.pipeline_s, "runtime_batch_latency_ms": batch_latency_ms,
            "n_times_batch_latency_s": expected_s, "ratio_to_n_times_batch_latency": times.pipeline_s / expected_s,
            "ratio_to_own_inference_time": rates["pipeline_overhead_ratio"], "stages": rates}


def preprocessing_check(image_dir: Path, work: Path, rounds: int = 2) -> dict:
    """The preprocessing at 1 and 2 workers, alternating, each into a fresh folder."""
    rates = {1: [], 2: []}
    for _ in range(rounds):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                rate = preprocess(image_dir, Path(tmp) / "prep", workers)
                if rate is None:
                    raise UserError(f"{image_dir}: no images to preprocess")
                rates[workers].append(rate)
    one, two = float(np.mean(rates[1])), float(np.mean(rates[2]))
    return {"num_images": len(list(image_dir.glob("*.JPEG"))), "images_per_s_1_worker": one,
            "images_per_s_2_workers": two, "speedup_2_vs_1": two / one if one else 0.0, "rounds": rounds,
            "cpu_count": os.cpu_count()}
