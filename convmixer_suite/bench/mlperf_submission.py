"""The benchmark's LoadGen runs as an open-division MLPerf Inference submission, in the layout and with the
files the submission checker's v6.1 rules ask for (``tools/submission/submission_checker``; the rules matched
are listed in docs/formats.md):

    open/<submitter>/model_mapping.json        {"<model>": "resnet"}: a ConvMixer counts as ImageNet classification
    open/<submitter>/systems/<system>.json     the host as it reports itself, one system per configuration
    open/<submitter>/src/                      how to run it again: the command, the commit, pinned requirements
    open/<submitter>/results/<system>/<model>/<scenario>/
        performance/run_1/, accuracy/, user.conf (convmixer_suite.bench.loadgen), measurements.json, README.md

A system is a host and a software stack (MLPerf names them ``1xH100_TensorRT``), so each configuration is a
system of its own. What the checker will still reject (a short run's duration, an accuracy run over fewer
images than ImageNet's 50,000, a scenario without an accuracy run) is said in the scenario's README.md and
returned by ``write_submission``.
"""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from convmixer_suite.bench import host_info
from convmixer_suite.bench import mlperf_layout as layout
from convmixer_suite.bench.configs import CONFIGS
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import write_text_atomic

DIVISION = "open"
CHECKER_VERSION = "v6.1"
MLPERF_BENCHMARK = "resnet"  # the benchmark a ConvMixer's runs are mapped onto (model_mapping.json)
IMAGENET_VALIDATION_IMAGES = 50_000  # the checker's dataset size for resnet: an accuracy run must cover it
MLPERF_MIN_DURATION_MS = 600_000
DEFAULT_SUBMITTER = "ConvMixerSuite"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
FRAMEWORKS = {"torch": ("PyTorch", "torch"), "onnxruntime": ("ONNX Runtime", "onnxruntime"),
              "openvino": ("OpenVINO", "openvino")}
# The distributions a run depends on, pinned in src/requirements.txt at the versions installed.
DISTRIBUTIONS = ("torch", "onnx", "onnxruntime", "numpy", "Pillow", "openvino", "nncf", "mlcommons-loadgen")
NOT_APPLICABLE = "N/A"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def check_name(name: str, flag: str) -> str:
    """A submitter or system name: a folder name of letters, digits, ``.``, ``_`` and ``-``."""
    if not NAME_RE.match(name or ""):
        raise UserError(f"{flag} {name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    return name


def submission_root(out, submitter: str) -> Path:
    return Path(out) / DIVISION / submitter


def results_root(out, submitter: str) -> Path:
    return submission_root(out, submitter) / "results"


def installed_version(distribution: str) -> "str | None":
    import importlib.metadata  # Python 3.8 and later; imported here so convmixer-benchmark starts on 3.7 to say so
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def framework(config: str) -> str:
    name, distribution = FRAMEWORKS[CONFIGS[config][0]]
    return f"{name} {installed_version(distribution) or 'unknown version'}"


def other_software(config: str) -> str:
    own = FRAMEWORKS[CONFIGS[config][0]][1]
    versions = {d: installed_version(d) for d in DISTRIBUTIONS if d != own}
    pinned = [f"{d} {v}" for d, v in versions.items() if v]
    return f"Python {sys.version.split()[0]}, " + ", ".join(pinned)


def storage() -> tuple:
    """(capacity, type) of the host's disks as /sys/block reports them."""
    disks = host_info.block_devices()
    if not disks:
        return "not reported by the host", "not reported by the host"
    capacity = ", ".join(f"{name} {size:.0f} GiB" if size else name for name, size, _ in disks)
    kinds = {"virtual disk" if host_info.virtualized() else "HDD" if rotational else "SSD"
             for _, _, rotational in disks}
    return capacity, ", ".join(sorted(kinds))


def system_description(submitter: str, hardware: str, config: str, machine: dict) -> dict:
    """systems/<system>.json: every field the checker requires, filled from what the host reports; the
    accelerator fields say there is none (the benchmark runs on the CPU)."""
    packages, cores = host_info.sockets_and_cores()
    mhz, memory_gib = host_info.frequency_mhz(), host_info.memory_gib()
    storage_capacity, storage_type = storage()
    nics = host_info.network_cards()
    unknown = "not reported by the host"
    return {
        "division": DIVISION, "submitter": submitter, "status": "available",
        "system_name": f"{hardware} ({config})", "system_type": "datacenter,edge",
        "system_type_detail": "virtual machine" if host_info.virtualized() else "bare-metal host",
        "number_of_nodes": "1",
        "host_processor_model_name": machine.get("model_name") or unknown,
        "host_processors_per_node": str(packages), "host_processor_core_count": str(cores),
        "host_processor_frequency": f"{mhz:.0f} MHz" if mhz else unknown,
        "host_processor_caches": ", ".join(host_info.caches()) or unknown,
        "host_processor_interconnect": NOT_APPLICABLE if packages == 1 else unknown,
        "host_memory_capacity": f"{memory_gib:.0f} GiB" if memory_gib else unknown,
        "host_memory_configuration": (f"{memory_gib:.1f} GiB as /proc/meminfo reports it; modules not visible"
                                      if memory_gib else unknown),
        "host_storage_capacity": storage_capacity, "host_storage_type": storage_type,
        "host_networking": "not used: one node, LoadGen in the same process",
        "host_networking_topology": NOT_APPLICABLE, "host_network_card_count": str(len(nics)),
        "accelerators_per_node": "0", "accelerator_model_name": NOT_APPLICABLE,
        "accelerator_memory_capacity": NOT_APPLICABLE, "accelerator_memory_configuration": NOT_APPLICABLE,
        "accelerator_frequency": NOT_APPLICABLE, "accelerator_host_interconnect": NOT_APPLICABLE,
        "accelerator_interconnect": NOT_APPLICABLE, "accelerator_interconnect_topology": NOT_APPLICABLE,
        "accelerator_on-chip_memories": NOT_APPLICABLE,
        "cooling": unknown,
        "framework": framework(config), "operating_system": host_info.operating_system(),
        "other_software_stack": other_software(config),
        "hw_notes": f"{machine.get('cpu', '')}",
        "sw_notes": f"convmixer-benchmark of the ConvMixer suite, configuration {config}",
    }


def weight_transformation(config: str, run: dict) -> str:
    backend, precision = CONFIGS[config]
    if precision == "int8":
        quantizer = "NNCF" if backend == "openvino" else "ONNX Runtime quantize_static (QDQ)"
        return f"post-training quantization to int8 with {quantizer}, calibrated on {run.get('num_calib')} images"
    if precision == "bf16":
        return "none in the file: OpenVINO's CPU plugin runs the fp32 weights in bf16 (inference precision hint)"
    return "none" if backend == "torch" else "none: exported to ONNX, weights unchanged"


def measurements(config: str, run: dict, weights: str) -> dict:
    """measurements.json: the five fields the checker requires, from the run's configuration."""
    return {"input_data_types": "fp32", "retraining": "no", "starting_weights_filename": weights,
            "weight_data_types": CONFIGS[config][1], "weight_transformations": weight_transformation(config, run)}


def checker_gaps(performance: "dict | None", accuracy: "dict | None") -> list:
    """What MLPerf's checker will reject in one scenario's results, in words (nothing: an empty list)."""
    gaps = []
    if performance is None:
        gaps.append("no performance run: run with --scenarios")
    elif performance["settings"]["min_duration_ms"] < MLPERF_MIN_DURATION_MS:
        gaps.append(f"SHORT RUN: min_duration {performance['settings']['min_duration_ms']} ms, below the "
                    f"{MLPERF_MIN_DURATION_MS} ms MLPerf's rules ask; the checker rejects its duration "
                    "(--submission-durations runs MLPerf's minimums)")
    if accuracy is None:
        gaps.append("no accuracy run: the checker needs one (--loadgen-accuracy --images DIR --labels FILE)")
    elif accuracy["num_images"] != IMAGENET_VALIDATION_IMAGES:
        gaps.append(f"the accuracy run covered {accuracy['num_images']} images, not ImageNet's "
                    f"{IMAGENET_VALIDATION_IMAGES} validation images: the checker's dataset size check fails")
    return gaps


def scenario_readme(model, scenario, config, system, weights, performance, accuracy, gaps) -> str:
    lines = [f"# {model}, {scenario}, on {system}", "",
             f"Open division; `{model}` is mapped onto MLPerf's `{MLPERF_BENCHMARK}` benchmark "
             "(`model_mapping.json`). How to run it again: `src/README.md` of this submitter.", "",
             f"- configuration: {config} (backend {CONFIGS[config][0]}, precision {CONFIGS[config][1]})",
             f"- weights: {weights}"]
    if performance is not None:
        figures = "; ".join(f"{k}: {v}" for k, v in performance["figures"].items())
        lines.append(f"- performance: Result is {performance['result']}; {figures}; "
                     f"min_duration {performance['settings']['min_duration_ms']} ms")
    if accuracy is not None:
        lines.append(f"- accuracy: {accuracy['accuracy_line']} ({accuracy['num_images']} images)")
    lines += ["", "What MLPerf's submission checker will reject here:" if gaps else
              "Nothing that MLPerf's submission checker is known to reject.", ""]
    lines += [f"- {gap}" for gap in gaps]
    return "\n".join(lines).rstrip() + "\n"


def project_commit() -> str:
    """The git commit of the checkout the benchmark ran from, ``-dirty`` with uncommitted changes (``unknown``
    outside a checkout)."""
    try:
        found = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"],
                               cwd=Path(__file__).resolve().parent,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 else "unknown"


def write_src(root: Path, argv) -> None:
    """src/: the command that made this submission, the commit it ran from, the pinned requirements."""
    command = shlex.join(["convmixer-benchmark", *map(str, argv)])
    versions = {d: installed_version(d) for d in DISTRIBUTIONS}
    pins = [f"{d}=={v}" for d, v in versions.items() if v]
    if any("+cpu" in pin for pin in pins):  # PyTorch's CPU builds come from its own index
        pins.insert(0, f"--extra-index-url {TORCH_CPU_INDEX}")
    write_file(root / "src" / "requirements.txt", "\n".join(pins) + "\n")
    write_file(root / "src" / "README.md", "\n".join([
        "# How these results were made", "",
        "With the ConvMixer suite (its `convmixer-benchmark`; MLPerf LoadGen runs every configuration), at commit "
        f"`{project_commit()}`:", "",
        "    pip install -r src/requirements.txt   # the versions this run used",
        "    pip install --no-deps .                # the suite at that commit, from its checkout", f"    {command}", ""]))


def write_submission(out, submitter: str, hardware: str, model: str, machine: dict, run_configs: dict,
                     weights: str, performance: list, accuracy: list, argv) -> dict:
    """Every file of the submission beside the LoadGen logs already under its results folder (systems named
    ``hardware`` and the configuration, as the harness names them); ``performance`` and ``accuracy``: the
    harness's result dicts. Returns {"<system>/<model>/<scenario>": [what the checker will reject there]}."""
    root = submission_root(out, submitter)
    systems = {config: layout.system_name(hardware, config) for config in run_configs}
    write_file(root / "model_mapping.json", json.dumps({model: MLPERF_BENCHMARK}, indent=1) + "\n")
    write_src(root, argv)
    runs = {(r["config"], r["scenario"]): {"performance": r} for r in performance}
    for r in accuracy:
        runs.setdefault((r["config"], r["scenario"]), {})["accuracy"] = r
    gaps = {}
    for config in sorted({config for config, _ in runs}):
        description = system_description(submitter, hardware, config, machine)
        write_file(root / "systems" / f"{systems[config]}.json", json.dumps(description, indent=1) + "\n")
    for (config, scenario), found in runs.items():
        folder = layout.scenario_dir(root / "results", systems[config], model, scenario)
        write_file(folder / "measurements.json",
                          json.dumps(measurements(config, run_configs[config], weights), indent=1) + "\n")
        missing = checker_gaps(found.get("performance"), found.get("accuracy"))
        write_file(folder / "README.md", scenario_readme(
            model, scenario, config, systems[config], weights, found.get("performance"), found.get("accuracy"),
            missing))
        gaps[f"{systems[config]}/{model}/{scenario}"] = missing
    return gaps
