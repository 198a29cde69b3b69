"""The cost of the Ray engine: the local streaming evaluation against Ray Data with 1 and 2 replicas, measured
side by side on the same images, model and cores (convmixer-benchmark --engines-check).

Each configuration runs the user's command, the streaming evaluation (``python3 -m
convmixer_suite.commands.stream_eval … --fresh``), in a process of its own, in alternation (local, ray x1, ray x2,
local, …), so drift of a shared machine hits all alike. Per run: the process's wall time (everything a user waits
for: imports, Ray's start, replicas loading the model) and, from the run's stream summary, the time until the first
batch came back and the images/s after it (the steady state), the model's own time, and how each replica did.
The accuracy JSON of every run must be the same.
"""
from pathlib import Path

import numpy as np

from convmixer_suite.bench.stream_process import run_stream_eval
from convmixer_suite.run.config import RunConfig

ENGINE_ARGS = {"local": [], "ray x1": ["--engine", "ray", "--replicas", "1"],
               "ray x2": ["--engine", "ray", "--replicas", "2"]}


def run_once(name, config: RunConfig, images, labels, out: Path) -> dict:
    json_name = f"result_bs{config.batch_size}.json"
    argv = [*config.stream_eval_args(), "--image-path", images, "--annotation-file-path", labels,
            "--result-json-path", out, "--json-file-name", json_name, "--fresh", *ENGINE_ARGS[name]]
    run = run_stream_eval(argv, out / json_name, f"engines check: {name}")
    summary = run["summary"]
    stages = summary["stages"]
    return {"wall_s": run["wall_s"], "num_images": summary["num_images"], "json": run["accuracy_json"],
            "first_batch_s": stages["first_batch_s"], "pipeline_s": stages["pipeline_s"],
            "inference_s": stages["inference_s"], "after_first_batch_images_per_s": stages["after_first_batch_images_per_s"],
            "replicas": stages["replicas"], "decode_transform_images_per_s_per_worker":
                stages["decode_transform_images_per_s_per_worker"]}


def compare_engines(config: RunConfig, images, labels, work: Path, rounds=2, log=print) -> dict:
    """Run every configuration ``rounds`` times, alternating; returns the figures per configuration."""
    runs = {name: [] for name in ENGINE_ARGS}
    for round_index in range(rounds):
        for name in ENGINE_ARGS:
            log(f"==> engines check, round {round_index + 1}/{rounds}: {name}")
            runs[name].append(run_once(name, config, images, labels, work / name.replace(" ", "_")))
    jsons = {run["json"] for name in runs for run in runs[name]}
    report = {"configs": {}, "same_json": len(jsons) == 1, "rounds": rounds, "batch_size": config.batch_size,
              "backend": config.backend, "precision": config.precision, "threads": config.threads,
              "run_config": config.as_dict()}
    for name, done in runs.items():
        n = done[0]["num_images"]
        mean = (lambda key: float(np.mean([r[key] for r in done])))
        report["configs"][name] = {
            "num_images": n, "wall_s": mean("wall_s"), "end_to_end_images_per_s": n / mean("wall_s"),
            "first_batch_s": mean("first_batch_s"), "after_first_batch_images_per_s":
                mean("after_first_batch_images_per_s"), "inference_s": mean("inference_s"),
            "pipeline_s": mean("pipeline_s"), "replicas_last_run": done[-1]["replicas"],
            "wall_s_per_round": [r["wall_s"] for r in done]}
    local = report["configs"]["local"]
    for name, figures in report["configs"].items():
        figures["wall_ratio_to_local"] = figures["wall_s"] / local["wall_s"]
        figures["steady_ratio_to_local"] = (local["after_first_batch_images_per_s"]
                                            / figures["after_first_batch_images_per_s"]
                                            if figures["after_first_batch_images_per_s"] else 0.0)
    return report


def markdown(report: dict, machine: str) -> str:
    lines = [f"Engines check: {report['backend']} {report['precision']}, batch {report['batch_size']}, threads "
             f"{report['threads'] or 'default'}, {report['rounds']} rounds alternated, on {machine}. Same accuracy JSON from every run: "
             f"{'yes' if report['same_json'] else 'NO'}.", "",
             "| engine | images | wall s | end-to-end images/s | x local time | until first batch s "
             "| images/s after it | x local (after it) | model s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, f in report["configs"].items():
        lines.append(f"| {name} | {f['num_images']} | {f['wall_s']:.1f} | {f['end_to_end_images_per_s']:.2f} "
                     f"| {f['wall_ratio_to_local']:.3f} | {f['first_batch_s']:.1f} "
                     f"| {f['after_first_batch_images_per_s']:.2f} | {f['steady_ratio_to_local']:.3f} "
                     f"| {f['inference_s']:.1f} |")
    return "\n".join(lines) + "\n"
