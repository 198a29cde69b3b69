"""Print the figure a result file holds: fps of an msame / ais_bench log or summary, or top-k accuracy.

    python3 test/parse.py --result-file ./msame_bs1.txt --batch-size 1        ->  bs1 fps:67.114
    python3 test/parse.py --result-file ./result/result_bs1.json              ->  top1:81.35% ... top5:95.5%

msame log: fps = batch_size * 1000 / the "Inference average time without first time" (the plain
"Inference average time" when that line is absent or 0.00, as after a single input file). ais_bench log
(``[INFO] throughput 1000*batchsize.mean(bs)/NPU_compute_time.mean(ms): fps``) or summary JSON
(``throughput``, or our runners' ``throughput_images_per_s``): the throughput it states.
"""
import argparse
import json
import re
from pathlib import Path

from convmixer_suite.guide import msame_log
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.cli import run_main

AIS_BENCH_RE = re.compile(r"throughput 1000\*batchsize\.mean\(([\d.]+)\)/NPU_compute_time\.mean\([^)]*\):"
                          r"\s*([\d.eE+-]+)")
SUMMARY_KEYS = ("throughput", "throughput_images_per_s")
TOP_KEY_RE = re.compile(r"^Top(\d+) accuracy$")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--result-file", required=True, help="msame/ais_bench log, summary JSON or accuracy JSON")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the run (default 1)")
    return parser.parse_args(argv)


def fps_line(batch_size: int, fps: float) -> str:
    return f"bs{batch_size} fps:{fps:.3f}"


def ais_bench_fps(text: str, path: Path, batch_size: int):
    """The throughput an ais_bench log states, or None; refuses a log of another batch size."""
    matches = AIS_BENCH_RE.findall(text)
    if not matches:
        return None
    log_batch, fps = matches[-1]
    if float(log_batch) != batch_size:
        raise UserError(f"{path}: the log is for batch size {log_batch}, not --batch-size {batch_size}")
    return float(fps)


def json_lines(info, batch_size: int) -> list:
    """Lines for an accuracy JSON (top-k) or a summary JSON (fps); [] when it is neither."""
    if isinstance(info, dict) and isinstance(info.get("value"), list):
        tops = [(TOP_KEY_RE.match(str(entry.get("key", ""))), entry.get("value"))
                for entry in info["value"] if isinstance(entry, dict)]
        return [f"top{m.group(1)}:{value}" for m, value in tops if m]
    if isinstance(info, dict):
        for key in SUMMARY_KEYS:
            if isinstance(info.get(key), (int, float)):
                return [fps_line(batch_size, float(info[key]))]
    return []


def result_lines(path: Path, batch_size: int) -> list:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    try:
        return json_lines(json.loads(text), batch_size)
    except ValueError:
        pass
    for fps in (msame_log.fps_from_log(text, batch_size), ais_bench_fps(text, path, batch_size)):
        if fps is not None:
            return [fps_line(batch_size, fps)]
    return []


def main(argv=None):
    args = parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    path = Path(args.result_file)
    lines = result_lines(path, args.batch_size)
    if not lines:
        raise UserError(f"{path}: not an msame/ais_bench log, summary JSON or accuracy JSON "
                        f"(no 'Inference average time', throughput or Top-k accuracy found)")
    print("\n".join(lines))


def run():
    """The installed command's entry point."""
    run_main(main)


if __name__ == "__main__":
    run()
