"""Where an msame-style run puts its files: msame's own layout in ``--output``, our records beside it.

``--output`` holds nothing but msame's timestamp folders, and each of those nothing but the
``<input name>_output_0.txt|bin`` files, because the guide's own scorer takes ``os.listdir(output)[0]`` as the
results folder and parses every name in it (docs/formats.md). Everything else a run keeps lives in the sibling
folder ``<output>.runs/``:
- ``<timestamp>_summary.json``: latency and throughput, the backend and the input folder (whose
  ``.manifest.json`` our scorer finds through it);
- ``<timestamp>_latency_ms.tsv``: the resume record, its first line naming the run, then one
  ``<input file>\\t<ms>`` line per finished file;
- ``<timestamp>.partial/``: files being written, renamed into the timestamp folder once complete.
"""
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from convmixer_suite.util.errors import UserError

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
TIMESTAMP_RE = re.compile(r"^\d{7,8}_\d")          # msame's two forms: 20210723_145039, 2022516_3_8_36_123456
OUTPUT_SUFFIX = "_output_0"
RECORDS_SUFFIX = ".runs"
IDENTITY_PREFIX = "# run "  # the resume record's first line: this and the run's identity as JSON
# How to start over, in the words of both ways in: the runner's own flag, and the guide's wrapper's (which passes
# --resume latest itself, so its user never typed --resume).
START_OVER = ("remove it, or start a new run (convmixer_infer.py: without --resume; "
              "test/eval_acc_perf.sh: --fresh=true)")


def differing_keys(recorded: dict, identity: dict) -> str:
    """"" when ``recorded`` (as read back from JSON) is the run ``identity`` describes, else e.g.
    "device differs" or "threads, batch_size differ"."""
    identity = json.loads(json.dumps(identity))  # as it reads back (tuples become lists)
    differing = [key for key in identity if recorded.get(key) != identity[key]]
    return f"{', '.join(differing)} differ{'s' if len(differing) == 1 else ''}" if differing else ""


def records_folder(output) -> Path:
    """``<output>.runs``: the sibling of an msame output folder that holds our records of its runs."""
    output = Path(os.path.abspath(output))
    return output.with_name(output.name + RECORDS_SUFFIX)


def summary_path_of(results_folder) -> Path:
    """The summary JSON of the run whose outputs are in ``results_folder`` (a timestamp folder)."""
    results_folder = Path(os.path.abspath(results_folder))
    return records_folder(results_folder.parent) / f"{results_folder.name}_summary.json"


class RunFolder:
    """One run: its timestamp folder in ``--output`` and its records in ``<output>.runs/``.

    A resumed run checks the record's first line (the run's identity: ``RunConfig.identity`` and the output
    format), skips files whose output exists and reuses their times.
    """

    def __init__(self, folder: Path, identity: dict, outfmt: str):
        self.folder = Path(folder)
        self.identity = identity
        self.identity_line = IDENTITY_PREFIX + json.dumps(identity, sort_keys=True)
        self.suffix = f"{OUTPUT_SUFFIX}.{outfmt.lower()}"
        self.records = records_folder(self.folder.parent)
        self.record_path = self.records / f"{self.folder.name}_latency_ms.tsv"
        self.summary_path = summary_path_of(self.folder)
        self.scratch = self.records / f"{self.folder.name}.partial"

    def output_path(self, input_path: Path) -> Path:
        return self.folder / (input_path.stem + self.suffix)

    def is_done(self, input_path: Path) -> bool:
        return self.output_path(input_path).is_file()

    def earlier_latencies_ms(self) -> dict:
        """{input file name: ms} of the files an earlier, interrupted run of this same run finished."""
        if not self.record_path.is_file():
            if self.folder.is_dir() and any(self.folder.iterdir()):
                raise UserError(f"{self.folder}: holds outputs but no run record ({self.record_path}), so "
                                f"it cannot be checked to be this run's; {START_OVER}")
            return {}
        lines = self.record_path.read_text().splitlines()
        if lines and lines[0] != self.identity_line:
            raise UserError(f"{self.folder}: made by a different run ({self.differences(lines[0])}); {START_OVER}")
        return {name: float(ms) for name, ms in (line.split("\t") for line in lines[1:] if "\t" in line)}

    def differences(self, recorded_line: str) -> str:
        """What differs between this run and the one a record's first line names."""
        try:
            recorded = json.loads(recorded_line[len(IDENTITY_PREFIX):])
        except ValueError:
            recorded = None
        if not recorded_line.startswith(IDENTITY_PREFIX) or not isinstance(recorded, dict):
            return "its record is of an older format"
        return differing_keys(recorded, self.identity)

    def start(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        if not self.record_path.is_file():
            self.record_path.write_text(self.identity_line + "\n")

    def finish(self):
        shutil.rmtree(self.scratch, ignore_errors=True)

    def record(self, input_path: Path, latency_ms: float):
        with open(self.record_path, "a") as f:
            f.write(f"{input_path.name}\t{latency_ms:.4f}\n")

    def place_output(self, input_path: Path, written: Path):
        """Move a complete output file (written in ``scratch``) into the timestamp folder."""
        os.replace(written, self.output_path(input_path))

    def write_logits(self, input_path: Path, logits: np.ndarray, outfmt: str):
        """msame's output file for ``input_path``: TXT rows of values each followed by a space, 6
        significant digits, or BIN raw float32; written in ``scratch`` and then moved into place."""
        rows = np.asarray(logits, dtype=np.float32).reshape(len(logits), -1)
        tmp = self.scratch / self.output_path(input_path).name
        if outfmt == "BIN":
            rows.astype("<f4").tofile(tmp)
        else:
            np.savetxt(tmp, rows, fmt="%g ", delimiter="", newline="\n")
        self.place_output(input_path, tmp)


def new_timestamp_folder(output: Path) -> Path:
    """``<output>/<YYYYmmdd_HHMMSS>``, waiting for the next second if that name is taken."""
    while True:
        folder = output / time.strftime(TIMESTAMP_FORMAT)
        if not folder.exists():
            return folder
        time.sleep(0.2)


def choose_run_folder(output: Path, resume) -> Path:
    """A new timestamp folder, or with ``resume`` the newest one (``latest``) or the one named."""
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
