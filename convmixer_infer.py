"""Msame-compatible offline inference on any runtime.

    python3 convmixer_infer.py --model ./convmixer_1536_20.onnx --input ./prep_image_bs1 \\
        --output ./result/outputs_bs1_om --outfmt TXT

This file keeps the command line where the README and the guide put it; the program is
convmixer_suite/commands/infer.py, installed as ``convmixer-infer`` (--help lists its options).
"""
from convmixer_suite.commands.infer import run

if __name__ == "__main__":
    run()
