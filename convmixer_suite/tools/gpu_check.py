"""The whole GPU check in one bounded run (convmixer-gpu-check): speed and fidelity of fp32, fp16 and bf16 on CUDA.

    python3 -m convmixer_suite.tools.gpu_check --out ./gpu_check_results            # on a machine with an NVIDIA GPU

Parts, each in a child process with its own time limit, so that a slow part (torch.compile, say) is cut off and
the run as a whole ends within ``--time-limit-s`` (default 450 s) whatever happens:

1. ``reference``: the same images on CUDA fp32 against CPU fp32 (both PyTorch, IEEE fp32); the CUDA fp32 logits
   are the reference of every fidelity figure below.
2. one part per configuration ``torch-cuda-<fp32|fp16|bf16>[-compiled]`` (compiled: torch.compile, mode
   reduce-overhead, i.e. CUDA graphs): load time, fidelity against the reference (max |diff| / max |logit|, top-1
   agreement), then per batch size (default 1, 4, 64, 256) the latency of synchronous ``predict`` calls (float32
   batch from host memory to float32 logits back in host memory) and the throughput of ``predict_each`` (the next
   batch copied while one runs). Each batch size gets a share of the part's time; one that gets none is reported
   as not measured.
   Each configuration also runs ``predict_each`` (the next batch copied while one runs) over PREDICT_EACH_BATCHES
   batches of different pictures and compares every batch's logits with ``predict``'s.
3. ``onnxruntime-cuda-fp16`` (the float16 ONNX on the CUDA provider) and ``onnxruntime-tensorrt-fp16``
   (TensorRT's fp16 engine), on the checkpoint exported to ONNX here: the same figures, where onnxruntime-gpu
   is installed; elsewhere each is reported as not run, with the reason (the CPU onnxruntime has neither provider).
4. ``stream``: the streaming evaluation (convmixer_suite.run.stream) on generated pictures (bf16 where the card has it, else fp16), its
   per-stage images/s and the stage that bounds it.

The model is ``--checkpoint``, or by default seeded random ConvMixer-1536/20 weights made here, offline, with
BatchNorm statistics taken from generated pictures so that activations keep a realistic scale through the 20
blocks (PyTorch's default init lets them fade to almost nothing, which would make fp16 look better than it is).
Accuracy means nothing with them; fidelity between precisions does. Writes ``gpu_check.json`` and
``gpu_check.md`` into ``--out`` (inputs and per-part results in ``--work``, by default ``--out``/work). Without a CUDA device it says so
and exits 0; ``--device cpu`` runs the same parts on the CPU as a functional check (fp32 only: the torch backend
refuses fp16/bf16 there, and the report shows that refusal).
"""
import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from convmixer_suite.runtimes.base import parse_device
from convmixer_suite.runtimes.cuda import BF16_MIN_CAPABILITY
from convmixer_suite.util.errors import SettingError, UserError
from convmixer_suite.util.cli import positive_int, run_main
from convmixer_suite.util.files import write_text_atomic
from convmixer_suite.model.data_config import IMAGE_SHAPE
from convmixer_suite.precision.fidelity import DEFAULT_MAX_LOGIT_ERROR, compare_logits, logit_figures

PRECISIONS = ("fp32", "fp16", "bf16")
COMPILE_MODE = "reduce-overhead"
# Eager first; compiled with the reduced precisions first, as they matter most when time runs short.
TORCH_CUDA_CONFIGS = {**{f"torch-cuda-{p}": (p, None) for p in PRECISIONS},
                      **{f"torch-cuda-{p}-compiled": (p, COMPILE_MODE) for p in reversed(PRECISIONS)}}
# ONNX Runtime's GPU routes: configuration -> (device kind, provider), fp16 each
ORT_CONFIGS = {"onnxruntime-cuda-fp16": ("cuda", "CUDAExecutionProvider"),
               "onnxruntime-tensorrt-fp16": ("tensorrt", "TensorrtExecutionProvider")}
# Shares of the time limit: a compiled configuration compiles once per batch size, TensorRT builds an engine.
WEIGHTS = {"reference": 1.0, "stream": 1.5, **{name: 2.0 if mode else 1.0 for name, (_, mode) in TORCH_CUDA_CONFIGS.items()},
           "onnxruntime-cuda-fp16": 1.0, "onnxruntime-tensorrt-fp16": 2.0}
PREDICT_EACH_BATCHES = 4
REPORT_RESERVE_S = 10.0  # kept back for writing the report
KILL_GRACE_S = 5.0  # a part is killed this long after its own budget ends
MAX_TIMED_CALLS = 50
MIN_TIMED_CALLS = 3
WARMUP_CALLS = 2
BN_CALIBRATION_IMAGES = 8


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="gpu_check_results", help="folder for the report (default %(default)s)")
    p.add_argument("--work", default=None, help="folder for the inputs (random weights, pictures) and the parts' "
                                                "records (default: --out/work); on a lent device keep it out of "
                                                "what comes back, e.g. /tmp/gpu_check_work")
    p.add_argument("--device", default="cuda:0", help="cuda:N (default cuda:0), or cpu for a functional check")
    p.add_argument("--checkpoint", default=None, help="weights to run (default: seeded random ConvMixer-1536/20)")
    p.add_argument("--configs", default=",".join([*TORCH_CUDA_CONFIGS, *ORT_CONFIGS]),
                   help=f"comma-separated, from: {', '.join([*TORCH_CUDA_CONFIGS, *ORT_CONFIGS])}")
    p.add_argument("--batch-sizes", default="1,4,64,256", help="comma-separated (default %(default)s)")
    p.add_argument("--time-limit-s", type=float, default=450.0, help="the whole check (default %(default)s)")
    p.add_argument("--fidelity-images", type=positive_int, default=16, help="default %(default)s")
    p.add_argument("--stream-images", type=int, default=300, help="pictures streamed (default %(default)s; 0: none)")
    p.add_argument("--stream-batch-size", type=positive_int, default=64, help="default %(default)s")
    p.add_argument("--max-calls", type=positive_int, default=MAX_TIMED_CALLS,
                   help="timed calls per configuration and batch size at most (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # a child process: run this part only
    p.add_argument("--budget-s", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise UserError(f"--batch-sizes {args.batch_sizes!r}: comma-separated whole numbers") from None
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        raise UserError("--batch-sizes: at least one, each at least 1")
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in TORCH_CUDA_CONFIGS and c not in ORT_CONFIGS]
    if unknown:
        raise UserError(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join([*TORCH_CUDA_CONFIGS, *ORT_CONFIGS])}")
    if args.time_limit_s <= REPORT_RESERVE_S:
        raise UserError(f"--time-limit-s {args.time_limit_s:g}: must exceed {REPORT_RESERVE_S:g}")
    if args.stream_images < 0:
        raise UserError("--stream-images must be 0 or more")
    kind, args.device_index = parse_device(args.device)
    if kind not in ("cuda", "cpu"):
        raise UserError(f"--device {args.device}: the GPU check takes cuda:N (or cpu for a functional check)")
    return args


# ---- inputs ---------------------------------------------------------------------------------------------------

def work_folder(args) -> Path:
    return Path(args.work) if args.work else Path(args.out) / "work"


def prepare_inputs(args) -> dict:
    """Pictures, fidelity inputs and the checkpoint in ``--out``/work, each made once; returns their paths."""
    from convmixer_suite.guide.samples import write_random_checkpoint, write_sample_dataset
    from convmixer_suite.guide.transform import list_images, load_pictures
    work = work_folder(args)
    work.mkdir(parents=True, exist_ok=True)
    datasets = {"pictures": args.fidelity_images + BN_CALIBRATION_IMAGES, "stream_pictures": args.stream_images}
    for name, count in datasets.items():
        folder = work / name
        if count and (not (folder / "val_label.txt").is_file() or len(list_images(folder / "val")[0]) != count):
            shutil.rmtree(folder, ignore_errors=True)  # ours, in --out/work: made for another count
            write_sample_dataset(folder, count)
    fidelity_inputs = work / f"fidelity_inputs_{args.fidelity_images}.npy"
    if not fidelity_inputs.is_file():
        save_array(fidelity_inputs, load_pictures(work / "pictures" / "val", args.fidelity_images))
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / f"RANDOM_WEIGHTS_convmixer_1536_20_bn_seed{args.seed}.pth"
    if not checkpoint.is_file():
        if args.checkpoint:
            raise UserError(f"{checkpoint}: checkpoint not found")
        calibration = load_pictures(work / "pictures" / "val", BN_CALIBRATION_IMAGES, start=args.fidelity_images)
        print(f"[INFO] writing seeded random weights with calibrated BatchNorm: {checkpoint}", flush=True)
        write_random_checkpoint(checkpoint, seed=args.seed, batchnorm_images=calibration)
    return {"checkpoint": checkpoint, "fidelity_inputs": fidelity_inputs, "dataset": work / "stream_pictures"}


def save_array(path: Path, array: np.ndarray) -> None:
    from convmixer_suite.util.files import atomic_path
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


# ---- measurements (in the child processes) --------------------------------------------------------------------

def predict_all(backend, images: np.ndarray, batch_size: int = 4) -> np.ndarray:
    return np.concatenate([backend.predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def reference_part(args, inputs: dict, result: dict, save) -> None:
    """CUDA fp32 against CPU fp32; the CUDA logits become the reference of the configurations."""
    from convmixer_suite.runtimes.registry import create_backend
    images = np.load(inputs["fidelity_inputs"])
    cpu_logits = predict_all(create_backend("torch", inputs["checkpoint"]), images)
    device = create_backend("torch", inputs["checkpoint"], device=args.device)
    device_logits = predict_all(device, images)
    save_array(work_folder(args) / "reference_logits.npy", device_logits)
    result.update(device=device.describe(), **logit_figures(device_logits, cpu_logits))
    save()


def load_config(args, name: str, inputs: dict):
    """The backend of configuration ``name``: torch on the checkpoint, or ONNX Runtime on its ONNX export (made
    once in the work folder), refused with the reason where this onnxruntime lacks the provider."""
    from convmixer_suite.runtimes.registry import create_backend
    if name in TORCH_CUDA_CONFIGS:
        precision, compile_mode = TORCH_CUDA_CONFIGS[name]
        return create_backend("torch", inputs["checkpoint"], precision=precision, device=args.device,
                              compile_mode=compile_mode)
    kind, provider = ORT_CONFIGS[name]
    try:
        import onnxruntime
    except ImportError:
        raise UserError("not run: onnxruntime does not import (pip install onnxruntime-gpu, docs/gpu.md)") from None
    if provider not in onnxruntime.get_available_providers():
        raise UserError(f"not run: onnxruntime {onnxruntime.__version__} has no {provider} (providers: "
                        f"{', '.join(onnxruntime.get_available_providers())}); onnxruntime-gpu has it (docs/gpu.md)")
    device = f"{kind}:{args.device_index}" if args.device_index is not None else "cpu"
    return create_backend("onnxruntime", exported_onnx(inputs["checkpoint"], work_folder(args)), precision="fp16",
                          device=device, batch_sizes=args.batch_sizes)


def exported_onnx(checkpoint: Path, work: Path) -> Path:
    """The checkpoint exported to ONNX (dynamic batch axis) and checked against PyTorch, once."""
    from convmixer_suite.model.checkpoint import load_model
    from convmixer_suite.model.export import export_verified
    path = work / f"{Path(checkpoint).stem}.onnx"
    if not path.is_file():
        export_verified(load_model(checkpoint)[0], path)
    return path


def config_part(args, name: str, inputs: dict, result: dict, save, deadline: float) -> None:
    """Load, fidelity against the reference, predict_each against predict, then each batch size within its share
    of the time left."""
    started = time.perf_counter()
    backend = load_config(args, name, inputs)
    result.update(backend=backend.describe(), precision=backend.precision, load_s=time.perf_counter() - started)
    images = np.load(inputs["fidelity_inputs"])
    fidelity_started = time.perf_counter()
    chunk = min(args.batch_sizes, key=lambda b: abs(b - 4))  # a batch size timed below: no extra compilation
    logits = predict_all(backend, images, chunk)
    result.update(logit_figures(logits, np.load(work_folder(args) / "reference_logits.npy")),
                  fidelity_s=time.perf_counter() - fidelity_started)
    save()
    result["predict_each"] = predict_each_check(backend, np.random.default_rng(args.seed + 1), chunk)
    save()
    rng = np.random.default_rng(args.seed)
    for i, batch_size in enumerate(args.batch_sizes):
        share_end = time.perf_counter() + (deadline - time.perf_counter()) / (len(args.batch_sizes) - i)
        batch = rng.standard_normal((batch_size, *IMAGE_SHAPE), dtype=np.float32)
        result["batches"][str(batch_size)] = time_batch(backend, batch, share_end, args.max_calls)
        save()


def predict_each_check(backend, rng, batch_size: int, batches: int = PREDICT_EACH_BATCHES) -> dict:
    """``predict_each`` over ``batches`` batches of different pictures against ``predict`` on each: the largest
    max |diff| / max |logit| of a batch, and whether every batch got its own logits back (top-1 of each row, and
    the figure within 1e-5)."""
    inputs = [rng.standard_normal((batch_size, *IMAGE_SHAPE), dtype=np.float32) for _ in range(batches)]
    each = [logits for logits, _ in backend.predict_each(iter(inputs))]
    if len(each) != batches:
        return {"batches": batches, "returned": len(each), "matches": False}
    figures = [compare_logits(got, backend.predict(batch)) for got, batch in zip(each, inputs)]
    worst = max(error for error, _ in figures)
    return {"batches": batches, "max_rel_diff": worst,
            "matches": worst <= 1e-5 and all(agree == batch_size for _, agree in figures)}


def time_batch(backend, batch: np.ndarray, share_end: float, max_calls: int = MAX_TIMED_CALLS) -> dict:
    """Warm-up calls (the first compiles, for a compiled model), then timed synchronous calls until the share
    ends (at least MIN_TIMED_CALLS, at most ``max_calls``), then as many batches through ``predict_each``."""
    from convmixer_suite.guide.msame_log import latency_stats_ms
    started = time.perf_counter()
    if started >= share_end:
        return {"measured": False, "why": "no time left in this configuration's share"}
    for _ in range(WARMUP_CALLS):
        backend.predict(batch)
    warmup_s = time.perf_counter() - started
    latencies = []
    while len(latencies) < max(max_calls, MIN_TIMED_CALLS) and (len(latencies) < MIN_TIMED_CALLS
                                                                or time.perf_counter() < share_end):
        t0 = time.perf_counter()
        backend.predict(batch)
        latencies.append((time.perf_counter() - t0) * 1000.0)
    t0 = time.perf_counter()
    device_ms = [ms for _, ms in backend.predict_each(batch for _ in latencies)]
    pipelined_s = time.perf_counter() - t0
    stats = latency_stats_ms(latencies)
    return {"measured": True, "warmup_s": warmup_s, "latency_ms": stats,
            "images_per_s": len(batch) * 1000.0 / stats["mean"],
            "pipelined_images_per_s": len(batch) * len(latencies) / pipelined_s,
            "pipelined_batch_ms_median": float(np.median(device_ms))}


def stream_part(args, inputs: dict, result: dict, save) -> None:
    """The streaming evaluation's local engine (convmixer_suite.run.stream) on the generated pictures, in the
    reduced precision the card runs best: its per-stage images/s and the stage that bounds it. This part's process
    is bounded by the parent (``run_parts``), which kills it past its share."""
    import torch

    from convmixer_suite.guide.scoring import labelled_rows, read_labels
    from convmixer_suite.guide.transform import list_images
    from convmixer_suite.run.config import RunConfig
    from convmixer_suite.run.stream import EvalJob, evaluate_local, gate_job, relative_names, resumable_job
    precision = "fp32"
    if args.device_index is not None:
        precision = "bf16" if torch.cuda.get_device_capability(args.device_index) >= BF16_MIN_CAPABILITY else "fp16"
    dataset = inputs["dataset"]
    labels_path = dataset / "val_label.txt"
    paths, _ = list_images(dataset / "val")
    names = relative_names(paths, dataset / "val")
    config = RunConfig.build(inputs["checkpoint"], backend="torch", precision=precision, device=args.device,
                             batch_size=args.stream_batch_size)
    batches = list(range(-(-len(paths) // args.stream_batch_size)))
    job = EvalJob(paths, names, labelled_rows(names, read_labels(labels_path), labels_path), batches, config)
    result.update(precision=precision, batch_size=args.stream_batch_size, num_images=len(paths))
    save()
    figures, gated = gate_job(job, DEFAULT_MAX_LOGIT_ERROR, announce=lambda line: print(line, flush=True))
    job, store, _ = resumable_job(job, work_folder(args) / "stream" / "stream.json", fresh=True)
    times, _ = evaluate_local(job, store, max(1, (os.cpu_count() or 2) - 1), backend=gated)
    store.flush()
    result.update(stages=times.rates(), fidelity=figures)
    save()


def run_part(args) -> int:
    """A child process: run one part, keeping its result file up to date as it goes."""
    deadline = time.perf_counter() + args.budget_s
    inputs = prepare_inputs(args)
    path = part_path(args, args.part)
    result = {"part": args.part, "batches": {}} if is_config(args.part) else {"part": args.part}
    save = (lambda: write_text_atomic(path, json.dumps(result, indent=1) + "\n"))
    try:
        if args.part == "reference":
            reference_part(args, inputs, result, save)
        elif args.part == "stream":
            stream_part(args, inputs, result, save)
        else:
            config_part(args, args.part, inputs, result, save, deadline)
    except (UserError, subprocess.TimeoutExpired) as exc:
        result["error"] = exc.flag_message() if isinstance(exc, SettingError) else str(exc)
        save()
    return 0


def run_bounded(command, timeout_s: float) -> subprocess.CompletedProcess:
    """Run ``command`` in a process group of its own; past ``timeout_s`` the whole group is killed (decode workers,
    compile workers and all) and TimeoutExpired raised."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def part_path(args, part: str) -> Path:
    return work_folder(args) / f"part-{part}.json"


# ---- the parent: parts in turn, then the report -----------------------------------------------------------------

def parts_of(args) -> list:
    return ["reference"] + args.configs + (["stream"] if args.stream_images else [])


def is_config(part: str) -> bool:
    return part in TORCH_CUDA_CONFIGS or part in ORT_CONFIGS


def config_precision(name: str) -> str:
    return TORCH_CUDA_CONFIGS[name][0] if name in TORCH_CUDA_CONFIGS else "fp16"


def run_parts(args, argv, started: float) -> dict:
    """Each part in a child process with its share of the time left; its result file, or why there is none."""
    results = {}
    parts = parts_of(args)
    for i, part in enumerate(parts):
        left = args.time_limit_s - REPORT_RESERVE_S - (time.perf_counter() - started)
        share = left * WEIGHTS[part] / sum(WEIGHTS[p] for p in parts[i:])
        path = part_path(args, part)
        path.unlink(missing_ok=True)
        print(f"[INFO] {part}: up to {share:.0f} s", flush=True)
        if share < 1 or (part != "reference" and "error" in results.get("reference", {})):
            results[part] = {"part": part, "error": "not run: " + ("no time left" if share < 1 else
                                                                  "the reference part failed")}
            continue
        command = [sys.executable, "-m", "convmixer_suite.tools.gpu_check", *argv, "--part", part,
                   "--budget-s", f"{max(1.0, share - KILL_GRACE_S):.1f}"]
        try:
            done = run_bounded(command, share)
            ended = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-400:]}"
        except subprocess.TimeoutExpired:
            ended = f"killed after its {share:.0f} s"
        results[part] = json.loads(path.read_text()) if path.is_file() else {"part": part}
        if ended:
            results[part]["error"] = results[part].get("error") or ended
            results[part]["ended"] = ended
        print(f"[INFO] {part}: {results[part].get('error', 'done')}", flush=True)
    return results


def device_info(device: str, index) -> dict:
    import torch
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "device": device, "cpu_count": os.cpu_count()}
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    if index is not None:
        properties = torch.cuda.get_device_properties(index)
        info.update(name=properties.name, capability=f"{properties.major}.{properties.minor}",
                    memory_gib=round(properties.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version())
    return info


def best_lines(results: dict) -> list:
    """The best measured figures of the reduced precisions (or that they were not measured), and whether the worst
    fidelity stays within the fidelity gate's default limit."""
    reduced = [r for name, r in results.items()
               if is_config(name) and config_precision(name) != "fp32" and "batches" in r]
    rates = [(max(b["images_per_s"], b["pipelined_images_per_s"]), r["part"], bs) for r in reduced
             for bs, b in r["batches"].items() if b.get("measured")]
    batch1 = [(r["batches"]["1"]["latency_ms"]["median"], r["part"]) for r in reduced
              if r["batches"].get("1", {}).get("measured")]
    fidelities = [(r["max_rel_diff"], r["part"]) for r in reduced if "max_rel_diff" in r]
    lines = []
    for what, found in (("best images/s in fp16 or bf16", max(rates, default=None)),
                        ("best batch-1 latency p50 in fp16 or bf16, ms", min(batch1, default=None)),
                        ("worst max |diff|/max |logit| of fp16/bf16", max(fidelities, default=None))):
        if found is None:
            lines.append(f"- {what}: not measured")
        else:
            where = f"{found[1]}" + (f" at batch {found[2]}" if len(found) > 2 else "")
            lines.append(f"- {what}: {found[0]:.4g} ({where})")
    if fidelities:
        worst = max(fidelities)[0]
        lines[-1] += (f": {'within' if worst <= DEFAULT_MAX_LOGIT_ERROR else 'ABOVE'} the fidelity gate's "
                      f"default limit {DEFAULT_MAX_LOGIT_ERROR:g}")
    return lines


def markdown(report: dict) -> str:
    info, results = report["machine"], report["parts"]
    ref = results.get("reference", {})
    lines = [f"# GPU check: {info.get('name', info['device'])}", "",
             f"torch {info['torch']} (CUDA {info['cuda']}, cuDNN {info.get('cudnn')}), compute capability "
             f"{info.get('capability', '-')}, {info['cpu_count']} CPUs; weights: {report['weights']}; "
             f"{report['elapsed_s']:.0f} s in all.", "",
             "## CUDA fp32 against CPU fp32", "",
             (f"max |diff| {ref['max_abs_diff']:.3g}, max |diff|/max |logit| {ref['max_rel_diff']:.3g}, top-1 "
              f"agreement {ref['top1_agreement']:.3f}" if "max_rel_diff" in ref else f"not measured: {ref.get('error')}"),
             "", "## Configurations", "",
             "fidelity: against CUDA fp32 eager on the fidelity images; latency: synchronous `predict`, float32 "
             "host batch in, float32 host logits out; pipelined: `predict_each`, the next batch copied while one runs.",
             "", "| configuration | load s | max \\|diff\\|/max \\|logit\\| | top-1 agree | batch | p50 ms | p99 ms "
             "| images/s | pipelined images/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in [*TORCH_CUDA_CONFIGS, *ORT_CONFIGS]:
        r = results.get(name)
        if r is None:
            continue
        head = (f"| {name} | {r.get('load_s', float('nan')):.1f} | {r.get('max_rel_diff', float('nan')):.3g} "
                f"| {r.get('top1_agreement', float('nan')):.3f} ")
        rows = [(bs, b) for bs, b in r.get("batches", {}).items()]
        for bs, b in rows:
            if b.get("measured"):
                s = b["latency_ms"]
                lines.append(head + f"| {bs} | {s['median']:.2f} | {s['p99']:.2f} | {b['images_per_s']:.0f} "
                                    f"| {b['pipelined_images_per_s']:.0f} |")
            else:
                lines.append(head + f"| {bs} | not measured: {b.get('why')} | | | |")
        if r.get("error"):
            lines.append(head + f"| | {r['error'][:200]} | | | |")
    lines += ["", f"## predict_each against predict ({PREDICT_EACH_BATCHES} batches of different pictures)", ""]
    lines += [predict_each_line(name, results[name]) for name in [*TORCH_CUDA_CONFIGS, *ORT_CONFIGS] if name in results]
    stream = results.get("stream")
    if stream:
        lines += ["", f"## Streaming evaluation ({stream.get('precision')}, batch {stream.get('batch_size')}, "
                      f"{stream.get('num_images')} pictures)", ""]
        stages = stream.get("stages")
        lines += ([f"- {name}: {value:.4g}" if isinstance(value, float) else f"- {name}: {value}"
                   for name, value in stages.items() if not isinstance(value, dict)] if stages
                  else [f"not measured: {stream.get('error')}"])
    lines += ["", "## Best figures", ""] + best_lines(results)
    return "\n".join(lines) + "\n"


def predict_each_line(name: str, result: dict) -> str:
    check = result.get("predict_each")
    if check is None:
        return f"- {name}: not measured"
    if "max_rel_diff" not in check:
        return f"- {name}: DIFFERS: {check['returned']} results for {check['batches']} batches"
    verdict = "each batch its own logits" if check["matches"] else "DIFFERS"
    return f"- {name}: {verdict} (max |diff|/max |logit| {check['max_rel_diff']:.3g})"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.part:
        return run_part(args)
    import torch
    if args.device_index is not None and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU here (torch {torch.__version__}, "
              f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU-only build'}): nothing measured")
        return 0
    started = time.perf_counter()
    inputs = prepare_inputs(args)
    results = run_parts(args, argv, started)
    report = {"machine": device_info(args.device, args.device_index), "weights": str(inputs["checkpoint"]) if args.checkpoint else
              "seeded random ConvMixer-1536/20, BatchNorm statistics from generated pictures (accuracy means nothing)",
              "batch_sizes": args.batch_sizes, "time_limit_s": args.time_limit_s,
              "elapsed_s": time.perf_counter() - started, "parts": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "gpu_check.json", json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    write_text_atomic(out / "gpu_check.md", text)
    print(text + f"\nwrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    run_main(main, modern_stack=True)
