"""Side-by-side speed and fidelity of every runtime and precision on ConvMixer, in one run.

    python3 test/benchmark.py                      # ConvMixer-1536/20, seeded random weights, all configurations
    python3 test/benchmark.py --checkpoint ./convmixer_1536_20_ks9_p7.pth.tar --images ./photos
    python3 test/benchmark.py --quick              # a small ConvMixer, 2 timed batches: checks that it all runs
    python3 test/benchmark.py --quick --scenarios SingleStream,Offline   # and under MLPerf LoadGen

For each batch size, every configuration is loaded and warmed up, then timed in alternation (A B C A B C …), so
any drift of the machine hits all alike. Reported per configuration and batch size: latency p50/p90/p99 (ms),
throughput (images/s = batch size * 1000 / mean latency) and the throughput as a ratio to PyTorch eager fp32 at
the same batch size. Beside each configuration its ceiling is timed in the same alternation: the model's
pointwise convolutions alone (convmixer_suite.ceiling), same runtime, precision and quantizer; efficiency =
ceiling time / model time. Beside speed, fidelity on ``--images`` (default: generated pictures): top-1 agreement with
PyTorch fp32 and max |logit diff| / max |logit|. Then two pipeline checks: N images streamed through
convmixer_suite.stream against N times the runtime's own batch latency, and convmixer_preprocess.py at 2
workers against 1. ``--scenarios`` runs every configuration under MLPerf LoadGen (convmixer_suite.loadgen_harness;
logs in ``--out``/loadgen/<config>/<scenario>/), ``--loadgen-accuracy`` adds an AccuracyOnly run scored against
``--labels``, ``--profile`` adds a layer-by-layer profile. The CPU is named (convmixer_suite.cpu_info).
Writes benchmark.json (units in the key names), benchmark.md and benchmark_throughput.png
(matplotlib, optional: requirements-bench.txt) into ``--out``; models, images and int8 models are cached in
``--out``/work, so a rerun skips the export and the quantization.

Runtime at full size (1536/20, ~100 GFLOP per image; fp32 ~0.3-0.6 s per image on 2 cores): about 20 minutes
with the defaults the first time (int8 calibration on 300 images for each of the two int8 routes included),
about 12 minutes once cached; ``--iters`` and ``--batch-sizes`` bound it. ``--quick`` takes well under a minute.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from convmixer_net import ARCHS, DEFAULT_ARCH, ArchSpec  # noqa: E402
from convmixer_suite.ceiling import (ceiling_input, ceiling_input_shape, efficiency_rows, load_ceilings,  # noqa: E402
                                     model_macs, pointwise_macs)
from convmixer_suite.cli import UserError, atomic_path, run_main, write_text_atomic  # noqa: E402
from convmixer_suite.profiling import profile_markdown  # noqa: E402

# name -> (backend, precision). torch-fp32 is the reference every ratio and fidelity figure is relative to.
CONFIGS = {
    "torch-fp32": ("torch", "fp32"),
    "onnxruntime-fp32": ("onnxruntime", "fp32"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "onnxruntime-int8": ("onnxruntime", "int8"),
    "openvino-int8": ("openvino", "int8"),
}
REFERENCE = "torch-fp32"
CEILING_PREFIX = "ceiling:"  # timed beside each configuration: its pointwise convolutions alone
FIDELITY_LIMIT = 0.02  # the issue's "within 2% of fp32": max |diff| / max |logit|
QUICK_ARCH = "convmixer_32_2_ks5_p14"
CUSTOM_ARCH_RE = re.compile(r"^convmixer_(\d+)_(\d+)_ks(\d+)_p(\d+)$")
PICTURE_SIZES = ((500, 375), (375, 500), (500, 333), (640, 480))  # typical ImageNet val sizes
CALIB_SEED_OFFSET = 100_000  # calibration pictures never coincide with the fidelity pictures


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--arch", default=None, help=f"a released arch ({', '.join(ARCHS)}) or convmixer_DIM_DEPTH_ksK_pP "
                                               f"(default {DEFAULT_ARCH}; {QUICK_ARCH} with --quick)")
    p.add_argument("--checkpoint", default=None, help="real weights (default: seeded random weights)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from: {', '.join(CONFIGS)}")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,4,16; 1,2 with --quick)")
    p.add_argument("--iters", type=int, default=None, help="timed batches per configuration and batch size "
                                                           "(default 10; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches first (default 2; 1 with --quick)")
    p.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: each one's own)")
    p.add_argument("--images", default=None, help="folder of photos for fidelity (default: generated pictures)")
    p.add_argument("--num-images", type=int, default=None, help="fidelity images (default 16; 4 with --quick)")
    p.add_argument("--calib", default=None, help="preprocessed calibration folder for int8 (default: generated)")
    p.add_argument("--num-calib", type=int, default=None, help="generated calibration images (default 300; 8 quick)")
    p.add_argument("--stream-config", default="auto",
                   help="configuration of the streaming check (auto: the fastest within 2%% of fp32 at batch 1)")
    p.add_argument("--stream-images", type=int, default=None, help="images streamed (default 32; 4 with --quick)")
    p.add_argument("--prep-images", type=int, default=None, help="images preprocessed per run of the workers "
                                                                  "check (default 200; 16 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--out", default="bench_results", help="output folder (default ./bench_results)")
    p.add_argument("--scenarios", default="", help="MLPerf LoadGen scenarios to run each configuration under, "
                                                   "comma-separated, from: SingleStream, Offline, Server (default none)")
    p.add_argument("--server-latency-ms", type=float, default=None,
                   help="Server: the 99th percentile latency bound (default 3x each configuration's batch-1 latency)")
    p.add_argument("--server-steps", type=int, default=None, help="Server: LoadGen runs of the QPS bisection "
                                                                  "(default 5; 3 with --quick)")
    p.add_argument("--loadgen-min-duration-ms", type=int, default=None,
                   help="LoadGen's minimum duration of each run (default 10000; 200 with --quick)")
    p.add_argument("--loadgen-min-queries", type=int, default=64,
                   help="LoadGen's minimum query count (default 64: SingleStream's early stopping needs 64)")
    p.add_argument("--loadgen-accuracy", action="store_true",
                   help="also a LoadGen AccuracyOnly run of each configuration on --images, scored against --labels")
    p.add_argument("--labels", default=None, help="val_label.txt of --images, for --loadgen-accuracy")
    p.add_argument("--profile", nargs="?", const="auto", default=None, metavar="CONFIG",
                   help="profile a configuration layer by layer at batch 1 with its runtime's profiler "
                        "(default: the fastest within 2%% of fp32)")
    p.add_argument("--no-ceiling", action="store_true",
                   help="skip the ceiling: the model's pointwise convolutions alone, timed beside each configuration")
    p.add_argument("--quick", action="store_true", help="small arch and few iterations: a functional check")
    p.add_argument("--engines-check", action="store_true",
                   help="only this: convmixer_stream_eval.py local vs --engine ray with 1 and 2 replicas, alternated, "
                        "on --engines-images generated pictures (needs requirements-dist.txt)")
    p.add_argument("--engines-images", type=int, default=None, help="pictures of the engines check (default 32; "
                                                                    "6 with --quick)")
    p.add_argument("--engines-rounds", type=int, default=2, help="rounds of the engines check (default 2)")
    p.add_argument("--engines-config", default="onnxruntime-fp32",
                   help=f"configuration of the engines check (default onnxruntime-fp32; from: {', '.join(CONFIGS)})")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = dict(arch=QUICK_ARCH if quick else DEFAULT_ARCH, batch_sizes="1,2" if quick else "1,4,16",
                    iters=2 if quick else 10, warmup=1 if quick else 2, num_images=4 if quick else 16,
                    num_calib=8 if quick else 300, stream_images=4 if quick else 32,
                    prep_images=16 if quick else 200, engines_images=6 if quick else 32,
                    server_steps=3 if quick else 5, loadgen_min_duration_ms=200 if quick else 10_000)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.batch_sizes = parse_int_list(args.batch_sizes, "--batch-sizes")
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        raise UserError(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if REFERENCE not in args.configs:
        args.configs.insert(0, REFERENCE)  # ratios and fidelity need the reference
    for key in ("iters", "num_images", "num_calib", "stream_images", "prep_images"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        raise UserError("--warmup must be at least 0")
    args.scenarios = parse_scenarios(args.scenarios)
    if args.loadgen_accuracy and not (args.images and args.labels):
        raise UserError("--loadgen-accuracy needs --images (photos) and --labels (their val_label.txt)")
    for key in ("server_steps", "loadgen_min_duration_ms", "loadgen_min_queries"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    return args


def parse_scenarios(text) -> list:
    from convmixer_suite.loadgen_harness import SCENARIOS
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise UserError(f"--scenarios: unknown {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return names


def parse_int_list(text, flag) -> list:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text!r}: expected positive integers")
    return values


# ---- inputs: weights, ONNX, pictures -------------------------------------------------------------------

def arch_spec(name) -> ArchSpec:
    if name in ARCHS:
        return ARCHS[name]
    match = CUSTOM_ARCH_RE.match(name)
    if not match:
        raise UserError(f"--arch {name!r}: use one of {', '.join(ARCHS)} or convmixer_DIM_DEPTH_ksK_pP")
    dim, depth, kernel, patch = map(int, match.groups())
    return ArchSpec(name, dim, depth, kernel, patch)


def seeded_checkpoint(spec: ArchSpec, seed: int, work: Path) -> Path:
    """Seeded random weights of ``spec`` (PyTorch's default init) as a state dict; written once."""
    import torch
    path = work / f"RANDOM_WEIGHTS_{spec.name}_seed{seed}.pth"
    if not path.is_file():
        torch.manual_seed(seed)
        with atomic_path(path) as tmp:
            torch.save(spec.build().eval().state_dict(), tmp)
    return path


def file_digest(path: Path) -> str:
    from convmixer_suite.records import file_sha256
    return file_sha256(path)[:12]


def cached_onnx(checkpoint: Path, work: Path) -> tuple:
    """The checkpoint exported and verified by convmixer_suite.export (issue 2's functions), cached by its hash;
    with the checkpoint's architecture."""
    from convmixer_suite.checkpoint import load_model
    from convmixer_suite.export import export_verified
    model, spec = load_model(checkpoint)
    path = work / f"{spec.name}-{file_digest(checkpoint)}.onnx"
    if not path.is_file():
        print(f"==> exporting {spec.name} to {path}", flush=True)
        for line in export_verified(model, path).lines():
            print(f"    {line}", flush=True)
    return path, spec


def generated_pictures(folder: Path, count: int, first_index: int = 0) -> Path:
    """``count`` JPEG pictures of ImageNet-like sizes (demo_data's generated pattern), written once."""
    from convmixer_suite.demo_data import sample_picture
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        if not path.is_file():
            with atomic_path(path) as tmp:
                sample_picture(first_index + i, PICTURE_SIZES[i % len(PICTURE_SIZES)]).save(tmp, format="JPEG",
                                                                                             quality=90)
    return folder


def preprocess(image_dir: Path, out: Path, workers: int, batch_size: int = 1):
    """Run convmixer_preprocess.py; returns the images/s it reports (its own timing of the batch writing),
    or None when it had nothing left to write (a cached folder it resumed)."""
    cmd = [sys.executable, str(REPO / "convmixer_preprocess.py"), "--image-path", str(image_dir),
           "--prep-image", str(out), "--batch-size", str(batch_size), "--workers", str(workers)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"convmixer_preprocess.py failed on {image_dir}: {result.stderr.strip()[-300:]}")
    match = re.search(r"in ([\d.]+) s: ([\d.]+) images/s", result.stdout)
    return float(match.group(2)) if match else None


def load_pictures(folder: Path, count: int) -> np.ndarray:
    from convmixer_suite.transform import EvalTransform, list_images, load_batch
    paths, _ = list_images(folder)
    batch, _ = load_batch(paths[:count], EvalTransform())
    return batch


# ---- loading and timing ----------------------------------------------------------------------------------

def load_configs(names, onnx_path: Path, checkpoint: Path, threads, calib_dir) -> tuple:
    """{name: loaded backend} and {name: why it was skipped} (a missing optional library, say)."""
    from convmixer_suite.backends import create_backend
    loaded, skipped = {}, {}
    for name in names:
        backend_name, precision = CONFIGS[name]
        model = checkpoint if backend_name == "torch" else onnx_path
        print(f"==> loading {name}", flush=True)
        try:
            loaded[name] = create_backend(backend_name, model, threads=threads, precision=precision,
                                          calib_dir=calib_dir)
        except UserError as exc:
            if name == REFERENCE:
                raise
            skipped[name] = str(exc)
            print(f"    skipped: {exc}", flush=True)
    return loaded, skipped


def time_alternating(backends: dict, batches: dict, iters: int, warmup: int) -> dict:
    """{name: [latency ms, …]}: warm-up for each first, then each in turn on ``batches[name]``, ``iters`` rounds.

    Each turn runs one untimed batch before the timed one: on two cores the runtime that ran last still
    holds them for a while (ONNX Runtime's and OpenMP's threads spin after a run), and measured here that
    added about 15% to the next runtime's first batch, always to the same neighbour in the rotation.
    """
    for name, backend in backends.items():
        for _ in range(warmup):
            backend.predict(batches[name])
    times = {name: [] for name in backends}
    for _ in range(iters):
        for name, backend in backends.items():
            batch = batches[name]
            backend.predict(batch)
            started = time.perf_counter()
            backend.predict(batch)
            times[name].append((time.perf_counter() - started) * 1000.0)
    return times


def latency_row(name, backend, batch_size, times_ms) -> dict:
    t = np.asarray(times_ms)
    return {"config": name, "backend": backend.name, "precision": backend.precision, "batch_size": batch_size,
            "latency_ms": {"p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)),
                           "p99": float(np.percentile(t, 99)), "mean": float(t.mean()), "min": float(t.min())},
            "per_image_ms": float(t.mean()) / batch_size,
            "throughput_images_per_s": batch_size * 1000.0 / float(t.mean()), "iterations": int(t.size)}


def add_ratios(rows) -> None:
    """Each row's throughput over the reference's at the same batch size."""
    reference = {r["batch_size"]: r["throughput_images_per_s"] for r in rows if r["config"] == REFERENCE}
    for r in rows:
        r["ratio_to_torch_fp32"] = r["throughput_images_per_s"] / reference[r["batch_size"]]


def fidelity(backends: dict, pictures: np.ndarray, chunk: int) -> dict:
    """Per configuration: top-1 agreement with the reference, max |diff| and max |diff| / max |logit|."""
    outputs = {name: np.concatenate([b.predict(pictures[i:i + chunk]) for i in range(0, len(pictures), chunk)])
               for name, b in backends.items()}
    ref = outputs[REFERENCE]
    max_logit = float(np.abs(ref).max())
    result = {}
    for name, logits in outputs.items():
        diff = float(np.abs(logits - ref).max())
        result[name] = {"top1_agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
                        "max_abs_diff": diff, "max_abs_logit": max_logit,
                        "max_rel_diff": diff / max_logit if max_logit else float("inf"),
                        "num_images": int(len(pictures))}
    return result


def layer_profile(choice, backends, rows, fid, image) -> dict:
    """``choice`` (or the fastest configuration within 2% of fp32 at batch 1) profiled layer by layer."""
    from convmixer_suite.profiling import profile_backend
    if choice == "auto":
        best = fastest_within_limit(rows, fid)
        choice = best["config"] if best else REFERENCE
    if choice not in backends:
        raise UserError(f"--profile {choice}: not among the loaded configurations ({', '.join(backends)})")
    print(f"==> profiling {choice} layer by layer at batch 1", flush=True)
    return {"config": choice, "batch_size": 1, "nodes": profile_backend(backends[choice], image)}


# ---- MLPerf LoadGen ---------------------------------------------------------------------------------------

def loadgen_settings(args):
    from convmixer_suite.loadgen_harness import LoadGenSettings
    return LoadGenSettings(min_duration_ms=args.loadgen_min_duration_ms, min_query_count=args.loadgen_min_queries,
                           server_latency_ms=args.server_latency_ms, server_bisection_steps=args.server_steps)


def run_loadgen(args, backends, pictures, rows, out: Path) -> list:
    """The chosen LoadGen scenarios on every loaded configuration; logs under ``out``/loadgen."""
    from convmixer_suite.loadgen_harness import run_scenarios
    return run_scenarios(backends, pictures, rows, out / "loadgen", args.scenarios, loadgen_settings(args),
                         log=lambda line: print(line, flush=True))


def accuracy_runs(args, backends, rows, out: Path) -> list:
    """LoadGen AccuracyOnly on every image of --images for each configuration; the logged logits scored
    against --labels with the scorer of convmixer_eval_acc.py."""
    from convmixer_suite.loadgen_harness import accuracy_logits, measured_rates, run_scenario
    from convmixer_suite.scoring import TopKAccuracy, image_key, read_labels
    from convmixer_suite.transform import EvalTransform, list_images, load_batch
    paths, _ = list_images(args.images)
    labels = read_labels(args.labels)
    missing = [p.name for p in paths if image_key(p.name) not in labels]
    if missing:
        raise UserError(f"{args.labels}: no label for {missing[0]} (and {len(missing) - 1} more images)")
    images, _ = load_batch(paths, EvalTransform())
    results = []
    for config, backend in backends.items():
        latency_ms, best_batch, best_qps = measured_rates(rows, config)
        print(f"==> LoadGen accuracy run on {config}: {len(paths)} images of {args.images}", flush=True)
        run = run_scenario(backend, images, config, "Offline", out / "loadgen" / config / "accuracy",
                           loadgen_settings(args), latency_ms=latency_ms, throughput_qps=best_qps,
                           batch_size=best_batch, accuracy=True)
        counter = TopKAccuracy(5)
        counter.update(accuracy_logits(run.log_dir, len(paths)), [labels[image_key(p.name)] for p in paths],
                       source=run.log_dir)
        top = counter.accuracies()
        results.append({"config": config, "log_dir": run.log_dir, "num_images": counter.num_images,
                        "top1": top[0], "top5": top[4] if len(top) > 4 else None})
        print(f"    top-1 {top[0]:.4f}", flush=True)
    return results


# ---- the two pipeline checks -----------------------------------------------------------------------------

def streaming_check(name, onnx_path, checkpoint, threads, calib_dir, image_dir, count, batch_latency_ms) -> dict:
    """Stream ``count`` pictures through decode workers and ``name``'s runtime at batch 1; compare the
    pipeline's wall time with ``count`` times that runtime's batch-1 latency measured above."""
    from convmixer_suite.backends import create_backend
    from convmixer_suite.stream import BatchStream, default_workers, run_stream
    from convmixer_suite.transform import EvalTransform, list_images
    paths, _ = list_images(image_dir)
    paths = paths[:count]
    backend_name, precision = CONFIGS[name]
    model = checkpoint if backend_name == "torch" else onnx_path
    # spawn: this process already runs runtime threads, which a forked worker must not inherit
    with BatchStream(paths, 1, EvalTransform(), default_workers(), start_method="spawn") as stream:
        backend = create_backend(backend_name, model, threads=threads, precision=precision, calib_dir=calib_dir)
        backend.predict(np.zeros((1, 3, 224, 224), np.float32))  # warm-up, as the timed runs had
        stream.wait_first()  # spawned workers start slower than the CLI's forked ones, which decode during load
        _, times, _ = run_stream(stream, backend, [p.name for p in paths], [0] * len(paths), log=lambda line: None)
    rates = times.rates()
    expected_s = len(paths) * batch_latency_ms / 1000.0
    return {"config": name, "num_images": len(paths), "batch_size": 1, "workers": stream.workers,
            "pipeline_s": times.pipeline_s, "runtime_batch_latency_ms": batch_latency_ms,
            "n_times_batch_latency_s": expected_s, "ratio_to_n_times_batch_latency": times.pipeline_s / expected_s,
            "ratio_to_own_inference_time": rates["pipeline_overhead_ratio"], "stages": rates}


def preprocessing_check(image_dir: Path, work: Path, rounds: int = 2) -> dict:
    """convmixer_preprocess.py at 1 and 2 workers, alternating, each into a fresh folder."""
    rates = {1: [], 2: []}
    for _ in range(rounds):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                rate = preprocess(image_dir, Path(tmp) / "prep", workers)
                if rate is None:
                    raise UserError(f"convmixer_preprocess.py reported no images/s for {image_dir}")
                rates[workers].append(rate)
    one, two = float(np.mean(rates[1])), float(np.mean(rates[2]))
    return {"num_images": len(list(image_dir.glob("*.JPEG"))), "images_per_s_1_worker": one,
            "images_per_s_2_workers": two, "speedup_2_vs_1": two / one if one else 0.0, "rounds": rounds,
            "cpu_count": os.cpu_count()}


# ---- the report --------------------------------------------------------------------------------------------

def machine_info() -> dict:
    """The CPU (convmixer_suite.cpu_info: vendor, family/model, speed flags), named in one line as ``cpu``."""
    from convmixer_suite.cpu_info import cpu_info, describe_cpu
    info = cpu_info()
    return {**info, "cpu": describe_cpu(info), "os": platform.platform(), "python": platform.python_version()}


def library_versions() -> dict:
    versions = {}
    for module in ("torch", "onnxruntime", "openvino", "nncf", "numpy"):
        try:
            mod = __import__(module)
            versions[module] = getattr(mod, "__version__", "unknown")
        except ImportError:
            versions[module] = None
    return versions


def openvino_default_precision():
    """The inference precision OpenVINO's CPU plugin picks when nobody asks (bf16 on CPUs that have it)."""
    try:
        import openvino as ov
        return str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")).replace("<Type: '", "").rstrip("'>")
    except Exception:  # openvino missing or no CPU plugin: nothing to report
        return None


def fastest_within_limit(rows, fid, batch_size=1):
    ok = [r for r in rows if r["batch_size"] == batch_size and fid.get(r["config"], {}).get("max_rel_diff", 1) <= FIDELITY_LIMIT]
    return max(ok, key=lambda r: r["throughput_images_per_s"]) if ok else None


def row_of(rows, config, batch_size):
    return next((r for r in rows if r["config"] == config and r["batch_size"] == batch_size), None)


def target_checks(rows, fid, stream, prep) -> list:
    """The issue's targets with the measured figure and whether it is met (a report, never an assertion)."""
    checks = []
    ort = row_of(rows, "onnxruntime-fp32", 1)
    if ort:
        checks.append(("onnxruntime fp32 vs PyTorch eager fp32 at batch 1", ">= 1.2x",
                       f"{ort['ratio_to_torch_fp32']:.2f}x", ort["ratio_to_torch_fp32"] >= 1.2))
    best, bf16 = fastest_within_limit(rows, fid), row_of(rows, "openvino-bf16", 1)
    if best:
        checks.append((f"fastest within 2% of fp32 ({best['config']}) per image at batch 1", "<= 80 ms",
                       f"{best['per_image_ms']:.1f} ms", best["per_image_ms"] <= 80))
        if bf16:
            ratio = best["throughput_images_per_s"] / bf16["throughput_images_per_s"]
            checks.append((f"{best['config']} vs openvino-bf16 (OpenVINO's default) at batch 1", ">= 1.45x",
                           f"{ratio:.2f}x", ratio >= 1.45))
    if stream:
        checks.append((f"streaming {stream['num_images']} images ({stream['config']}) vs N x batch latency",
                       "<= 1.1x", f"{stream['ratio_to_n_times_batch_latency']:.3f}x",
                       stream["ratio_to_n_times_batch_latency"] <= 1.1))
    if prep:
        checks.append(("convmixer_preprocess.py, 2 workers vs 1", ">= 1.8x", f"{prep['speedup_2_vs_1']:.2f}x",
                       prep["speedup_2_vs_1"] >= 1.8))
    return [{"target": t, "required": req, "measured": got, "met": bool(met)} for t, req, got, met in checks]


def display_name(name, report) -> str:
    """The configuration's name, marked where it is what OpenVINO runs when asked for nothing."""
    default = {"bfloat16": "openvino-bf16", "f32": "openvino-fp32"}.get(report["openvino_default_precision"])
    return f"{name} (OpenVINO's default here)" if name == default else name


def markdown(report) -> str:
    m = report["machine"]
    lines = [f"# ConvMixer benchmark: {report['arch']} ({report['weights']})", "",
             f"Machine: {m['cpu']}; "
             f"threads: {report['settings']['threads'] or 'each runtime default'}; "
             f"{report['settings']['iters']} timed batches per cell after {report['settings']['warmup']} warm-up, "
             f"configurations alternated (one untimed batch before each timed one). OpenVINO's default inference precision on this CPU: "
             f"{report['openvino_default_precision']}.", "",
             "Load average (1 min) before and after timing each batch size: " + ", ".join(
                 f"batch {bs} {r['load_average_1min_before']:.2f} -> {r['load_average_1min_after']:.2f}"
                 for bs, r in {r["batch_size"]: r for r in report["results"]}.items()) + ".", "",
             f"Ceiling: {report['ceiling']['what']}, timed in the same alternation; "
             "efficiency = ceiling p50 ms / model p50 ms (medians: robust to other users' bursts of load).", "",
             "| configuration | batch | p50 ms | p90 ms | p99 ms | ms/image | images/s | x torch fp32 "
             "| ceiling p50 ms | efficiency | model GOP/s | ceiling GOP/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lat = r["latency_ms"]
        lines.append(f"| {display_name(r['config'], report)} | {r['batch_size']} | {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} "
                     f"| {r['per_image_ms']:.1f} | {r['throughput_images_per_s']:.2f} | {r['ratio_to_torch_fp32']:.2f} "
                     f"| {optional(r['ceiling_ms'], '.4g')} | {optional(r['efficiency'], '.2f')} "
                     f"| {r['model_gops']:.4g} | {optional(r['ceiling_gops'], '.4g')} |")
    lines += ["", f"Fidelity against PyTorch fp32 on {report['fidelity_images']}:", "",
              "| configuration | top-1 agreement | max abs diff | max abs diff / max abs logit |", "|---|---:|---:|---:|"]
    for name, f in report["fidelity"].items():
        lines.append(f"| {display_name(name, report)} | {f['top1_agreement']:.3f} | {f['max_abs_diff']:.4g} | {f['max_rel_diff']:.4g} |")
    if report["profile"] and report["profile"]["nodes"]:
        lines += [""] + profile_markdown(display_name(report["profile"]["config"], report), report["profile"]["nodes"])
    lines += loadgen_markdown(report)
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
    lines += ["", "| target | required | measured | met |", "|---|---|---|---|"]
    lines += [f"| {c['target']} | {c['required']} | {c['measured']} | {'yes' if c['met'] else 'no'} |"
              for c in report["targets"]]
    return "\n".join(lines) + "\n"


def optional(value, fmt) -> str:
    return "n/a" if value is None else format(value, fmt)


def loadgen_markdown(report) -> list:
    """LoadGen's verdict and figures for each configuration and scenario, as LoadGen printed them."""
    lines = []
    if report["loadgen"]:
        lines += ["", "MLPerf LoadGen (logs under loadgen/<config>/<scenario>/; figures as LoadGen printed them):", "",
                  "| configuration | scenario | Result is | LoadGen's figures | settings |", "|---|---|---|---|---|"]
        for r in report["loadgen"]:
            figures = "; ".join(f"{k}: {v}" for k, v in r["figures"].items())
            st = r["settings"]
            extra = f"batch {st['batch_size']}, min {st['min_duration_ms']} ms / {st['min_query_count']} queries"
            if r["scenario"] == "Server":
                extra += (f", p99 bound {st['server_target_latency_ms']:.4g} ms, target {st['server_target_qps']:.4g} QPS"
                          f" (bound {'met' if r['latency_bound_met'] else 'not met at any step'})")
            lines.append(f"| {display_name(r['config'], report)} | {r['scenario']} | {r['result']} | {figures} | {extra} |")
    if report["loadgen_accuracy"]:
        lines += ["", "LoadGen accuracy runs (AccuracyOnly, logits logged and scored against the labels):", "",
                  "| configuration | images | top-1 | top-5 |", "|---|---:|---:|---:|"]
        lines += [f"| {display_name(r['config'], report)} | {r['num_images']} | {r['top1']:.4f} | "
                  f"{r['top5'] if r['top5'] is None else format(r['top5'], '.4f')} |" for r in report["loadgen_accuracy"]]
    return lines


def write_plot(report, path: Path):
    """Throughput against batch size, one line per configuration; skipped with a notice without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("notice: matplotlib is not installed (pip install -r requirements-bench.txt); no plot written")
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in dict.fromkeys(r["config"] for r in report["results"]):
        own = [r for r in report["results"] if r["config"] == name]
        line, = ax.plot([r["batch_size"] for r in own], [r["throughput_images_per_s"] for r in own], marker="o",
                        label=name)
        ceiling = [(r["batch_size"], r["batch_size"] * 1000.0 / r["ceiling_ms"]) for r in own if r["ceiling_ms"]]
        if ceiling:
            ax.plot(*zip(*ceiling), linestyle="--", marker="x", color=line.get_color(), alpha=0.7,
                    label=f"{name} ceiling")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (images/s)")
    ax.set_title(f"{report['arch']} on {report['machine']['cpu']}".replace("; ", "\n", 1),
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside: covers no line
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


# ---- the engines check (issue 9): local streaming vs Ray Data ---------------------------------------------

def run_engines_check(args, checkpoint: Path, onnx_path: Path, work: Path, out: Path) -> int:
    """convmixer_suite.engines_check on generated pictures with rule-based labels; writes engines_check.json/.md."""
    from convmixer_suite import engines_check
    if args.engines_config not in CONFIGS:
        raise UserError(f"--engines-config {args.engines_config!r}: choose from {', '.join(CONFIGS)}")
    backend, precision = CONFIGS[args.engines_config]
    images = generated_pictures(work / f"engines_pictures_{args.engines_images}" / "val", args.engines_images)
    labels = images.parent / "val_label.txt"
    write_text_atomic(labels, "".join(f"{p.name} {i % 1000}\n" for i, p in enumerate(sorted(images.iterdir()))))
    calib = None
    if precision == "int8":
        calib = work / f"calib_{args.num_calib}"
        preprocess(generated_pictures(work / f"calib_pictures_{args.num_calib}", args.num_calib, CALIB_SEED_OFFSET),
                   calib, os.cpu_count() or 1)
    load = os.getloadavg()
    report = engines_check.compare_engines(checkpoint if backend == "torch" else onnx_path, images, labels,
                                           work / "engines_runs", backend=backend, precision=precision, calib=calib,
                                           threads=args.threads, rounds=args.engines_rounds, log=lambda line: print(line, flush=True))
    report.update(machine=machine_info(), arch=arch_spec(args.arch).name, load_average_before=load,
                  load_average_after=os.getloadavg())
    m = report["machine"]
    table = engines_check.markdown(report, f"{m['cpu']}, {m['logical_cpus']} logical CPUs ({report['arch']}; "
                                           f"load average {load[0]:.2f} before, {report['load_average_after'][0]:.2f} after)")
    write_text_atomic(out / "engines_check.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "engines_check.md", table)
    print(table)
    print(f"wrote {out / 'engines_check.json'} and {out / 'engines_check.md'}")
    return 0 if report["same_json"] else 1


# ---- main ------------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    spec = arch_spec(args.arch)
    checkpoint = Path(args.checkpoint) if args.checkpoint else seeded_checkpoint(spec, args.seed, work)
    onnx_path, spec = cached_onnx(checkpoint, work)  # a given checkpoint's own architecture
    if args.engines_check:
        return run_engines_check(args, checkpoint, onnx_path, work, out)
    n_pictures = max(args.num_images, args.stream_images)
    pictures_dir = generated_pictures(work / "pictures", n_pictures)
    prep_dir = generated_pictures(work / f"prep_pictures_{args.prep_images}", args.prep_images)
    calib_dir = args.calib
    if calib_dir is None and any(CONFIGS[c][1] == "int8" for c in args.configs):
        calib_pictures = generated_pictures(work / f"calib_pictures_{args.num_calib}", args.num_calib,
                                            CALIB_SEED_OFFSET)
        calib_dir = work / f"calib_{args.num_calib}"
        print(f"==> preprocessing {args.num_calib} generated calibration pictures into {calib_dir}", flush=True)
        preprocess(calib_pictures, calib_dir, os.cpu_count() or 1)
    backends, skipped = load_configs(args.configs, onnx_path, checkpoint, args.threads, calib_dir)
    ceilings, ceiling_skipped = ({}, {}) if args.no_ceiling else load_ceilings(
        {c: CONFIGS[c] for c in backends}, spec, work, args.threads, log=lambda line: print(line, flush=True))

    fidelity_dir = Path(args.images) if args.images else pictures_dir
    print(f"==> fidelity on {args.num_images} images of {fidelity_dir}", flush=True)
    pictures = load_pictures(fidelity_dir, args.num_images)
    fid = fidelity(backends, pictures, max(args.batch_sizes))

    rows, ceiling_rows = [], []
    for bs in args.batch_sizes:
        print(f"==> timing batch size {bs}: {', '.join(backends)} alternating, {args.iters} rounds", flush=True)
        batch = np.resize(pictures, (bs, *pictures.shape[1:]))
        timed = {**backends, **{CEILING_PREFIX + c: b for c, b in ceilings.items()}}
        batches = {name: batch if name in backends else ceiling_input(spec, bs) for name in timed}
        load_before = os.getloadavg()[0]  # other users of the machine: its 1-minute load, before and after
        times = time_alternating(timed, batches, args.iters, args.warmup)
        load = {"load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0]}
        rows += [{**latency_row(name, backends[name], bs, times[name]), **load} for name in backends]
        ceiling_rows += [{**latency_row(name, timed[name], bs, times[name]), **load}
                         for name in timed if name not in backends]
    add_ratios(rows)
    efficiency_rows(rows, {(r["config"][len(CEILING_PREFIX):], r["batch_size"]): r["latency_ms"]["p50"]
                           for r in ceiling_rows}, spec)
    ceilings.clear()  # free the ceiling models' memory before the LoadGen runs
    profile = layer_profile(args.profile, backends, rows, fid, pictures[:1]) if args.profile else None
    loadgen = run_loadgen(args, backends, pictures, rows, out) if args.scenarios else []
    loadgen_accuracy = accuracy_runs(args, backends, rows, out) if args.loadgen_accuracy else []

    stream = None
    stream_config = args.stream_config
    if stream_config == "auto":
        best = fastest_within_limit(rows, fid)
        stream_config = best["config"] if best else REFERENCE
    if 1 in args.batch_sizes and stream_config in backends:
        print(f"==> streaming {args.stream_images} pictures through {stream_config}", flush=True)
        backends.clear()  # free the timed runtimes' threads and memory before the streaming run
        stream = streaming_check(stream_config, onnx_path, checkpoint, args.threads, calib_dir, pictures_dir,
                                 args.stream_images, row_of(rows, stream_config, 1)["latency_ms"]["mean"])
    print(f"==> convmixer_preprocess.py on {args.prep_images} pictures, 1 and 2 workers", flush=True)
    prep = preprocessing_check(prep_dir, work)

    report = {
        "arch": spec.name, "checkpoint": str(checkpoint),
        "weights": "checkpoint " + checkpoint.name if args.checkpoint else f"seeded random weights, seed {args.seed}",
        "machine": machine_info(), "libraries": library_versions(),
        "openvino_default_precision": openvino_default_precision(),
        "settings": {"configs": args.configs, "batch_sizes": args.batch_sizes, "iters": args.iters,
                     "warmup": args.warmup, "threads": args.threads, "quick": args.quick,
                     "calib": str(calib_dir) if calib_dir else None, "num_calib": args.num_calib},
        "results": rows, "fidelity": fid, "fidelity_limit_max_rel_diff": FIDELITY_LIMIT,
        "fidelity_images": (f"{len(pictures)} images of {args.images}" if args.images
                            else f"{len(pictures)} generated pictures (not photos)"),
        "streaming": stream, "preprocessing": prep, "skipped": skipped,
        "loadgen": loadgen, "loadgen_accuracy": loadgen_accuracy, "profile": profile,
        "ceiling": {"what": f"{spec.depth} pointwise {spec.dim}x{spec.dim} convolutions alone on "
                            f"{'x'.join(map(str, ceiling_input_shape(spec)))}, same runtime, precision and quantizer",
                    "macs_per_image": pointwise_macs(spec), "model_macs_per_image": model_macs(spec),
                    "results": ceiling_rows, "skipped": ceiling_skipped},
    }
    report["targets"] = target_checks(rows, fid, stream, prep)
    report["total_s"] = time.perf_counter() - started
    write_text_atomic(out / "benchmark.json", json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    write_text_atomic(out / "benchmark.md", table)
    plot = write_plot(report, out / "benchmark_throughput.png")
    print(table)
    print(f"wrote {out / 'benchmark.json'}, {out / 'benchmark.md'}" + (f", {plot}" if plot else "")
          + f" in {report['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
