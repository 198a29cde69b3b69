"""The Ascend NPU's tools as backends: msame and its successor ais_bench, run on an .om, and running them on a
run's batch files in msame's layout.

``predict`` runs the tool on one temporary .bin. convmixer_infer.py hands it whole input folders instead
(``run_batch_files``): the tool writes into a scratch folder of the run's records (never into ``--output``, which
must hold only msame's timestamp folders); its outputs are then moved into the run's timestamp folder under
msame's names, and its per-file times go into the run's record, so a resumed or mixed run looks like one msame
run.
"""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from convmixer_suite.guide import msame_log
from convmixer_suite.guide.run_folder import OUTPUT_SUFFIX, RunFolder
from convmixer_suite.runtimes.base import Backend, check_batch
from convmixer_suite.util.errors import NotAvailable, SettingError, ToolError, UserError


class ToolBackend(Backend):
    """An external Ascend tool run on an .om."""
    supported_devices = ("cpu", "npu")
    install_hint = ""
    reads_dot_files = True  # whether the tool takes a file whose name starts with a dot as an input

    def _load(self):
        if self.threads:
            raise SettingError("threads", f"does not apply to the {self.name} backend (the NPU runs the model)")
        if ".om" not in self.model_path.name:
            raise UserError(f"{self.model_path}: the {self.name} backend needs an .om model "
                            f"(compile one with atc, see test/pth2om.sh)")
        self.executable = self.find_tool()
        match = re.search(r"_bs(\d+)\.om$", self.model_path.name)
        self.batch_size = int(match.group(1)) if match else None

    def find_tool(self) -> list:
        raise NotImplementedError

    def command(self, input_path, output_dir, outfmt="TXT", loop=1) -> list:
        raise NotImplementedError

    def device_args(self) -> list:
        return ["--device", str(self.device_index)] if self.device_kind == "npu" else []

    def predict(self, batch):
        batch = check_batch(batch)
        with tempfile.TemporaryDirectory(prefix=f"{self.name}_") as tmp:
            tmp = Path(tmp)
            (tmp / "in").mkdir()
            batch.tofile(tmp / "in" / "input_00000.bin")
            result = subprocess.run(self.command(tmp / "in", tmp / "out", outfmt="BIN"), text=True,
                                    capture_output=True)
            outputs = sorted((tmp / "out").glob("*/*.bin"))
            if result.returncode != 0 or not outputs:
                raise ToolError(f"{self.name} failed (exit {result.returncode}): "
                                f"{(result.stderr or result.stdout).strip()[-300:]}")
            return np.fromfile(outputs[0], dtype=np.float32).reshape(len(batch), -1)


class MsameBackend(ToolBackend):
    name = "msame"
    reads_dot_files = False  # msame's folder scan passes over names that start with a dot (docs/formats.md)
    install_hint = ("msame is not installed (not on PATH); it is built from github.com/Ascend/tools "
                    "(msame) on a machine with the Ascend CANN toolkit and an NPU. Without an NPU use "
                    "--backend onnxruntime with the .onnx model")

    def find_tool(self):
        path = shutil.which("msame")
        if not path:
            raise NotAvailable(self.install_hint)
        self.version = f"external tool {path}"
        return [path]

    def command(self, input_path, output_dir, outfmt="TXT", loop=1):
        argv = self.executable + ["--model", str(self.model_path), "--input", str(input_path),
                                  "--output", str(output_dir), "--outfmt", outfmt]
        if loop != 1:
            argv += ["--loop", str(loop)]
        return argv + self.device_args()


class AisBenchBackend(ToolBackend):
    """ais_bench, msame's successor, run as ``python3 -m ais_bench`` (the inference tool's module)."""
    name = "ais_bench"
    reads_dot_files = True  # no documented exception: the manifest of a preprocessed folder would be an input
    install_hint = ("ais_bench is not installed: install its aclruntime and ais_bench wheels from "
                    "github.com/Ascend/tools (ais-bench_workload/tool/ais_bench) on a machine with the "
                    "Ascend CANN toolkit and an NPU. Without an NPU use --backend onnxruntime")

    def find_tool(self):
        if importlib.util.find_spec("ais_bench") is None:
            raise NotAvailable(self.install_hint)
        self.version = "external tool python3 -m ais_bench"
        return [sys.executable, "-m", "ais_bench"]

    def command(self, input_path, output_dir, outfmt="TXT", loop=1, output_dirname=None):
        argv = self.executable + ["--model", str(self.model_path), "--input", str(input_path),
                                  "--output", str(output_dir), "--outfmt", outfmt, "--loop", str(loop)]
        if output_dirname:
            argv += ["--output_dirname", output_dirname]
        if self.batch_size:
            argv += ["--batchsize", str(self.batch_size)]
        return argv + self.device_args()


def run_batch_files(backend: ToolBackend, todo, run: RunFolder, *, input_spec: str, whole_folder: bool,
                    outfmt: str, loop: int, log=print) -> list:
    """Run the tool on the batch files ``todo``, echo its log through ``log`` (minus its closing averages, which
    the caller prints once for the whole run), move its outputs into place and return the latencies (ms)."""
    with tempfile.TemporaryDirectory(dir=run.scratch, prefix=f"{backend.name}_") as tmp:
        tmp = Path(tmp)
        extra = {"output_dirname": "run"} if backend.name == "ais_bench" else {}
        given = tool_input(todo, input_spec, whole_folder, tmp, backend.reads_dot_files)
        argv = backend.command(given, tmp / "out", outfmt, loop, **extra)
        log(f"[INFO] running: {' '.join(argv)}")
        tool_log = echo_tool_log(argv, log)
        produced = {tool_output_stem(p, backend.name): p for p in (tmp / "out").glob("*/*")
                    if p.suffix.lower() == f".{outfmt.lower()}"}
        missing = [p.name for p in todo if p.stem not in produced]
        if missing:
            raise ToolError(f"{backend.name} wrote no output for {len(missing)} input(s), e.g. {missing[0]}")
        latencies = tool_latencies_ms(backend.name, tool_log, tmp / "out", len(todo) * loop, log)
        for i, path in enumerate(todo):
            run.place_output(path, produced[path.stem])
            run.record(path, latencies[i * loop + loop - 1])
        return latencies


def tool_input(todo, input_spec, whole_folder: bool, tmp: Path, reads_dot_files: bool) -> str:
    """What to hand the tool: the user's folder when every file in it is a batch to run, else a folder
    of links to the batches to run. The tool takes every file of a folder as an input (msame: every name
    that does not start with a dot), so finished files or anything else there, the preprocessing's
    .manifest.json for ais_bench, must not be in it; a comma list of thousands of paths would overflow the
    command line."""
    visible = ({p for p in Path(input_spec).iterdir() if reads_dot_files or not p.name.startswith(".")}
               if whole_folder else None)
    if whole_folder and visible == set(todo):
        return input_spec
    if len(todo) == 1:
        return str(todo[0])
    links = tmp / "in"
    links.mkdir()
    for path in todo:
        (links / path.name).symlink_to(path.resolve())
    return str(links)


def echo_tool_log(argv, log) -> str:
    """Run the tool, passing its log lines on except its averages; returns the whole log."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    except OSError as exc:
        raise UserError(f"{argv[0]}: cannot run it: {exc.strerror}") from exc
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if not msame_log.is_average_line(line):
            log(line.rstrip("\n"))
    if proc.wait() != 0:
        raise ToolError(f"{argv[0]} failed with exit status {proc.returncode} (its log is above)")
    return "".join(lines)


def tool_output_stem(path: Path, tool: str) -> str:
    """The input's stem from a tool's output name: msame ``x_output_0.txt``, ais_bench ``x_0.txt``."""
    marker = OUTPUT_SUFFIX if tool == "msame" else "_0"
    return path.stem[: -len(marker)] if path.stem.endswith(marker) else path.stem


def tool_latencies_ms(tool: str, tool_log: str, out: Path, expected: int, log) -> list:
    """Per-run latencies from msame's log; ais_bench reports only a mean (its summary JSON), used for each."""
    if tool == "msame":
        latencies = msame_log.parse_latencies_ms(tool_log)
        if len(latencies) != expected:
            raise ToolError(f"msame's log has {len(latencies)} 'Inference time' lines for {expected} runs")
        return latencies
    summaries = sorted(out.glob("*summary.json")) + sorted(out.glob("*/sumary.json"))
    if not summaries:
        raise ToolError(f"ais_bench wrote no summary JSON in {out}")
    mean_ms = float(json.loads(summaries[0].read_text())["NPU_compute_time"]["mean"])
    log(f"[INFO] ais_bench reports only its mean compute time ({mean_ms:.3f} ms); it is used for each file")
    return [mean_ms] * expected
