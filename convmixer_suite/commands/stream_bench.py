"""Speed of the streaming engines side by side on made-up inputs where the pipeline sets the pace (a pooled-colour
classifier, generated photos repeated): end-to-end images/s, time to the first batch, driver peak RSS.

    convmixer-stream-bench --work /tmp/stream_bench --num-images 5000 --engines local ray
    convmixer-stream-bench --work /tmp/stream_bench --num-images 5000 --engines ray --cluster-nodes 2

The logic is convmixer_suite/bench/stream_bench.py; docs/ray.md has the figures measured with it.
"""
import argparse
import contextlib
import json

from convmixer_suite.bench import stream_bench
from convmixer_suite.util.files import output_folder, write_text_atomic
from convmixer_suite.util.cli import positive_int, run_main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the inputs (kept for the next run) and the outputs")
    p.add_argument("--num-images", type=positive_int, default=5000)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--engines", nargs="+", choices=("local", "ray"), default=["local", "ray"])
    p.add_argument("--cluster-nodes", type=positive_int, default=None,
                   help="run the ray engine on a cluster of this many nodes on 127.0.0.1 (default: Ray started "
                        "by the run itself)")
    p.add_argument("--cpus-per-node", type=positive_int, default=1, help="with --cluster-nodes")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    output_folder(args.work, "--work")
    with contextlib.ExitStack() as stack:
        ray_args = ()
        if args.cluster_nodes:
            cluster = stack.enter_context(stream_bench.loopback_cluster(args.cluster_nodes, args.cpus_per_node))
            ray_args = ("--ray-address", cluster.address)
        rows = stream_bench.side_by_side(args.work, args.num_images, args.engines, args.batch_size, ray_args)
    print(stream_bench.table(rows))
    if args.json:
        write_text_atomic(args.json, json.dumps([{k: v for k, v in r.items() if k != "accuracy_json"}
                                                 for r in rows], indent=1))
    return 0


def run():
    """The installed command's entry point."""
    run_main(main, modern_stack=True)


if __name__ == "__main__":
    run()
