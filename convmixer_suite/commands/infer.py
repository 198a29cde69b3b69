"""msame-compatible offline inference on any runtime.

    python3 convmixer_infer.py --model ./convmixer_1536_20.onnx --input ./prep_image_bs1 \\
        --output ./result/outputs_bs1_om --outfmt TXT

msame's flags keep msame's meaning: --model, --input (a folder of .bin files, or a comma-separated list),
--output, --outfmt TXT|BIN, --loop (repeats for a single-file input, 1..100), --device. It writes what
msame writes: ``<output>/<YYYYmmdd_HHMMSS>/<input name>_output_0.txt|.bin`` (TXT: one row per image, each
value followed by one space, 6 significant digits; BIN: raw float32) and msame's log lines on stdout, ending
with its averages. ``--output`` holds only those timestamp folders; ``<output>.runs/`` beside it holds
``<timestamp>_summary.json`` (latency and throughput) and ``<timestamp>_latency_ms.tsv`` (the resume record).

Options beside msame's: --backend auto|onnxruntime|openvino|torch|msame|ais_bench, --threads,
--precision fp32|fp16|bf16|int8, --calib DIR and --num-calib N (int8 calibration images), --max-logit-error (the fidelity
gate of fp16/bf16/int8), --compile [MODE] (torch.compile), --resume latest|FOLDER. fp16/bf16 on a GPU:
--backend torch --device cuda:N (docs/gpu.md).
"""
import argparse

from convmixer_suite.runtimes.registry import BACKEND_NAMES
from convmixer_suite.util.cli import run_main
from convmixer_suite.run.inference import InferenceOptions, run_inference
from convmixer_suite.run.config import RunConfig, add_compile_option, add_precision_options


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=".onnx (onnxruntime, openvino), .om (msame, ais_bench) "
                   "or the checkpoint .pth/.pth.tar/.safetensors (torch)")
    p.add_argument("--input", required=True, help="a folder of .bin batches, or a comma-separated list of .bin files")
    p.add_argument("--output", required=True, help="parent folder; each run writes a <YYYYmmdd_HHMMSS> folder in it "
                   "(and its summary and resume record in <output>.runs/)")
    p.add_argument("--outfmt", default="TXT", type=str.upper, choices=("TXT", "BIN"))
    p.add_argument("--loop", default=1, type=int, help="runs of a single-file input, for timing (1..100)")
    p.add_argument("--device", default=None, help="an NPU id for msame/ais_bench; cpu (default), cuda:N or "
                   "tensorrt:N for onnxruntime; cuda:N for torch; gpu.N for openvino")
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKEND_NAMES,
                   help="auto: msame for an .om when msame is on PATH; openvino for bf16/int8 when "
                        "installed; else onnxruntime")
    p.add_argument("--threads", default=None, type=int, help="intra-op threads (default: the runtime's own)")
    add_precision_options(p, "the input's first images, before anything is written")
    add_compile_option(p)
    p.add_argument("--resume", default=None, metavar="latest|FOLDER",
                   help="continue an interrupted run in its timestamp folder (latest: the newest one under "
                        "--output, or a new run when there is none), skipping finished files")
    args = p.parse_args(argv)
    if not 1 <= args.loop <= 100:
        p.error(f"--loop {args.loop}: must be 1..100, as in msame")
    return args


def main(argv=None):
    args = parse_args(argv)
    config = RunConfig.from_args(args)
    opts = InferenceOptions(input=args.input, output=args.output, outfmt=args.outfmt, loop=args.loop,
                            resume=args.resume, max_logit_error=args.max_logit_error)
    result = run_inference(config, opts, log=lambda line: print(line, flush=True))
    # msame's averages close the log: the guide's parse.py reads garbage if a later line has "ms"
    print("\n".join(result.average_lines()), flush=True)
    return 0


def run():
    """The installed command's entry point."""
    run_main(main)


if __name__ == "__main__":
    run()
