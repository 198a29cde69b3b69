"""Accuracy and speed in one streaming pass: images -> model -> top-k, writing no .bin or TXT files.

    python3 convmixer_stream_eval.py --model ./convmixer_1536_20.onnx --image-path /opt/npu/imageNet/val \
        --annotation-file-path /opt/npu/imageNet/val_label.txt --result-json-path ./result \
        --json-file-name result_bs1.json --batch-size 1

The same images, batches, transform, runtime and scoring as convmixer_preprocess.py + convmixer_infer.py +
convmixer_eval_acc.py, so the accuracy JSON is the file-based flow's; while the model runs one batch, worker
processes decode the next ones. stdout carries msame's log lines (``Inference time: …ms`` per batch and the
averages, which close the log as msame's do), so ``test/parse.py --result-file <this log>`` and the guide's own
parse.py give the fps; the images/s of each stage are printed before the averages and written to
``<json name>_stream_summary.json`` beside the accuracy JSON.

Every image's top-k is recorded as it completes in ``<json name>_records/`` (convmixer_suite.run.records): the same
command after an interruption (even kill -9) runs only the batches not recorded yet and ends with the same JSON;
``--fresh`` starts over. ``--engine ray`` runs the same evaluation on Ray Data (convmixer_suite.run.ray_engine):
model replicas on this machine's cores, its GPUs or NPUs, or a cluster's.
"""
import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from convmixer_suite.guide import msame_log
from convmixer_suite.runtimes.registry import BACKEND_NAMES
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.cli import positive_int, run_main
from convmixer_suite.precision.cpu_info import host_record, peak_rss_mb
from convmixer_suite.run.records import DEFAULT_FLUSH_S, RecordStore, accuracy_from_records, batch_latencies_ms
from convmixer_suite.run.config import RunConfig, add_compile_option, add_precision_options
from convmixer_suite.guide.scoring import format_accuracy_line, labelled_rows, read_labels, write_accuracy_json
from convmixer_suite.run.stream import (EvalJob, StreamTimes, default_workers, evaluate_local, gate_job, refuse_other_runs_records, relative_names, resumable_job)
from convmixer_suite.guide.transform import list_images

TOPK = 5


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=".onnx (onnxruntime, openvino) or a checkpoint (torch)")
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKEND_NAMES)
    add_precision_options(p, "the first pictures, before any batch runs")
    p.add_argument("--threads", default=None, type=positive_int, help="intra-op threads (default: the runtime's)")
    add_compile_option(p)
    p.add_argument("--device", default=None, help="cpu (default), cuda:N, ... as convmixer_infer.py takes it")
    p.add_argument("--image-path", required=True, help="folder of images (flat, or class subfolders)")
    p.add_argument("--annotation-file-path", required=True, help="val_label.txt")
    p.add_argument("--result-json-path", required=True, help="folder for the accuracy JSON")
    p.add_argument("--json-file-name", required=True, help="accuracy JSON file name, e.g. result_bs1.json")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--workers", type=positive_int, default=None,
                   help=f"local engine: decode worker processes (default: all cores, {default_workers()} here)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out images that cannot be decoded instead of stopping (as convmixer_preprocess.py)")
    p.add_argument("--fresh", action="store_true",
                   help="discard the per-image records of an earlier run of this JSON name instead of resuming it")
    p.add_argument("--record-every", type=float, default=DEFAULT_FLUSH_S, metavar="SECONDS",
                   help="write the per-image records gathered so far at most this often (default %(default)s; "
                        "0: after every batch)")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: decode workers and the model in this process (default); ray: Ray Data, with "
                        "model replicas on this machine or a cluster (pip install -r requirements-dist.txt)")
    p.add_argument("--ray-address", default=None,
                   help="ray engine: auto or HOST:PORT joins a running Ray cluster (default: start Ray here)")
    p.add_argument("--replicas", type=positive_int, default=None,
                   help="ray engine: model replicas (default: one per GPU/NPU Ray sees for --device cuda:N/NPU id, "
                        "else one per node, using its cores)")
    p.add_argument("--stall-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                   help="ray engine: stop with one line, keeping the records for a rerun, when no batch completes "
                        "for this long (default: 20 times the slowest batch so far, at least 300; the first "
                        "batch, which waits for the start-up, at least 300 whatever is given)")
    args = p.parse_args(argv)
    if args.engine != "ray":
        given = [flag for flag, value in (("--ray-address", args.ray_address), ("--replicas", args.replicas),
                                          ("--stall-timeout", args.stall_timeout)) if value is not None]
        if given:
            p.error(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} --engine ray")
    elif args.workers is not None:
        p.error("--workers sets the local engine's decode processes; with --engine ray, Ray runs decode tasks "
                "on the CPUs it has")
    return args


def stage_lines(rates: dict, workers: int) -> list:
    """The stage lines. None of them holds the letters "ms": test/parse.py reads a log's last "…ms"
    (docs/formats.md)."""
    return [f"[INFO] decode+transform: {rates['decode_transform_images_per_s_per_worker']:.1f} images/s per worker, "
            f"{rates['decode_transform_images_per_s']:.1f} images/s with {workers} workers",
            f"[INFO] inference: {rates['inference_images_per_s']:.2f} images/s (model execution only)",
            f"[INFO] scoring: {rates['scoring_images_per_s']:.0f} images/s",
            f"[INFO] end to end: {rates['end_to_end_images_per_s']:.2f} images/s; pipeline {rates['pipeline_s']:.2f} s "
            f"vs inference {rates['inference_s']:.2f} s: overhead x{rates['pipeline_overhead_ratio']:.3f} "
            f"({rates['waiting_for_decode_s']:.2f} s waiting for decoded batches)",
            f"[INFO] bound by: {rates['bound_stage'] or 'nothing timed'} (the stage with the fewest images/s)"] + [
            f"[INFO] replica {i}: {r['images']} images in {r['batches']} batches, {r['inference_images_per_s']:.2f} "
            f"images/s model execution, {r['end_to_end_images_per_s']:.2f} images/s end to end ({name})"
            for i, (name, r) in enumerate(sorted(rates["replicas"].items()), 1)]


def run_engine(args, job: EvalJob, store: RecordStore, bar, gated=None) -> tuple:
    """Run the chosen engine on the job's batches; returns (StreamTimes, run info). ``gated``: the backend the
    fidelity gate loaded, which the local engine runs (Ray's replicas load their own)."""
    announce = (lambda line: print(f"[INFO] {line}", flush=True))
    log = (lambda line: print(line, flush=True))
    if args.engine == "ray":
        from convmixer_suite.run import ray_engine
        return ray_engine.evaluate(job, store, args.ray_address, args.replicas, announce, log, bar,
                                   stall_timeout_s=args.stall_timeout)
    return evaluate_local(job, store, args.workers or default_workers(), announce, log, bar, backend=gated)


def print_report(json_path: Path, labels) -> None:
    """Write the run's HTML report beside its JSON and print its path; a report that cannot be made (Jinja2
    missing) is a notice, not a failed run: the accuracy JSON and the records are complete."""
    from convmixer_suite.bench.html_report import write_evaluation_report
    try:
        print(f"[INFO] report: {write_evaluation_report(json_path, labels=labels).resolve()}", flush=True)
    except UserError as exc:
        print(f"notice: no HTML report ({exc})", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    root = Path(args.image_path).resolve()
    paths, non_images = list_images(root)
    names = relative_names(paths, root)
    image_labels = labelled_rows(names, read_labels(args.annotation_file_path), args.annotation_file_path)
    json_path = Path(args.result_json_path) / args.json_file_name
    config = RunConfig.from_args(args, batch_size=args.batch_size)
    num_batches = -(-len(paths) // args.batch_size)
    job = EvalJob(paths, names, image_labels, list(range(num_batches)), config, TOPK, args.skip_bad)
    refuse_other_runs_records(job, json_path, fresh=args.fresh)
    figures, gated = gate_job(job, args.max_logit_error, announce=lambda line: print(line, flush=True))
    if args.engine == "ray":
        gated = None  # the replicas load their own: not held here while they run
    job, store, resumed = resumable_job(job, json_path, fresh=args.fresh, flush_s=args.record_every)
    print(f"[INFO] {len(paths)} images from {root} in {num_batches} batches of {args.batch_size}"
          + (f" ({non_images} non-image files skipped)" if non_images else "")
          + (f"; resuming: {resumed} batches already recorded in {store.folder}" if resumed else ""),
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    with tqdm(total=len(paths), initial=len(paths) - job.pending_images, unit="img", desc="stream eval",
              file=sys.stderr, dynamic_ncols=True) as bar:
        times, info = (run_engine(args, job, store, bar, gated) if job.batches
                       else (StreamTimes(), {"engine": args.engine}))
    records = store.all_records()
    counter, skipped = accuracy_from_records(records, TOPK)
    latencies_ms = batch_latencies_ms(records)  # every batch's, those of a resumed run's earlier part included
    for name, message in skipped:
        print(f"skipping bad image {name}: {message}", file=sys.stderr)
    rates = times.rates()
    print("\n".join(stage_lines(rates, times.workers)), flush=True)
    topk = counter.accuracies()
    json_path = write_accuracy_json(json_path, counter.num_images, counter.num_classes, topk)
    summary = msame_log.build_summary(
        latencies_ms, batch_size=config.batch_size, backend_name=info.get("backend", config.backend),
        backend_version=info.get("backend_version"), threads=config.threads,
        precision=info.get("precision", config.precision), model=config.model, input_path=str(root),
        device=config.device,
        num_images=counter.num_images, skipped_images=[{"name": n, "error": m} for n, m in skipped],
        workers=times.workers, stages=rates, total_s=time.perf_counter() - started, run=info,
        batches_run=len(job.batches), batches_resumed=resumed, records=str(store.folder), fidelity=figures,
        run_config=config.as_dict(), host=host_record(config.device), driver_peak_rss_mb=peak_rss_mb())
    summary_path = msame_log.write_summary(json_path.with_name(json_path.stem + "_stream_summary.json"), summary)
    print(f"{counter.num_images} images, {counter.num_classes} classes; wrote {json_path} and {summary_path}")
    print(format_accuracy_line(topk))
    print_report(json_path, args.annotation_file_path)
    # msame's averages close the log, as msame's do: the guide's parse.py reads garbage if a later line has "ms"
    print("\n".join(msame_log.folder_average_lines(latencies_ms)), flush=True)
    return 0


def run():
    """The installed command's entry point."""
    run_main(main, modern_stack=True)


if __name__ == "__main__":
    run()
