"""Accuracy and speed in one streaming pass, writing no .bin or TXT files.

    python3 convmixer_stream_eval.py --model ./convmixer_1536_20.onnx --image-path /opt/npu/imageNet/val \
        --annotation-file-path /opt/npu/imageNet/val_label.txt --result-json-path ./result \
        --json-file-name result_bs1.json --batch-size 1

This file keeps the command line where the README and the guide put it; the program is
convmixer_suite/commands/stream_eval.py, installed as ``convmixer-stream-eval`` (--help lists its options).
"""
from convmixer_suite.commands.stream_eval import run

if __name__ == "__main__":
    run()
