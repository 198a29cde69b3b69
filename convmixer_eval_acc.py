"""Top-k accuracy of msame / ais_bench outputs, written as the ModelZoo JSON.

    python3 convmixer_eval_acc.py --folder-davinci-target ./result/outputs_bs1_om/ \\
        --annotation-file-path /opt/npu/imageNet/val_label.txt --result-json-path ./result \\
        --json-file-name result_bs1.json --batch-size 1

This file keeps the command line where the README and the guide put it; the program is
convmixer_suite/commands/eval_acc.py, installed as ``convmixer-eval-acc`` (--help lists its options).
"""
from convmixer_suite.commands.eval_acc import run

if __name__ == "__main__":
    run()
