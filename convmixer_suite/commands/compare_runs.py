"""Which images changed their top-1 between two streaming evaluations (say fp32 and int8), and the agreement.

    convmixer-compare-runs RESULT_A RESULT_B

RESULT_A/B: an accuracy JSON written by convmixer_stream_eval.py (result/result_bs1.json) or its per-image
record folder (result/result_bs1_records). Prints one line per changed image (its label, run A's and run B's
top-1 class with its score), then the top-1 agreement over the images both runs scored.
"""
import argparse
import sys

from convmixer_suite.util.cli import run_main
from convmixer_suite.run.records import compare_records, read_records


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("result_a", help="run A: result JSON or its _records folder")
    p.add_argument("result_b", help="run B: result JSON or its _records folder")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    report = compare_records(read_records(args.result_a), read_records(args.result_b))
    for c in report["changed"]:
        print(f"{c['image']}  label {c['label']}:  A {c['a'][0]} ({c['a'][1]:.4g})  B {c['b'][0]} ({c['b'][1]:.4g})")
    for side in ("a", "b"):
        if report[f"only_in_{side}"]:
            print(f"note: {report[f'only_in_{side}']} images scored only in run {side.upper()} are left out",
                  file=sys.stderr)
    same = report["common"] - len(report["changed"])
    print(f"{len(report['changed'])} images changed their top-1; top-1 agreement: {report['agreement'] * 100:.2f}% "
          f"({same} of {report['common']} images)")
    return 0


def run():
    """The installed command's entry point."""
    run_main(main)


if __name__ == "__main__":
    run()
