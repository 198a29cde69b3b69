"""convmixer-report: one self-contained HTML file of a run, of two runs side by side, or of a benchmark.

    convmixer-report result/result_bs1.json                                 # -> result/report_bs1.html
    convmixer-report result_int8/result_bs1.json --compare result/result_bs1.json --out int8_vs_fp32.html
    convmixer-report docs/results/<run>/benchmark.json                      # -> report.html beside it
    python3 -m convmixer_suite.commands.report …                            # the same, without the install

RESULT_JSON is the accuracy JSON a run wrote; the report finds what the run left beside it (the runner's outputs,
summary and manifest, or the streaming summary and records; msame's log; the fidelity figures). --labels,
--outputs and --log say where when they are elsewhere. Runs of different image sets are not compared.
"""
import argparse
import json
from pathlib import Path

from convmixer_suite.util.errors import UserError
from convmixer_suite.util.cli import run_main


def parse_args(argv):
    p = argparse.ArgumentParser(prog="convmixer-report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("result_json", help="a run's accuracy JSON (result/result_bs1.json), or a benchmark.json")
    p.add_argument("--compare", metavar="OTHER_JSON", help="another run's accuracy JSON, shown beside it")
    p.add_argument("--out", metavar="FILE.html",
                   help="where to write (default: report_bs<N>.html beside the accuracy JSON, with --compare "
                        "report_bs<N>_compare.html; report.html beside a benchmark.json)")
    p.add_argument("--labels", help="val_label.txt of the images (default: beside the image folder the run names)")
    p.add_argument("--outputs", help="the runner's --output folder (default: outputs_bs<N>_om beside the JSON)")
    p.add_argument("--log", help="msame's log (default: msame_bs<N>.txt in the folder above the JSON's)")
    return p.parse_args(argv)


def benchmark_json(path: Path):
    """The content of a benchmark.json (convmixer-benchmark's), or None for any other file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and {"results", "machine", "fidelity"} <= set(data) else None


def main(argv=None) -> int:
    from convmixer_suite.bench import html_report
    args = parse_args(argv)
    source = Path(args.result_json)
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    report = benchmark_json(source)
    if report is not None:
        if args.compare:
            raise UserError("--compare takes two runs' accuracy JSONs, not a benchmark.json")
        path = html_report.write_html(args.out or source.with_name("report.html"), html_report.benchmark_html(report))
    else:
        path = html_report.write_evaluation_report(source, args.out, args.compare, labels=args.labels,
                                                   outputs=args.outputs, log=args.log)
    print(f"wrote {Path(path).resolve()}")
    return 0


def run():
    """The installed command's entry point."""
    run_main(main)


if __name__ == "__main__":
    run()
