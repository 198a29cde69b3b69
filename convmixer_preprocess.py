"""ImageNet val images -> float32 NCHW batch files for msame / ais_bench.

    python3 convmixer_preprocess.py --image-path /opt/npu/imageNet/val --prep-image ./prep_image_bs1 --batch-size 1

This file keeps the command line where the README and the guide put it; the program is
convmixer_suite/commands/preprocess.py, installed as ``convmixer-preprocess`` (--help lists its options).
"""
from convmixer_suite.commands.preprocess import run

if __name__ == "__main__":
    run()
