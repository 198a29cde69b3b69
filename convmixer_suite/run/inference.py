"""msame-compatible offline inference: batch files in, msame's output files, log and our summary out.

``run_inference`` is what convmixer_infer.py runs. It takes a folder of ``.bin`` batches (or a comma list),
runs them on a backend (a runtime in this process, or the real msame/ais_bench through runtimes.ascend), writes
the outputs as msame writes them (run_folder) and returns the latencies and the summary. The caller prints
msame's closing averages from them, last, as msame does.
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from convmixer_suite.precision import fidelity
from convmixer_suite.guide import msame_log
from convmixer_suite.model.data_config import IMAGE_BYTES, IMAGE_SHAPE
from convmixer_suite.util.errors import UserError
from convmixer_suite.precision.cpu_info import host_record
from convmixer_suite.run.config import RunConfig
from convmixer_suite.guide.run_folder import RunFolder, choose_run_folder
from convmixer_suite.guide.scoring import non_finite_message, non_finite_rows
from convmixer_suite.runtimes.ascend import ToolBackend, run_batch_files


@dataclass
class InferenceOptions:
    """convmixer_infer.py's input and output side (msame's flags, then ours); what runs is a RunConfig."""
    input: str
    output: str
    outfmt: str = "TXT"
    loop: int = 1
    resume: str = None
    max_logit_error: float = fidelity.DEFAULT_MAX_LOGIT_ERROR


@dataclass
class InferenceRun:
    latencies_ms: list
    single_file: bool
    run: RunFolder
    summary: dict

    def average_lines(self) -> list:
        """msame's closing lines for this run's input form."""
        if self.single_file:
            return msame_log.single_file_average_lines(self.latencies_ms)
        return msame_log.folder_average_lines(self.latencies_ms)


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


def run_in_process(backend, todo, run: RunFolder, outfmt: str, loop: int, log) -> list:
    """Run each batch file through the backend, timing model execution only. Returns latencies (ms)."""
    latencies = []
    for path in tqdm(todo, desc="inference", unit="batch", file=sys.stderr, dynamic_ncols=True):
        log(msame_log.start_line(path))
        batch = np.fromfile(path, dtype=np.float32).reshape(-1, *IMAGE_SHAPE)
        for _ in range(loop):
            started = time.perf_counter()
            logits = backend.predict(batch)
            latency_ms = (time.perf_counter() - started) * 1000.0
            latencies.append(latency_ms)
            log(msame_log.time_line(latency_ms))
            refuse_non_finite(path, logits)
        run.write_logits(path, logits, outfmt)
        run.record(path, latency_ms)
    return latencies


def refuse_non_finite(path: Path, logits: np.ndarray) -> None:
    """Stop at a batch whose logits hold NaN or infinity (an fp16 overflow, say) before its output is written;
    the outputs of the files before it stay, for --resume."""
    counts = non_finite_rows(logits)
    if counts:
        raise UserError(non_finite_message(str(path), counts, logits.size,
                                           "nothing written for it, and no summary; the outputs of the files "
                                           "before it are kept for --resume latest, with the same model and "
                                           "settings"))


def run_inference(config: RunConfig, opts: InferenceOptions, log=print) -> InferenceRun:
    """Run every unfinished input file and write the summary; ``log`` gets msame's per-file lines."""
    inputs, input_record, is_folder = list_inputs(opts.input)
    backend = config.create_backend(batch_sizes=(images_in_file(inputs[0], None),))
    images = sum(images_in_file(p, backend.batch_size) for p in inputs)
    config = config.with_batch_size(backend.batch_size or images_in_file(inputs[0], None))
    log(f"[INFO] backend {backend.describe()}; {len(inputs)} file(s), {images} image(s)")
    held_out = fidelity.held_out_samples(
        backend, lambda: fidelity.samples_from_batch_files(inputs, backend.input_shape))
    figures = fidelity.gate(backend, held_out, opts.max_logit_error, log)

    identity = {**config.identity(), "outfmt": opts.outfmt}
    run = RunFolder(choose_run_folder(Path(opts.output), opts.resume), identity, opts.outfmt)
    earlier = run.earlier_latencies_ms()
    todo = [p for p in inputs if not run.is_done(p)]
    if len(todo) < len(inputs):
        log(f"[INFO] resuming {run.folder}: {len(inputs) - len(todo)} of {len(inputs)} file(s) already done")
    single = len(inputs) == 1 and not is_folder
    loop = opts.loop if single else 1
    if opts.loop > 1 and not single:
        log("[INFO] --loop applies to a single-file input only (as in msame); ignored")
    log(f"[INFO] outputs in {run.folder}; summary {run.summary_path}")
    run.start()
    if not todo:
        new = []
    elif isinstance(backend, ToolBackend):
        new = run_batch_files(backend, todo, run, input_spec=opts.input,
                              whole_folder=is_folder and len(todo) == len(inputs), outfmt=opts.outfmt, loop=loop,
                              log=log)
    else:
        new = run_in_process(backend, todo, run, opts.outfmt, loop, log)
    run.finish()

    latencies = [earlier[p.name] for p in inputs if p not in todo and p.name in earlier] + new
    summary = msame_log.build_summary(
        latencies, batch_size=config.batch_size, backend_name=backend.name, backend_version=backend.version,
        threads=config.threads, precision=backend.precision, model=config.model, input_path=input_record,
        output_dir=run.folder, device=config.device, num_files=len(inputs), num_images=images,
        files_run_now=len(todo), outfmt=opts.outfmt, loop=loop, fidelity=figures, run_config=config.as_dict(),
        host=host_record(config.device))
    msame_log.write_summary(run.summary_path, summary)
    return InferenceRun(latencies, single, run, summary)
