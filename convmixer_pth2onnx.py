"""Export a ConvMixer checkpoint to ONNX and check it against PyTorch.

    python3 convmixer_pth2onnx.py --source ./convmixer_1536_20_ks9_p7.pth.tar --target ./convmixer_1536_20.onnx

This file keeps the command line where the README and the guide put it; the program is
convmixer_suite/commands/pth2onnx.py, installed as ``convmixer-pth2onnx`` (--help lists its options).
"""
from convmixer_suite.commands.pth2onnx import run

if __name__ == "__main__":
    run()
