"""Other CPU runtimes and OpenVINO/NNCF variants beside the production openvino-int8, timed in one run.

The question this answers: does any CPU runtime a user could pick run ConvMixer faster than the suite's
openvino-int8 within the fidelity limit (``--max-logit-error``, the fidelity gate's default unless given), and how
close does the fastest come to the same-run int8 ceiling (the model's pointwise convolutions alone,
convmixer_suite.bench.ceiling)? The gap between openvino-int8 and its ceiling is the depthwise k x k convolutions,
so beside the whole model the ``dw:`` configurations time the model's ``depth`` depthwise convolutions alone (one
chain, on the feature map) in each runtime.

Every configuration is loaded and warmed up, then timed in alternation (convmixer_suite.bench.timing). Fidelity
of each whole-model configuration: max |diff| / max |logit| and top-1 agreement against onnxruntime fp32 (the fp32
default) on held-out generated pictures, never used for calibration (convmixer_suite.bench.fidelity_table).

The runtimes that are not product backends are backends of the survey's own (convmixer_suite.tools.extra_backends),
each importing its library only when chosen: ncnn (the model converted by pnnx), IREE (ONNX imported by
iree-import-onnx, compiled for this CPU by iree-compile). Converted models are cached in the work folder under
names carrying the ONNX file's digest.

    python3 -m convmixer_suite.tools.runtime_compare --out ./runtime_compare      # ConvMixer-1536/20, seeded weights
    python3 -m convmixer_suite.tools.runtime_compare --configs onnxruntime-fp32,openvino-int8,ceiling:openvino-int8,ncnn-fp32

writes runtime_compare.json and runtime_compare.md into --out (models cached in --out/work). Optional runtimes:
``pip install -r requirements-runtimes.txt`` (a missing one is listed as not loaded, with the reason).
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from convmixer_suite.model.data_config import IMAGE_SHAPE
from convmixer_suite.model.net import ARCHS, DEFAULT_ARCH
from convmixer_suite.util.errors import NotAvailable, UserError
from convmixer_suite.util.files import atomic_path, output_folder, write_text_atomic
from convmixer_suite.util.cli import positive_int, run_main
from convmixer_suite.precision.fidelity import DEFAULT_MAX_LOGIT_ERROR, logit_error_limit
from convmixer_suite.runtimes.registry import BACKENDS
from convmixer_suite.bench.profiling import profile_backend, profile_markdown
from convmixer_suite.tools.extra_backends import (IreeBackend, NcnnBackend, OpenVinoDepthwiseCopy, OpenVinoVariant,
                                                  TorchDepthwiseBackend)

REFERENCE = "onnxruntime-fp32"
PRODUCTION = "openvino-int8"
CEILING = "ceiling:openvino-int8"
DEPTHWISE_PREFIX = "dw:"
# iree-compile options beyond the defaults: convolutions turned channels-last, data tiling, ukernels.
IREE_NHWC_FLAGS = ("--iree-opt-data-tiling=true", "--iree-llvmcpu-enable-ukernels=all",
                   "--iree-preprocessing-pass-pipeline=builtin.module(util.func("
                   "iree-preprocessing-convert-conv-to-channels-last))")
# ONNX Conv with group = channels becomes OpenVINO's GroupConvolution
DEPTHWISE_FP32 = {"ignored_types": ["GroupConvolution"]}
# the survey's backends beside the product's, by kind
SURVEY_BACKENDS = {"ncnn": NcnnBackend, "iree": IreeBackend, "torch-depthwise": TorchDepthwiseBackend,
                   "openvino-variant": OpenVinoVariant, "openvino-dwop-copy": OpenVinoDepthwiseCopy}

# name -> (kind, options): kind a backend name (convmixer_suite.runtimes.registry) or one of SURVEY_BACKENDS, options
# its keyword arguments; "ceiling" is the same-run int8 ceiling. A "dw:" name runs on the depthwise-alone model.
SURVEY_CONFIGS = {
    REFERENCE: ("onnxruntime", {"precision": "fp32"}),
    PRODUCTION: ("openvino", {"precision": "int8"}),
    CEILING: ("ceiling", {}),
    "openvino-int8-throughput": ("openvino-variant", {"properties": {"PERFORMANCE_HINT": "THROUGHPUT"}}),
    "openvino-int8-dw-fp32": ("openvino-variant", {"nncf_options": DEPTHWISE_FP32}),
    "openvino-int8-dw-bf16": ("openvino-variant", {"nncf_options": DEPTHWISE_FP32, "hint": "bf16"}),
    "openvino-int8-mixed": ("openvino-variant", {"nncf_options": {"preset": "MIXED"}}),
    "openvino-int8-transformer": ("openvino-variant", {"nncf_options": {"model_type": "TRANSFORMER"}}),
    "openvino-int8-dw-op": ("openvino-dwop", {"precision": "int8"}),
    "openvino-int8-dw-op-copy": ("openvino-dwop-copy", {"precision": "int8"}),
    "ncnn-fp32": ("ncnn", {}),
    "iree-fp32": ("iree", {}),
    "iree-fp32-nhwc": ("iree", {"flags": IREE_NHWC_FLAGS}),
    "dw:onnxruntime-fp32": ("onnxruntime", {"precision": "fp32"}),
    "dw:openvino-fp32": ("openvino", {"precision": "fp32"}),
    "dw:openvino-bf16": ("openvino", {"precision": "bf16"}),
    "dw:openvino-int8": ("openvino", {"precision": "int8"}),
    "dw:ncnn-fp32": ("ncnn", {}),
    "dw:torch-fp32": ("torch-depthwise", {"precision": "fp32"}),
    "dw:torch-bf16": ("torch-depthwise", {"precision": "bf16"}),
    "dw:iree-fp32": ("iree", {}),
    "dw:iree-fp32-nhwc": ("iree", {"flags": IREE_NHWC_FLAGS}),
}


# ---- the depthwise-alone model ---------------------------------------------------------------------------

def build_depthwise_onnx(spec, path: Path, seed: int = 0) -> Path:
    """``spec.depth`` depthwise k x k convolutions (groups = dim, 'same' padding) chained on the feature map,
    seeded weights of std 1/k (unit-scale activations through the chain); written once. Input as the ceiling's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from convmixer_suite.bench.ceiling import CEILING_OPSET, feature_map_side
    path = Path(path)
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    dim, k, side = spec.dim, spec.kernel_size, feature_map_side(spec)
    nodes, weights = [], []
    for i in range(spec.depth):
        w = (rng.standard_normal((dim, 1, k, k)) / k).astype(np.float32)
        b = (rng.standard_normal(dim) * 0.01).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"dw{i}.weight"), numpy_helper.from_array(b, f"dw{i}.bias")]
        nodes.append(helper.make_node("Conv", [f"x{i}", f"dw{i}.weight", f"dw{i}.bias"], [f"x{i + 1}"],
                                      kernel_shape=[k, k], group=dim, pads=[k // 2] * 4, name=f"depthwise{i}"))
    nodes[0].input[0], nodes[-1].output[0] = "input", "output"
    shape = ["batch", dim, side, side]
    graph = helper.make_graph(nodes, f"depthwise_{spec.name}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
                              initializer=weights)
    # IR version 8 (opset 17's first): the onnxruntime inside pnnx reads at most IR 13, onnx.helper writes newer
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", CEILING_OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def depthwise_macs(spec) -> int:
    from convmixer_suite.bench.ceiling import feature_map_side
    return spec.depth * spec.kernel_size ** 2 * spec.dim * feature_map_side(spec) ** 2


# ---- loading ---------------------------------------------------------------------------------------------

def make_backend(name, models: dict, work: Path, threads: int, calib: dict, spec, num_calib: int):
    """The loaded backend of configuration ``name`` (``models``: {"model": onnx, "dw": depthwise onnx};
    ``calib``: {"model": image calibration folder, "dw": feature-map calibration folder})."""
    from convmixer_suite.bench.ceiling import ceiling_input_shape, load_ceilings
    kind, options = SURVEY_CONFIGS[name]
    if kind == "ceiling":
        loaded, skipped = load_ceilings({PRODUCTION: ("openvino", "int8")}, spec, work, threads=threads,
                                        num_calib=32, log=lambda line: print(line, file=sys.stderr))
        if skipped:
            raise NotAvailable(skipped[PRODUCTION])
        return loaded[PRODUCTION]
    part = "dw" if name.startswith(DEPTHWISE_PREFIX) else "model"
    backend = {**BACKENDS, **SURVEY_BACKENDS}[kind]
    return backend(models[part], threads=threads, calib_dir=calib[part], num_calib=num_calib,
                   input_shape=ceiling_input_shape(spec) if part == "dw" else IMAGE_SHAPE, **options).load()


def summarize(times: dict, fid: dict, versions: dict) -> dict:
    """Rows (median ms, min ms, fidelity, efficiency vs the ceiling, speed-up vs the fp32 default) and the
    fastest whole-model configuration within the fidelity limit, with its two ratios."""
    median = {name: float(np.median(t)) for name, t in times.items()}
    ceiling_ms = median.get(CEILING)
    rows = []
    for name, t in times.items():
        row = {"config": name, "version": versions[name], "median_ms": median[name], "min_ms": float(np.min(t)),
               "max_ms": float(np.max(t)), "iterations": len(t), **fid.get(name, {})}
        if name in fid:
            row["efficiency"] = ceiling_ms / median[name] if ceiling_ms else None
            row["speedup_vs_fp32_default"] = median[REFERENCE] / median[name] if REFERENCE in median else None
        rows.append(row)
    eligible = [r for r in rows if r.get("within_limit") and r["config"] != REFERENCE]
    fastest = min(eligible, key=lambda r: r["median_ms"]) if eligible else None
    if fastest is None or not (fastest.get("efficiency") and fastest.get("speedup_vs_fp32_default")):
        return {"rows": rows, "fastest": None}
    return {"rows": rows, "fastest": {"config": fastest["config"], "efficiency": fastest["efficiency"],
                                      "speedup": fastest["speedup_vs_fp32_default"]}}


def markdown(report: dict) -> str:
    """The result as Markdown tables: whole model, then the depthwise-alone chain."""
    limit = report["limit"]
    lines = [f"CPU: {report['cpu']}; load average before/after: {report['load_before']} / {report['load_after']}",
             f"Batch 1, {report['threads']} threads, {report['iters']} interleaved rounds; fidelity on "
             f"{report['num_fidelity']} held-out images vs {REFERENCE}.", "",
             "| configuration | version | median ms | min–max ms | max \\|diff\\|/max \\|logit\\| | top-1 agree "
             "| efficiency vs ceiling | x fp32 default |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    depthwise = ["", "| depthwise chain alone | version | median ms | min–max ms | GMAC/s |",
                 "|---|---|---:|---:|---:|"]
    for r in report["rows"]:
        spread = f"{r['min_ms']:.1f}–{r['max_ms']:.1f}"
        if r["config"].startswith(DEPTHWISE_PREFIX):
            depthwise.append(f"| {r['config']} | {r['version']} | {r['median_ms']:.1f} | {spread} | "
                             f"{report['depthwise_macs'] / (r['median_ms'] * 1e6):.0f} |")
            continue
        fid = (f"{r['max_rel_diff']:.2g}{'' if r['within_limit'] else f' (over {limit * 100:g}%)'} | "
               f"{r['top1_agreement']:.2f}" if "max_rel_diff" in r else " | ")
        eff = f"{r['efficiency']:.2f}" if r.get("efficiency") else ""
        speed = f"{r['speedup_vs_fp32_default']:.2f}" if r.get("speedup_vs_fp32_default") else ""
        lines.append(f"| {r['config']} | {r['version']} | {r['median_ms']:.1f} | {spread} | {fid} | {eff} | {speed} |")
    return "\n".join(lines + (depthwise if len(depthwise) > 3 else []) + fastest_lines(report["fastest"], limit)
                     + skipped_and_profiles(report)) + "\n"


def fastest_lines(fastest, limit: float) -> list:
    if not fastest:
        return ["", "no configuration within the limit had a ceiling and a reference to compare with"]
    return ["", f"Fastest within {limit * 100:g}%: {fastest['config']}: {fastest['efficiency']:.2f} of the same-run "
                f"int8 ceiling's speed, {fastest['speedup']:.2f}x the fp32 default."]


def skipped_and_profiles(report) -> list:
    skipped = [f"- {name}: {why}" for name, why in report["skipped"].items()]
    failed = [f"- {name}: {why}" for name, why in report.get("failed", {}).items()]
    profiles = []
    for name, rows in report.get("profiles", {}).items():
        profiles += [""] + profile_markdown(name, rows, limit=8)
    return ((["", "Not loaded (this machine lacks it):"] + skipped if skipped else [])
            + (["", "FAILED to load:"] + failed if failed else []) + profiles)


# ---- the whole run ---------------------------------------------------------------------------------------

def prepare_models(spec, work: Path, checkpoint, seed: int, num_calib: int, log=print) -> tuple:
    """({"model": onnx, "dw": depthwise onnx}, {"model": calibration folder, "dw": feature-map folder}, checkpoint);
    seeded random weights unless ``checkpoint``; every file written once and reused."""
    from convmixer_suite.bench.ceiling import write_calibration
    from convmixer_suite.bench.inputs import cached_onnx, calibration
    from convmixer_suite.guide.samples import seeded_checkpoint
    from convmixer_suite.model.checkpoint import load_model
    if checkpoint is None:
        checkpoint = seeded_checkpoint(spec, seed, work)
    else:
        held = load_model(checkpoint)[1].name
        if held != spec.name:
            raise UserError(f"{checkpoint}: holds {held}, not --arch {spec.name}")
    onnx_path, _ = cached_onnx(checkpoint, work, log)
    calib = calibration(work, num_calib, log)
    dw_calib = write_calibration(spec, work / f"ceiling_calib_{spec.name}_32", 32)  # the ceiling's own folder
    models = {"model": onnx_path, "dw": build_depthwise_onnx(spec, work / f"depthwise_{spec.name}.onnx")}
    return models, {"model": calib, "dw": dw_calib}, checkpoint


def run_comparison(names, spec, work: Path, *, checkpoint=None, seed=0, threads=2, iters=5, warmup=1,
                   num_calib=64, num_fidelity=4, limit=DEFAULT_MAX_LOGIT_ERROR, profile=False, log=print) -> dict:
    """The whole comparison; returns the report that ``markdown`` prints."""
    from functools import partial

    from convmixer_suite.bench.ceiling import ceiling_input
    from convmixer_suite.bench.fidelity_table import fidelity
    from convmixer_suite.bench.loading import load_each
    from convmixer_suite.bench.timing import time_alternating
    from convmixer_suite.guide.samples import generated_pictures
    from convmixer_suite.guide.transform import load_pictures
    from convmixer_suite.precision.cpu_info import cpu_info, describe_cpu
    unknown = [n for n in names if n not in SURVEY_CONFIGS]
    if unknown:
        raise UserError(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(SURVEY_CONFIGS)}")
    names = [REFERENCE] + [n for n in names if n != REFERENCE]
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    models, calib, checkpoint = prepare_models(spec, work, checkpoint, seed, num_calib, log)
    # a converter or compiler of an optional runtime failing is a result too
    backends, skipped, failed = load_each(names, partial(make_backend, models=models, work=work, threads=threads,
                                                         calib=calib, spec=spec, num_calib=num_calib),
                                          log, required=(REFERENCE,))
    images = load_pictures(generated_pictures(work / f"fidelity_pictures_{num_fidelity}", num_fidelity),
                           num_fidelity)
    log(f"==> fidelity on {num_fidelity} held-out pictures")
    whole = [n for n in backends if n != CEILING and not n.startswith(DEPTHWISE_PREFIX)]
    fid = fidelity({n: backends[n] for n in whole}, images, 1, REFERENCE, limit)
    feature_map = ceiling_input(spec, 1)
    inputs = {n: images[:1] if n in whole else feature_map for n in backends}
    log(f"==> timing {len(backends)} configurations interleaved, {iters} rounds")
    times = time_alternating(backends, inputs, iters, warmup, log)
    profiles = {}
    if profile:
        for name in (n for n in whole if backends[n].name == "openvino"):
            log(f"==> layer profile of {name}")
            profiles[name] = profile_backend(backends[name], images[:1])
    info = cpu_info()
    report = summarize(times, fid, {n: f"{b.name} {b.version.split('-')[0]}" for n, b in backends.items()})
    report.update(cpu=describe_cpu(info), cpu_info=info, load_before=[round(x, 2) for x in load_before],
                  load_after=[round(x, 2) for x in os.getloadavg()], threads=threads, iters=iters, warmup=warmup,
                  num_calib=num_calib, num_fidelity=num_fidelity, limit=limit, arch=spec.name,
                  checkpoint=str(checkpoint), skipped=skipped, failed=failed, depthwise_macs=depthwise_macs(spec),
                  models={k: str(v) for k, v in models.items()}, profiles=profiles)
    return report


# ---- command line ----------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="runtime_compare", help="folder for the report and the work files")
    p.add_argument("--arch", choices=list(ARCHS), default=DEFAULT_ARCH)
    p.add_argument("--checkpoint", default=None, help="real weights (default: seeded random weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--configs", default=",".join(SURVEY_CONFIGS),
                   help=f"comma-separated, from: {', '.join(SURVEY_CONFIGS)}")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--iters", type=positive_int, default=5, help="interleaved timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per configuration first (default 1)")
    p.add_argument("--num-calib", type=positive_int, default=64, help="generated calibration pictures (default 64)")
    p.add_argument("--num-images", type=positive_int, default=4, help="held-out fidelity pictures (default 4)")
    p.add_argument("--max-logit-error", type=logit_error_limit, default=DEFAULT_MAX_LOGIT_ERROR, metavar="FRACTION",
                   help="the most max |diff| / max |logit| against fp32 of a configuration that may be called "
                        "fastest (default %(default)s)")
    p.add_argument("--profile", action="store_true", help="after the timing, a layer-by-layer profile of each "
                                                          "whole-model OpenVINO configuration")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = output_folder(args.out, "--out")
    report = run_comparison(
        [c for c in args.configs.split(",") if c], ARCHS[args.arch], out / "work",
        checkpoint=Path(args.checkpoint) if args.checkpoint else None, seed=args.seed, threads=args.threads,
        iters=args.iters, warmup=args.warmup, num_calib=args.num_calib, num_fidelity=args.num_images,
        limit=args.max_logit_error,
        profile=args.profile, log=lambda line: print(line, flush=True))
    text = markdown(report)
    write_text_atomic(out / "runtime_compare.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "runtime_compare.md", text)
    print(text)


if __name__ == "__main__":
    run_main(main, modern_stack=True)
