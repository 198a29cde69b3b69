"""The streaming evaluation as a user runs it, in a process of its own (``python3 -m
convmixer_suite.commands.stream_eval``), for the checks that time the whole command or keep Ray out of the
caller's process. What it did is read from the files it writes, never from its output."""
import json
import subprocess
import sys
import time
from pathlib import Path

from convmixer_suite.util.errors import UserError


def run_stream_eval(argv, result_json, what: str) -> dict:
    """Run the streaming evaluation with ``argv`` (its ``--result-json-path`` and ``--json-file-name`` naming
    ``result_json``); returns its wall time (``wall_s``), its stream summary (``summary``) and the text of its
    accuracy JSON (``accuracy_json``). A failed run stops the caller with ``what`` and the run's last error line."""
    result_json = Path(result_json)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "convmixer_suite.commands.stream_eval", *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall_s = time.perf_counter() - started
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"{what}: the streaming evaluation failed (exit {result.returncode}: {tail})")
    summary_path = result_json.with_name(f"{result_json.stem}_stream_summary.json")
    return {"wall_s": wall_s, "summary": json.loads(summary_path.read_text()),
            "accuracy_json": result_json.read_text()}
