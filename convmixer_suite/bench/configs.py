"""The benchmark's configurations and profiles as data (convmixer-benchmark reads them; nothing is judged here).

``CONFIGS``: name -> (backend, precision). ``REFERENCE`` is the one every ratio and fidelity figure is
relative to. ``PROFILES``: named sets of defaults, as MLPerf's vision reference names its profiles; a flag given
on the command line wins over its profile's value.
"""
CONFIGS = {
    "torch-fp32": ("torch", "fp32"),
    "onnxruntime-fp32": ("onnxruntime", "fp32"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "onnxruntime-int8": ("onnxruntime", "int8"),
    "openvino-int8": ("openvino", "int8"),
}
REFERENCE = "torch-fp32"

PROFILES = {
    # the full ConvMixer-1536/20 (docs/benchmarks.md says how long it takes)
    "default": dict(arch="convmixer_1536_20", batch_sizes="1,4,16", iters=10, warmup=2, num_images=16,
                    num_calib=300, stream_images=32, prep_images=200, engines_images=32, server_steps=5,
                    loadgen_min_duration_ms=10_000, server_queries=1024),
    # a small ConvMixer and few iterations: checks that everything runs
    "quick": dict(arch="convmixer_32_2_ks5_p14", batch_sizes="1,2", iters=2, warmup=1, num_images=4, num_calib=8,
                  stream_images=4, prep_images=16, engines_images=6, server_steps=3, loadgen_min_duration_ms=200,
                  server_queries=1024),
}
