"""Side-by-side speed and fidelity of every runtime and precision on ConvMixer, in one run.

    convmixer-benchmark                    # ConvMixer-1536/20, seeded random weights, all configurations
    convmixer-benchmark --checkpoint ./convmixer_1536_20_ks9_p7.pth.tar --images ./photos
    convmixer-benchmark --quick            # a small ConvMixer, 2 timed batches: checks that it all runs
    convmixer-benchmark --quick --scenarios SingleStream,Offline   # and under MLPerf LoadGen
    python3 -m convmixer_suite.commands.benchmark --quick          # the same, without the install

The configurations and the two profiles (default, --quick) are data: convmixer_suite/bench/configs.py.
For each batch size every configuration is timed in alternation (convmixer_suite.bench.timing) beside its ceiling,
the model's pointwise convolutions alone (convmixer_suite.bench.ceiling); fidelity against PyTorch fp32 on ``--images``
(default: generated pictures), a configuration beyond ``--max-logit-error`` marked so (convmixer_suite.bench.fidelity_table);
then streaming and preprocessing checks (convmixer_suite.bench.pipeline_checks). ``--scenarios`` runs every
configuration under MLPerf LoadGen (convmixer_suite.bench.loadgen) with LoadGen's mlperf.conf plus our
user.conf, as an open-division submission under ``--out`` (open/<submitter>/{results,systems,src,
model_mapping.json}, the submission checker's v6.1 layout; convmixer_suite.bench.mlperf_submission);
``--loadgen-accuracy`` adds AccuracyOnly runs with accuracy.txt (and val_map.txt beside the full log, in
accuracy_logs/) as MLPerf's accuracy script reads and writes them. ``--profile`` adds a layer-by-layer profile.
Writes benchmark.json, benchmark-<hardware>.csv, benchmark.md (convmixer_suite.bench.markdown_report), report.html
(convmixer_suite.bench.html_report: one self-contained page) and benchmark_throughput.png
(convmixer_suite.bench.throughput_plot; matplotlib, optional) into ``--out`` (default: docs/results/<date>_<CPU>_<profile>/); models, pictures and int8 models are cached in ``--work``.
"""
import argparse
import sys
import time

from convmixer_suite.bench.configs import CONFIGS, PROFILES, REFERENCE
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.cli import run_main
from convmixer_suite.precision.fidelity import DEFAULT_MAX_LOGIT_ERROR as MAX_LOGIT_ERROR, logit_error_limit
from convmixer_suite.bench.mlperf_submission import DEFAULT_SUBMITTER, check_name


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add = p.add_argument
    add("--arch", help="a released arch or convmixer_DIM_DEPTH_ksK_pP (default: the profile's)")
    add("--checkpoint", help="real weights (default: seeded random weights)")
    add("--configs", default=",".join(CONFIGS), help=f"comma-separated, from: {', '.join(CONFIGS)}")
    add("--batch-sizes", help="comma-separated (default 1,4,16; 1,2 with --quick)")
    add("--iters", type=int, help="timed batches per configuration and batch size (default 10; 2 with --quick)")
    add("--warmup", type=int, help="untimed batches first (default 2; 1 with --quick)")
    add("--threads", type=int, help="threads for every runtime (default: each one's own)")
    add("--images", help="folder of photos for fidelity (default: generated pictures)")
    add("--num-images", type=int, help="fidelity images (default 16; 4 with --quick)")
    add("--max-logit-error", type=logit_error_limit, default=MAX_LOGIT_ERROR,
        help=f"fidelity limit: max |logit diff| / max |logit| against {REFERENCE} (default {MAX_LOGIT_ERROR})")
    add("--calib", help="preprocessed calibration folder for int8 (default: generated)")
    add("--num-calib", type=int, help="generated calibration images (default 300; 8 with --quick)")
    add("--stream-config", default="auto", help="configuration of the streaming check "
                                                "(auto: the fastest within --max-logit-error at batch 1)")
    add("--stream-images", type=int, help="images streamed (default 32; 4 with --quick)")
    add("--prep-images", type=int, help="images preprocessed per run of the workers check (default 200; 16 quick)")
    add("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    add("--out", help="output folder (default docs/results/<date>_<CPU>_<profile>)")
    add("--work", help="cache of models, pictures and int8 models (default <out>/work)")
    add("--scenarios", default="", help="MLPerf LoadGen scenarios, comma-separated: SingleStream, Offline, Server")
    add("--submission-durations", action="store_true", help="LoadGen runs of MLPerf's minimum durations "
        "(mlperf.conf's 600 s, performance_sample_count 1024, Offline 24576 samples) instead of the short ones")
    add("--submission-layout", choices=("open", "none"), default="open",
        help="open (default): the LoadGen runs as an open-division MLPerf submission in <out>/open/<submitter>/; "
             "none: LoadGen's logs alone in <out>/loadgen/")
    add("--submitter", default=DEFAULT_SUBMITTER, help=f"the submission's organization (default {DEFAULT_SUBMITTER})")
    add("--system-name", help="the system's name in the submission, before the configuration "
                              "(default: the CPU's model name and logical CPU count)")
    add("--server-latency-ms", type=float, help="Server: the p99 latency bound (default 3x batch-1 latency)")
    add("--server-steps", type=int, help="Server: short LoadGen runs of the QPS bisection (default 5; 3 quick)")
    add("--server-queries", type=int, help="Server: queries of the final run at the QPS found, for LoadGen's "
                                           "early-stopping estimate (default 1024)")
    add("--loadgen-min-duration-ms", type=int, help="LoadGen's minimum duration of each run, of each bisection "
                                                    "step with --submission-durations (default 10000; 200 quick)")
    add("--loadgen-min-queries", type=int, default=64,
        help="LoadGen's minimum query count (default 64: SingleStream's early stopping needs 64)")
    add("--loadgen-accuracy", action="store_true",
        help="also LoadGen AccuracyOnly runs of each configuration on --images, scored against --labels")
    add("--labels", help="val_label.txt of --images, for --loadgen-accuracy")
    add("--profile", nargs="?", const="auto", metavar="CONFIG", help="profile a configuration layer by layer at "
        "batch 1 with its runtime's profiler (default: the fastest within --max-logit-error)")
    add("--no-ceiling", action="store_true", help="skip the ceiling (pointwise convolutions alone)")
    add("--quick", action="store_true", help="the quick profile: small arch and few iterations, a functional check")
    add("--engines-check", action="store_true",
        help="only this: convmixer_stream_eval.py local vs --engine ray with 1 and 2 replicas, alternated, "
             "on --engines-images generated pictures (needs requirements-dist.txt)")
    add("--engines-images", type=int, help="pictures of the engines check (default 32; 6 with --quick)")
    add("--engines-rounds", type=int, default=2, help="rounds of the engines check (default 2)")
    add("--engines-config", default="onnxruntime-fp32",
        help=f"configuration of the engines check (default onnxruntime-fp32; from: {', '.join(CONFIGS)})")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.profile_name = "quick" if args.quick else "default"
    for key, value in PROFILES[args.profile_name].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return check_args(args)


def check_args(args):
    args.batch_sizes = parse_int_list(args.batch_sizes, "--batch-sizes")
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        raise UserError(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if REFERENCE not in args.configs:
        args.configs.insert(0, REFERENCE)  # ratios and fidelity need the reference
    for key in ("iters", "num_images", "num_calib", "stream_images", "prep_images", "server_steps",
                "loadgen_min_duration_ms", "loadgen_min_queries", "server_queries"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        raise UserError("--warmup must be at least 0")
    args.scenarios = parse_scenarios(args.scenarios)
    check_name(args.submitter, "--submitter")
    if args.system_name is not None:
        check_name(args.system_name, "--system-name")
    if args.loadgen_accuracy and not (args.images and args.labels):
        raise UserError("--loadgen-accuracy needs --images (photos) and --labels (their val_label.txt)")
    if args.out is None:
        from convmixer_suite.bench.markdown_report import default_out
        args.out = str(default_out(args.profile_name, args.configs, CONFIGS))
    args.work = args.work or f"{args.out}/work"
    return args


def parse_scenarios(text) -> list:
    from convmixer_suite.bench.loadgen import SCENARIOS
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


def print_submission(submission):
    """Where the MLPerf submission is and what its checker will still reject."""
    if submission is None:
        return
    print(f"MLPerf {submission['division']}-division submission (checker {submission['checker_version']} "
          f"layout, mapped onto {submission['mlperf_benchmark']}): {submission['root']}")
    for where, gaps in submission["checker_will_reject"].items():
        for gap in gaps:
            print(f"notice: {where}: {gap}")


def log(line):
    print(line, flush=True)


def main(argv=None):
    from pathlib import Path

    from convmixer_suite.bench import benchmark as bench_run
    args = parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out)
    if args.engines_check:
        report, table = bench_run.run_engines_check(args, log)
        print(table)
        print(f"wrote {out / 'engines_check.json'} and {out / 'engines_check.md'}")
        return 0 if report["same_json"] else 1
    from convmixer_suite.bench.html_report import write_benchmark_report
    from convmixer_suite.bench.throughput_plot import write_plot
    from convmixer_suite.bench.markdown_report import markdown, write_report
    report = bench_run.run_benchmark(args, log)
    paths = write_report(report, out) + [write_benchmark_report(report, out)]
    plot = write_plot(report, out / "benchmark_throughput.png")
    print(markdown(report))
    print_submission(report["submission"])
    if plot is None:
        print("notice: matplotlib is not installed (pip install -r requirements-bench.txt); no plot written")
    print(f"wrote {', '.join(map(str, paths + [plot] * bool(plot)))} in {time.perf_counter() - started:.0f} s")
    failed = sorted(report["failed"]) + [f"ceiling of {c}" for c in sorted(report["ceiling"]["failed"])]
    if failed:
        print(f"FAILED: {', '.join(failed)} (their lines are in the report; --debug shows a traceback)")
    return 1 if failed else 0


def run():
    """The installed command's entry point."""
    run_main(main, modern_stack=True)


if __name__ == "__main__":
    run()
