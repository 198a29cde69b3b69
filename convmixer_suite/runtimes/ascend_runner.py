"""Running the real msame or ais_bench on a run's unfinished batch files, keeping msame's layout.

The tool writes into a scratch folder of the run's records (never into ``--output``, which must hold only
msame's timestamp folders); its outputs are then moved into the run's timestamp folder under msame's
names, and its per-file times go into the run's record, so a resumed or mixed run looks like one msame run.
"""
import json
import subprocess
import tempfile
from pathlib import Path

from convmixer_suite.guide import msame_log
from convmixer_suite.runtimes.backends import ToolBackend
from convmixer_suite.util.errors import UserError
from convmixer_suite.guide.run_folder import OUTPUT_SUFFIX, RunFolder


def run_tool(backend: ToolBackend, todo, run: RunFolder, *, input_spec: str, whole_folder: bool, outfmt: str,
             loop: int, log=print) -> list:
    """Run the tool on ``todo``, echo its log through ``log`` (minus its closing averages, which the caller
    prints once for the whole run), move its outputs into place and return the latencies (ms)."""
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
            raise UserError(f"{backend.name} wrote no output for {len(missing)} input(s), e.g. {missing[0]}")
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
        raise UserError(f"{argv[0]}: cannot run it: {exc.strerror}") from None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if not msame_log.is_average_line(line):
            log(line.rstrip("\n"))
    if proc.wait() != 0:
        raise UserError(f"{argv[0]} failed with exit status {proc.returncode} (its log is above)")
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
            raise UserError(f"msame's log has {len(latencies)} 'Inference time' lines for {expected} runs")
        return latencies
    summaries = sorted(out.glob("*summary.json")) + sorted(out.glob("*/sumary.json"))
    if not summaries:
        raise UserError(f"ais_bench wrote no summary JSON in {out}")
    mean_ms = float(json.loads(summaries[0].read_text())["NPU_compute_time"]["mean"])
    log(f"[INFO] ais_bench reports only its mean compute time ({mean_ms:.3f} ms); it is used for each file")
    return [mean_ms] * expected
