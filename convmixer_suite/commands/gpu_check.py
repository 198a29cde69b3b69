"""The whole GPU check in one bounded run: speed and fidelity of fp32, fp16 and bf16 on CUDA.

    convmixer-gpu-check --out ./gpu_check_results [--time-limit-s 450] [--checkpoint PATH] ...
    python3 -m convmixer_suite.commands.gpu_check --out ./gpu_check_results    # the same, without the install

CUDA fp32 against CPU fp32, the torch configurations fp32/fp16/bf16 with and without torch.compile, ONNX Runtime's
CUDA and TensorRT fp16 routes (reported as not run where onnxruntime-gpu is not installed) and the streaming
evaluation on generated pictures, each part within its share of the time limit (convmixer_suite.tools.gpu_check).
Writes gpu_check.json and gpu_check.md into --out. It runs on the Python that starts it and installs nothing: a
package the check needs and that Python lacks is named, with exit status 2. Without a CUDA GPU it says so and
exits 0. All options: --help.
"""
import importlib.util
import sys

from convmixer_suite.util.cli import run_main
from convmixer_suite.util.errors import UserError

# import name -> the distribution requirements.txt pins: what the check imports
NEEDED = {"torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime", "numpy": "numpy", "PIL": "Pillow",
          "tqdm": "tqdm", "safetensors": "safetensors"}


def missing_distributions() -> list:
    """The distributions of NEEDED whose module this Python cannot find."""
    return [name for module, name in NEEDED.items() if importlib.util.find_spec(module) is None]


def main(argv=None):
    missing = missing_distributions()
    if missing:
        raise UserError(f"{sys.executable} lacks {' '.join(missing)}; install them (pip install -r requirements.txt "
                        f"of the repository, or offline: pip install --no-index --find-links WHEEL_DIR "
                        f"{' '.join(missing)}) and rerun")
    from convmixer_suite.tools import gpu_check
    return gpu_check.main(argv)


def run():
    """The installed command's entry point."""
    run_main(main, modern_stack=True)


if __name__ == "__main__":
    run()
