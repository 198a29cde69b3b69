"""The top-k ImageNet classes of your own photos.

    python3 convmixer_classify.py PHOTO [PHOTO ...] [--model ONNX|CHECKPOINT] [--backend auto] [--topk 5]
    python3 convmixer_classify.py PHOTO --device cuda:0 --precision fp16    # the checkpoint on a GPU in fp16

This file keeps the command line where the README and the guide put it; the program is
convmixer_suite/commands/classify.py, installed as ``convmixer-classify`` (--help lists its options).
"""
from convmixer_suite.commands.classify import run

if __name__ == "__main__":
    run()
