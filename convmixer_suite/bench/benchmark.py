"""One benchmark run, step by step (convmixer-benchmark is its command line): load every configuration (skipped
where this machine lacks what it needs, failed with its line on any other error), measure
fidelity against the reference, time all of them and their ceilings in alternation at each batch size, then
the optional layer profile, the LoadGen runs and the two pipeline checks; returns the report as data.
Also the engines check (local streaming against Ray Data)."""
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from convmixer_suite.bench import inputs
from convmixer_suite.bench.configs import CONFIGS, REFERENCE
from convmixer_suite.bench.ceiling import (ceiling_input, ceiling_input_shape, efficiency_rows, load_ceilings, model_macs, pointwise_macs)
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import write_text_atomic
from convmixer_suite.bench.fidelity_table import fastest_within_limit, fidelity
from convmixer_suite.bench.loading import load_each
from convmixer_suite.bench.markdown_report import library_versions, machine_info, openvino_default_precision
from convmixer_suite.bench.timing import add_ratios, latency_row, row_of, time_alternating

CEILING_PREFIX = "ceiling:"  # timed beside each configuration: its pointwise convolutions alone


def time_batch_sizes(args, backends, ceilings, spec, pictures, log) -> tuple:
    """Timing rows of every configuration and of every ceiling, batch size by batch size, alternated."""
    rows, ceiling_rows = [], []
    for bs in args.batch_sizes:
        log(f"==> timing batch size {bs}: {', '.join(backends)} alternating, {args.iters} rounds")
        batch = np.resize(pictures, (bs, *pictures.shape[1:]))
        timed = {**backends, **{CEILING_PREFIX + c: b for c, b in ceilings.items()}}
        batches = {name: batch if name in backends else ceiling_input(spec, bs) for name in timed}
        load_before = os.getloadavg()[0]  # other users of the machine: its 1-minute load, before and after
        times = time_alternating(timed, batches, args.iters, args.warmup)
        load = {"load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0]}
        rows += [{**latency_row(name, backends[name], bs, times[name]), **load} for name in backends]
        ceiling_rows += [{**latency_row(name, timed[name], bs, times[name]), **load}
                         for name in timed if name not in backends]
    add_ratios(rows, REFERENCE)
    efficiency_rows(rows, {(r["config"][len(CEILING_PREFIX):], r["batch_size"]): r["latency_ms"]["p50"]
                           for r in ceiling_rows}, spec)
    return rows, ceiling_rows


def layer_profile(choice, backends, rows, fid, image, log) -> dict:
    """``choice`` (or the fastest configuration within the fidelity limit at batch 1) profiled layer by layer."""
    from convmixer_suite.bench.profiling import profile_backend
    if choice == "auto":
        best = fastest_within_limit(rows, fid)
        choice = best["config"] if best else REFERENCE
    if choice not in backends:
        raise UserError(f"--profile {choice}: not among the loaded configurations ({', '.join(backends)})")
    log(f"==> profiling {choice} layer by layer at batch 1")
    return {"config": choice, "batch_size": 1, "nodes": profile_backend(backends[choice], image)}


def loadgen_settings(args):
    """The LoadGen settings the flags ask for: the short runs, or with --submission-durations MLPerf's minimums
    (the Server bisection's steps stay short either way)."""
    from convmixer_suite.bench import loadgen as lh
    own = dict(min_duration_ms=args.loadgen_min_duration_ms, min_query_count=args.loadgen_min_queries,
               server_queries=args.server_queries)
    return lh.LoadGenSettings(**(lh.SUBMISSION if args.submission_durations else own),
                              server_latency_ms=args.server_latency_ms, server_bisection_steps=args.server_steps,
                              bisection_min_duration_ms=args.loadgen_min_duration_ms)


def loadgen_runs(args, backends, pictures, rows, spec, machine, run_configs, weights, log) -> tuple:
    """The LoadGen runs (convmixer_suite.bench.loadgen) under ``args.out``: with ``--submission-layout open``
    an open-division submission around them (convmixer_suite.bench.mlperf_submission), else their logs alone in
    ``loadgen/``. Returns (performance results, accuracy results, the submission's summary or None)."""
    from convmixer_suite.bench import loadgen as lh
    from convmixer_suite.bench import mlperf_submission as sub
    from convmixer_suite.bench.mlperf_layout import cpu_hardware_name
    out, hardware = Path(args.out), args.system_name or cpu_hardware_name(machine)
    submission = args.submission_layout == "open"
    root = sub.results_root(out, args.submitter) if submission else out / "loadgen"
    for stale in (root.parent if submission else root, out / "accuracy_logs"):
        if stale.exists():  # never mix an earlier run's systems and logs into this one's
            log(f"==> removing {stale} of an earlier run")
            shutil.rmtree(stale)
    harness = lh.Harness(out, root, hardware, spec.name, loadgen_settings(args), log)
    data = inputs.accuracy_set(args.images, args.labels) if args.loadgen_accuracy else None
    performance, accuracy = lh.run_scenarios(harness, backends, pictures, rows, args.scenarios or ["Offline"], data,
                                             performance=bool(args.scenarios))
    if not submission:
        return performance, accuracy, None
    configs = {name: run_configs[name].as_dict() for name in backends}
    gaps = sub.write_submission(out, args.submitter, hardware, spec.name, machine, configs, weights, performance,
                                accuracy, args.argv)
    return performance, accuracy, {"root": str(sub.submission_root(out, args.submitter)),
                                   "division": sub.DIVISION, "checker_version": sub.CHECKER_VERSION,
                                   "mlperf_benchmark": sub.MLPERF_BENCHMARK, "checker_will_reject": gaps}


def run_benchmark(args, log=print) -> dict:
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else inputs.seeded_checkpoint(
        inputs.arch_spec(args.arch), args.seed, work)
    onnx_path, spec = inputs.cached_onnx(checkpoint, work, log)  # a given checkpoint's own architecture
    pictures_dir = inputs.generated_pictures(work / "pictures", max(args.num_images, args.stream_images))
    prep_dir = inputs.generated_pictures(work / f"prep_pictures_{args.prep_images}", args.prep_images)
    calib_dir = args.calib
    if calib_dir is None and any(CONFIGS[c][1] == "int8" for c in args.configs):
        calib_dir = inputs.calibration(work, args.num_calib, log)
    runs = {name: inputs.run_config(name, onnx_path, checkpoint, args.threads, calib_dir, args.num_calib)
            for name in args.configs}
    backends, skipped, failed = load_each(runs, lambda name: runs[name].create_backend(), log, required=(REFERENCE,))
    ceiling_failed = {}
    ceilings, ceiling_skipped = ({}, {}) if args.no_ceiling else load_ceilings(
        {c: CONFIGS[c] for c in backends}, spec, work, args.threads, log=log, failed=ceiling_failed)

    fidelity_dir = Path(args.images) if args.images else pictures_dir
    log(f"==> fidelity on {args.num_images} images of {fidelity_dir}")
    pictures = inputs.load_pictures(fidelity_dir, args.num_images)
    fid = fidelity(backends, pictures, max(args.batch_sizes), REFERENCE, args.max_logit_error)
    rows, ceiling_rows = time_batch_sizes(args, backends, ceilings, spec, pictures, log)
    ceilings.clear()  # free the ceiling models' memory before the LoadGen runs
    machine = machine_info()
    profile = layer_profile(args.profile, backends, rows, fid, pictures[:1], log) if args.profile else None
    weights = (f"{checkpoint.name}" if args.checkpoint else
               f"{checkpoint.name} (seeded random weights, seed {args.seed}: not trained)")
    loadgen, loadgen_accuracy, submission = (
        loadgen_runs(args, backends, pictures, rows, spec, machine, runs, weights, log)
        if args.scenarios or args.loadgen_accuracy else ([], [], None))

    from convmixer_suite.bench.pipeline_checks import preprocessing_check, streaming_check
    best = fastest_within_limit(rows, fid)
    stream, stream_config = None, args.stream_config
    if stream_config == "auto":
        stream_config = best["config"] if best else REFERENCE
    if 1 in args.batch_sizes and stream_config in backends:
        log(f"==> streaming {args.stream_images} pictures through {stream_config}")
        backends.clear()  # free the timed runtimes' threads and memory before the streaming run
        stream = streaming_check(stream_config, runs[stream_config].with_batch_size(1), pictures_dir,
                                 args.stream_images, row_of(rows, stream_config, 1)["latency_ms"]["mean"])
    log(f"==> convmixer_preprocess.py on {args.prep_images} pictures, 1 and 2 workers")
    prep = preprocessing_check(prep_dir, work)
    return {
        "arch": spec.name, "checkpoint": str(checkpoint),
        "weights": "checkpoint " + checkpoint.name if args.checkpoint else f"seeded random weights, seed {args.seed}",
        "submission": submission,
        "machine": machine, "libraries": library_versions(), "openvino_default_precision": openvino_default_precision(),
        "settings": {"profile": args.profile_name, "configs": args.configs, "batch_sizes": args.batch_sizes,
                     "iters": args.iters, "warmup": args.warmup, "threads": args.threads, "quick": args.quick,
                     "calib": str(calib_dir) if calib_dir else None, "num_calib": args.num_calib,
                     "max_logit_error": args.max_logit_error, "submission_durations": args.submission_durations,
                     "submission_layout": args.submission_layout,
                     "run_configs": {name: run.as_dict() for name, run in runs.items()}},
        "results": rows, "fidelity": fid, "fastest_within_limit_batch_1": best["config"] if best else None,
        "fidelity_images": (f"{len(pictures)} images of {args.images}" if args.images
                            else f"{len(pictures)} generated pictures (not photos)"),
        "streaming": stream, "preprocessing": prep, "skipped": skipped, "failed": failed,
        "loadgen": loadgen, "loadgen_accuracy": loadgen_accuracy, "profile": profile,
        "ceiling": {"what": f"{spec.depth} pointwise {spec.dim}x{spec.dim} convolutions alone on "
                            f"{'x'.join(map(str, ceiling_input_shape(spec)))}, same runtime, precision and quantizer",
                    "macs_per_image": pointwise_macs(spec), "model_macs_per_image": model_macs(spec),
                    "results": ceiling_rows, "skipped": ceiling_skipped, "failed": ceiling_failed},
        "total_s": time.perf_counter() - started,
    }


def run_engines_check(args, log=print) -> dict:
    """convmixer_suite.bench.engines_check on generated pictures with rule-based labels; writes engines_check.json/.md
    into ``args.out``; returns the report and its table."""
    from convmixer_suite.bench import engines_check
    if args.engines_config not in CONFIGS:
        raise UserError(f"--engines-config {args.engines_config!r}: choose from {', '.join(CONFIGS)}")
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else inputs.seeded_checkpoint(
        inputs.arch_spec(args.arch), args.seed, work)
    onnx_path, spec = inputs.cached_onnx(checkpoint, work, log)
    precision = CONFIGS[args.engines_config][1]
    images = inputs.generated_pictures(work / f"engines_pictures_{args.engines_images}" / "val", args.engines_images)
    labels = images.parent / "val_label.txt"
    write_text_atomic(labels, "".join(f"{p.name} {i % 1000}\n" for i, p in enumerate(sorted(images.iterdir()))))
    calib = inputs.calibration(work, args.num_calib, log) if precision == "int8" else None
    load = os.getloadavg()
    config = inputs.run_config(args.engines_config, onnx_path, checkpoint, args.threads, calib, args.num_calib)
    report = engines_check.compare_engines(config.with_batch_size(1), images, labels, work / "engines_runs",
                                           rounds=args.engines_rounds, log=log)
    report.update(machine=machine_info(), arch=spec.name, load_average_before=load, load_average_after=os.getloadavg())
    m = report["machine"]
    table = engines_check.markdown(report, f"{m['cpu']}, {m['logical_cpus']} logical CPUs ({report['arch']}; "
                                           f"load average {load[0]:.2f} before, {report['load_average_after'][0]:.2f} after)")
    write_text_atomic(out / "engines_check.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "engines_check.md", table)
    return report, table
