"""msame-compatible offline inference on any runtime.

    python3 convmixer_infer.py --model ./convmixer_1536_20.onnx --input ./prep_image_bs1 \\
        --output ./result/outputs_bs1_om --outfmt TXT

msame's flags keep msame's meaning: --model, --input (a folder of .bin files, or a comma-separated list),
--output, --outfmt TXT|BIN, --loop (repeats for a single-file input, 1..100), --device. It writes what
msame writes: ``<output>/<YYYYmmdd_HHMMSS>/<input name>_output_0.txt|.bin`` (TXT: one row per image, each
value followed by one space, 6 significant digits; BIN: raw float32) and msame's log lines on stdout.
Beside the timestamp folder: ``<timestamp>_summary.json`` (latency and throughput) and
``<timestamp>_latency_ms.tsv`` (one line per finished file: the resume record).

Options beside msame's: --backend auto|onnxruntime|openvino|torch|msame|ais_bench, --threads,
--precision fp32|bf16|int8, --calib DIR (int8 calibration images), --resume latest|FOLDER.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from convmixer_suite import msame_log
from convmixer_suite.backends import (BACKEND_NAMES, IMAGE_BYTES, IMAGE_SHAPE, PRECISIONS, ToolBackend,
                                      create_backend)
from convmixer_suite.cli import UserError, atomic_path, run_main

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
TIMESTAMP_RE = re.compile(r"^\d{7,8}_\d")          # msame's two forms: 20210723_145039, 2022516_3_8_36_123456
OUTPUT_SUFFIX = "_output_0"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=".onnx (onnxruntime, openvino), .om (msame, ais_bench) "
                   "or the checkpoint .pth/.pth.tar/.safetensors (torch)")
    p.add_argument("--input", required=True, help="a folder of .bin batches, or a comma-separated list of .bin files")
    p.add_argument("--output", required=True, help="parent folder; each run writes a <YYYYmmdd_HHMMSS> folder in it")
    p.add_argument("--outfmt", default="TXT", type=str.upper, choices=("TXT", "BIN"))
    p.add_argument("--loop", default=1, type=int, help="runs of a single-file input, for timing (1..100)")
    p.add_argument("--device", default=None, help="an NPU id for msame/ais_bench; cpu (default), cuda:N or "
                   "tensorrt:N for onnxruntime; cuda:N for torch; gpu.N for openvino")
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKEND_NAMES,
                   help="auto: msame for an .om when msame is on PATH; openvino for bf16/int8 when "
                        "installed; else onnxruntime")
    p.add_argument("--threads", default=None, type=int, help="intra-op threads (default: the runtime's own)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--calib", default=None, help="folder of calibration images for --precision int8")
    p.add_argument("--resume", default=None, metavar="latest|FOLDER",
                   help="continue an interrupted run in its timestamp folder (latest: the newest one under "
                        "--output, or a new run when there is none), skipping finished files")
    args = p.parse_args(argv)
    if not 1 <= args.loop <= 100:
        p.error(f"--loop {args.loop}: must be 1..100, as in msame")
    return args


def list_inputs(spec: str):
    """(sorted .bin files, absolute input as recorded in the summary, True when it was a folder)."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".bin" and p.is_file())
        if not files:
            raise UserError(f"{path}: no .bin files in this folder (make them with convmixer_preprocess.py)")
        return files, str(path.resolve()), True
    files = [Path(part) for part in spec.split(",") if part]
    for f in files:
        if not f.is_file():
            raise UserError(f"{f}: input file not found")
    if not files:
        raise UserError(f"--input {spec!r}: no input given")
    return files, ",".join(str(f.resolve()) for f in files), False


def images_in_file(path: Path, batch_size) -> int:
    """How many 3x224x224 float32 images a .bin holds; refuses a partial image or a wrong batch."""
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise UserError(f"{path}: {size} bytes is not a whole number of 3x224x224 float32 images "
                        f"({IMAGE_BYTES} bytes each)")
    n = size // IMAGE_BYTES
    if batch_size and n != batch_size:
        raise UserError(f"{path}: {size} bytes holds {n} images, but the model takes batches of "
                        f"{batch_size} ({batch_size * IMAGE_BYTES} bytes)")
    return n


class RunFolder:
    """One run's timestamp folder plus its ``<timestamp>_latency_ms.tsv`` record beside it.

    The record's first line names the model, backend, precision and format; then one
    ``<input file>\\t<ms>`` line per finished file, appended after its output was renamed into place.
    A resumed run checks the first line, skips files whose output exists and reuses their times.
    """

    def __init__(self, folder: Path, identity: str, outfmt: str):
        self.folder = folder
        self.identity = identity
        self.suffix = f"{OUTPUT_SUFFIX}.{outfmt.lower()}"
        self.record_path = folder.with_name(folder.name + "_latency_ms.tsv")
        self.summary_path = folder.with_name(folder.name + "_summary.json")

    def output_path(self, input_path: Path) -> Path:
        return self.folder / (input_path.stem + self.suffix)

    def is_done(self, input_path: Path) -> bool:
        return self.output_path(input_path).is_file()

    def earlier_latencies_ms(self) -> dict:
        if not self.record_path.is_file():
            return {}
        lines = self.record_path.read_text().splitlines()
        if lines and lines[0] != self.identity:
            raise UserError(f"{self.folder}: made by a different run ({lines[0].lstrip('# ')}); "
                            f"remove it or run without --resume")
        return {name: float(ms) for name, ms in (line.split("\t") for line in lines[1:] if "\t" in line)}

    def start(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.record_path.is_file():
            self.record_path.write_text(self.identity + "\n")

    def record(self, input_path: Path, latency_ms: float):
        with open(self.record_path, "a") as f:
            f.write(f"{input_path.name}\t{latency_ms:.4f}\n")


def new_timestamp_folder(output: Path) -> Path:
    """``<output>/<YYYYmmdd_HHMMSS>``, waiting for the next second if that name is taken."""
    while True:
        folder = output / time.strftime(TIMESTAMP_FORMAT)
        if not folder.exists():
            return folder
        time.sleep(0.2)


def choose_run_folder(output: Path, resume) -> Path:
    if resume is None:
        return new_timestamp_folder(output)
    if resume == "latest":
        earlier = sorted(p for p in output.glob("*") if p.is_dir() and TIMESTAMP_RE.match(p.name)) \
            if output.is_dir() else []
        return max(earlier, key=lambda p: p.stat().st_mtime) if earlier else new_timestamp_folder(output)
    folder = Path(resume) if Path(resume).is_dir() else output / resume
    if not folder.is_dir():
        raise UserError(f"--resume {resume}: no such run folder (looked for {folder})")
    return folder


def write_logits(path: Path, logits: np.ndarray, outfmt: str):
    """msame's output file, written under a temporary name and renamed."""
    rows = np.asarray(logits, dtype=np.float32).reshape(len(logits), -1)
    with atomic_path(path) as tmp:
        if outfmt == "BIN":
            rows.astype("<f4").tofile(tmp)
        else:
            np.savetxt(tmp, rows, fmt="%g ", delimiter="", newline="\n")


def run_in_process(backend, todo, run: RunFolder, outfmt: str, loop: int) -> list:
    """Run each batch file through the backend, timing model execution only. Returns latencies (ms)."""
    latencies = []
    for path in tqdm(todo, desc="inference", unit="batch", file=sys.stderr, dynamic_ncols=True):
        print(msame_log.start_line(path), flush=True)
        batch = np.fromfile(path, dtype=np.float32).reshape(-1, *IMAGE_SHAPE)
        for _ in range(loop):
            started = time.perf_counter()
            logits = backend.predict(batch)
            latency_ms = (time.perf_counter() - started) * 1000.0
            latencies.append(latency_ms)
            print(msame_log.time_line(latency_ms), flush=True)
        write_logits(run.output_path(path), logits, outfmt)
        run.record(path, latency_ms)
    return latencies


def tool_input(todo, input_spec, whole_folder: bool, tmp: Path) -> str:
    """What to hand the tool: the user's folder when every file in it is a batch to run, else a folder
    of links to the batches to run. msame takes every file of a folder whose name does not start with a
    dot as an input, so finished files or anything else there must not be in it; a comma list of
    thousands of paths would overflow the command line."""
    visible = {p for p in Path(input_spec).iterdir() if not p.name.startswith(".")} if whole_folder else None
    if whole_folder and visible == set(todo):
        return input_spec
    if len(todo) == 1:
        return str(todo[0])
    links = tmp / "in"
    links.mkdir()
    for path in todo:
        (links / path.name).symlink_to(path.resolve())
    return str(links)


def run_tool(backend: ToolBackend, todo, run: RunFolder, args, whole_folder: bool) -> list:
    """Run the real msame/ais_bench on the unfinished files, echo its log (minus its closing averages,
    printed once for the whole run by main), and move its outputs into the run folder under msame's names."""
    run.folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=run.folder.parent, prefix=f".{backend.name}_") as tmp:
        tmp = Path(tmp)
        loop = args.loop if len(todo) == 1 else 1
        extra = {"output_dirname": "run"} if backend.name == "ais_bench" else {}
        argv = backend.command(tool_input(todo, args.input, whole_folder, tmp), tmp / "out",
                               args.outfmt, loop, **extra)
        print(f"[INFO] running: {' '.join(argv)}", flush=True)
        log = echo_tool_log(argv)
        produced = {tool_output_stem(p, backend.name): p for p in (tmp / "out").glob("*/*")
                    if p.suffix.lower() == f".{args.outfmt.lower()}"}
        missing = [p.name for p in todo if p.stem not in produced]
        if missing:
            raise UserError(f"{backend.name} wrote no output for {len(missing)} input(s), e.g. {missing[0]}")
        latencies = tool_latencies_ms(backend.name, log, tmp / "out", len(todo) * loop)
        for i, path in enumerate(todo):
            os.replace(produced[path.stem], run.output_path(path))
            run.record(path, latencies[i * loop + loop - 1])
        return latencies


def echo_tool_log(argv) -> str:
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    except OSError as exc:
        raise UserError(f"{argv[0]}: cannot run it: {exc.strerror}") from None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if not line.startswith("Inference average time"):
            print(line, end="", flush=True)
    if proc.wait() != 0:
        raise UserError(f"{argv[0]} failed with exit status {proc.returncode} (its log is above)")
    return "".join(lines)


def tool_output_stem(path: Path, tool: str) -> str:
    """The input's stem from a tool's output name: msame ``x_output_0.txt``, ais_bench ``x_0.txt``."""
    marker = OUTPUT_SUFFIX if tool == "msame" else "_0"
    return path.stem[: -len(marker)] if path.stem.endswith(marker) else path.stem


def tool_latencies_ms(tool: str, log: str, out: Path, expected: int) -> list:
    """Per-run latencies from msame's log; ais_bench reports only a mean (its summary JSON), used for each."""
    if tool == "msame":
        latencies = msame_log.parse_latencies_ms(log)
        if len(latencies) != expected:
            raise UserError(f"msame's log has {len(latencies)} 'Inference time' lines for {expected} runs")
        return latencies
    summaries = sorted(out.glob("*summary.json")) + sorted(out.glob("*/sumary.json"))
    if not summaries:
        raise UserError(f"ais_bench wrote no summary JSON in {out}")
    mean_ms = float(json.loads(summaries[0].read_text())["NPU_compute_time"]["mean"])
    print(f"[INFO] ais_bench reports only its mean compute time ({mean_ms:.3f} ms); it is used for each file")
    return [mean_ms] * expected


def run_identity(args, backend) -> str:
    return (f"# model={Path(args.model).resolve()} backend={backend.name} precision={backend.precision} "
            f"outfmt={args.outfmt}")


def main(argv=None):
    args = parse_args(argv)
    inputs, input_record, is_folder = list_inputs(args.input)
    backend = create_backend(args.backend, args.model, threads=args.threads, precision=args.precision,
                             device=args.device, calib_dir=args.calib)
    images = sum(images_in_file(p, backend.batch_size) for p in inputs)
    batch_size = backend.batch_size or images_in_file(inputs[0], None)
    print(f"[INFO] backend {backend.describe()}; {len(inputs)} file(s), {images} image(s)", flush=True)

    output = Path(args.output)
    run = RunFolder(choose_run_folder(output, args.resume), run_identity(args, backend), args.outfmt)
    earlier = run.earlier_latencies_ms()
    todo = [p for p in inputs if not run.is_done(p)]
    if len(todo) < len(inputs):
        print(f"[INFO] resuming {run.folder}: {len(inputs) - len(todo)} of {len(inputs)} file(s) already done",
              flush=True)
    run.start()
    single = len(inputs) == 1 and not is_folder
    loop = args.loop if single else 1
    if args.loop > 1 and not single:
        print("[INFO] --loop applies to a single-file input only (as in msame); ignored", flush=True)
    if isinstance(backend, ToolBackend):
        new = run_tool(backend, todo, run, args, whole_folder=is_folder and len(todo) == len(inputs)) if todo else []
    else:
        new = run_in_process(backend, todo, run, args.outfmt, loop)

    latencies = [earlier[p.name] for p in inputs if p not in todo and p.name in earlier] + new
    if single:
        print(msame_log.single_file_average_line(latencies))
    else:
        print("\n".join(msame_log.folder_average_lines(latencies)))
    summary = msame_log.build_summary(
        latencies, batch_size=batch_size, backend_name=backend.name, backend_version=backend.version,
        threads=args.threads, precision=backend.precision, model=args.model, input_path=input_record,
        output_dir=run.folder, device=args.device, num_files=len(inputs), num_images=images,
        files_run_now=len(todo), outfmt=args.outfmt, loop=loop)
    msame_log.write_summary(run.summary_path, summary)
    print(f"[INFO] outputs in {run.folder}; summary {run.summary_path}", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
