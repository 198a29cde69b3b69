"""The benchmark's report: the machine and libraries it ran on, benchmark.json (units in the key names), the
timing rows as a CSV named by the hardware (as timm names its benchmark CSVs), and benchmark.md; figures only,
nothing judged but the user's own fidelity limit."""
import csv
import io
import json
import platform
import re
import time
from pathlib import Path

from convmixer_suite.util.files import write_text_atomic
from convmixer_suite.bench.profiling import profile_markdown


def machine_info() -> dict:
    """The CPU (convmixer_suite.precision.cpu_info: vendor, family/model, speed flags), named in one line as ``cpu``."""
    from convmixer_suite.precision.cpu_info import cpu_info, describe_cpu
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
    limit = report["settings"]["max_logit_error"]
    lines += ["", f"Fidelity against PyTorch fp32 on {report['fidelity_images']} (limit: max abs diff / max abs "
              f"logit <= {limit:g}, --max-logit-error):", "",
              "| configuration | top-1 agreement | max abs diff | max abs diff / max abs logit | within the limit |",
              "|---|---:|---:|---:|---|"]
    for name, f in report["fidelity"].items():
        lines.append(f"| {display_name(name, report)} | {f['top1_agreement']:.3f} | {f['max_abs_diff']:.4g} "
                     f"| {f['max_rel_diff']:.4g} | {'yes' if f['within_limit'] else 'no: never called fastest'} |")
    best = report["fastest_within_limit_batch_1"]
    lines += ["", f"Fastest at batch 1 within the limit: {best or 'none'}."]
    if report["profile"] and report["profile"]["nodes"]:
        lines += [""] + profile_markdown(display_name(report["profile"]["config"], report), report["profile"]["nodes"])
    lines += loadgen_markdown(report)
    return "\n".join(lines + not_measured(report)) + "\n"


def not_measured(report) -> list:
    """The configurations and ceilings that failed to load, each with its line, and those skipped here."""
    lines = []
    for label, part in (("", report), ("ceiling of ", report["ceiling"])):
        for status, title in (("failed", "FAILED"), ("skipped", "Skipped")):
            if part.get(status):
                lines += ["", f"{title}: " + "; ".join(f"{label}{k} ({v})" for k, v in part[status].items())]
    return lines


def optional(value, fmt) -> str:
    return "n/a" if value is None else format(value, fmt)


def loadgen_markdown(report) -> list:
    """LoadGen's verdict and figures for each configuration and scenario, as LoadGen printed them."""
    lines = []
    if report["loadgen"]:
        where = f"{report['submission']['root']}/results/" if report.get("submission") else "loadgen/"
        lines += ["", f"MLPerf LoadGen (logs in {where}<system>/<model>/<scenario>/performance/run_1/, beside the "
                  "user.conf they used; figures as LoadGen printed them):", "",
                  "| configuration | scenario | Result is | LoadGen's figures | settings |", "|---|---|---|---|---|"]
        for r in report["loadgen"]:
            figures = "; ".join(f"{k}: {v}" for k, v in r["figures"].items())
            st = r["settings"]
            extra = f"batch {st['batch_size']}, min {st['min_duration_ms']} ms / {st['min_query_count']} queries"
            if r["scenario"] == "Server":
                extra += (f", p99 bound {st['server_target_latency_ms']:.4g} ms, target {st['server_target_qps']:.4g} QPS"
                          f" (bound {'met' if r['latency_bound_met'] else 'not met'} in {len(r['bisection'])} short "
                          f"bisection steps; final run {len(r['final_attempts'])} of at most {r['final_attempts_limit']})")
            lines.append(f"| {display_name(r['config'], report)} | {r['scenario']} | {r['result']} | {figures} | {extra} |")
    if report["loadgen_accuracy"]:
        lines += ["", "LoadGen accuracy runs (AccuracyOnly: each image answered with its class; accuracy.txt as "
                  "MLPerf's accuracy-imagenet.py scores the full log, in accuracy_logs/ beside val_map.txt):", "",
                  "| configuration | scenario | images | accuracy.txt |", "|---|---|---:|---|"]
        lines += [f"| {display_name(r['config'], report)} | {r['scenario']} | {r['num_images']} | {r['accuracy_line']} |"
                  for r in report["loadgen_accuracy"]]
    return lines


def hardware_slug(machine: dict) -> str:
    from convmixer_suite.bench.mlperf_layout import cpu_hardware_name
    return re.sub(r"[^A-Za-z0-9.-]+", "_", cpu_hardware_name(machine)).strip("_")


def default_out(profile: str, configs, all_configs) -> Path:
    """docs/results/<date>_<CPU>_<configuration set>, below the current folder (a checkout's root: the folder
    docs/benchmarks.md links; never inside an installed package)."""
    from convmixer_suite.precision.cpu_info import cpu_info
    chosen = profile if list(configs) == list(all_configs) else f"{profile}-" + "+".join(configs)
    return Path("docs") / "results" / f"{time.strftime('%Y-%m-%d')}_{hardware_slug(cpu_info())}_{chosen}"


CSV_FIELDS = ("config", "backend", "precision", "batch_size", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "per_image_ms",
              "throughput_images_per_s", "ratio_to_torch_fp32", "ceiling_p50_ms", "efficiency", "iterations", "status",
              "reason")


def rows_csv(report) -> str:
    """One row per configuration and batch size measured (status ``measured``), then one per configuration
    that failed to load or was skipped, with its line as the reason and no figures."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in report["results"]:
        lat = r["latency_ms"]
        writer.writerow({**{k: r.get(k) for k in CSV_FIELDS}, "p50_ms": lat["p50"], "p90_ms": lat["p90"],
                         "p99_ms": lat["p99"], "mean_ms": lat["mean"], "ceiling_p50_ms": r.get("ceiling_ms"),
                         "status": "measured"})
    for status in ("failed", "skipped"):
        for name, reason in report.get(status, {}).items():
            writer.writerow({"config": name, "status": status, "reason": reason})
    return buffer.getvalue()


def write_report(report, out: Path) -> list:
    """benchmark.json, benchmark-<hardware>.csv and benchmark.md into ``out``; returns their paths."""
    paths = [out / "benchmark.json", out / f"benchmark-{hardware_slug(report['machine'])}.csv", out / "benchmark.md"]
    write_text_atomic(paths[0], json.dumps(report, indent=1) + "\n")
    write_text_atomic(paths[1], rows_csv(report))
    write_text_atomic(paths[2], markdown(report))
    return paths
