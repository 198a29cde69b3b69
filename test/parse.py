"""The figure a result file holds (fps, or top-k accuracy).

    python3 test/parse.py --result-file ./msame_bs1.txt --batch-size 1        ->  bs1 fps:67.114
    python3 test/parse.py --result-file ./result/result_bs1.json              ->  top1:81.35% ... top5:95.5%

This file keeps the command line where the README and the guide put it; the program is
convmixer_suite/commands/parse.py, installed as ``convmixer-parse`` (--help lists its options).
"""
from convmixer_suite.commands.parse import run

if __name__ == "__main__":
    run()
