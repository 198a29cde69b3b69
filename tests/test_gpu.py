"""The GPU path on a machine without one: options, one-line refusals, the float16 ONNX, the stream's feeding order,
and convmixer-gpu-check (its no-GPU branch, and its parts run on the CPU as a functional check)."""
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from convmixer_suite.commands import classify as classify_command
from convmixer_suite.commands import infer as infer_command
from convmixer_suite.commands import stream_eval as stream_eval_command
from conftest import REPO
from convmixer_suite.runtimes import cuda, onnxruntime_backend
from convmixer_suite.tools import gpu_check
from convmixer_suite.runtimes.base import Backend
from convmixer_suite.runtimes.onnxruntime_backend import OnnxRuntimeBackend
from convmixer_suite.runtimes.openvino_backend import OpenVinoBackend
from convmixer_suite.runtimes.registry import create_backend
from convmixer_suite.util.errors import SettingError, UserError
from convmixer_suite.precision.fp16_onnx import fp16_model
from convmixer_suite.run.inference import InferenceOptions, run_inference
from convmixer_suite.run.config import RunConfig
from convmixer_suite.run.stream import StreamTimes, local_results

IMAGE = (3, 224, 224)


def one_line_error(excinfo) -> str:
    """The library's message, one line; a command line words it with its flag (``--precision …``)."""
    message = str(excinfo.value)
    assert "\n" not in message
    assert not isinstance(excinfo.value, SettingError) or excinfo.value.flag_message() == "--" + message
    return message


# ---- options ----------------------------------------------------------------------------------------------------

def test_scripts_take_fp16_bf16_and_compile():
    base = ["--model", "m.pth", "--input", "in", "--output", "out", "--device", "cuda:0"]
    args = infer_command.parse_args(base + ["--precision", "fp16", "--compile"])
    assert (args.precision, args.compile_mode, args.device) == ("fp16", "reduce-overhead", "cuda:0")
    assert infer_command.parse_args(base + ["--compile", "max-autotune"]).compile_mode == "max-autotune"
    assert infer_command.parse_args(base).compile_mode is None
    stream = stream_eval_command.parse_args(["--model", "m.pth", "--image-path", "i", "--annotation-file-path", "a",
                                               "--result-json-path", "r", "--json-file-name", "j.json",
                                               "--precision", "bf16", "--compile", "default"])
    assert (stream.precision, stream.compile_mode) == ("bf16", "default")
    photo = classify_command.parse_args(["p.jpg", "--precision", "fp16", "--device", "cuda:1"])
    assert (photo.precision, photo.compile_mode, photo.device) == ("fp16", None, "cuda:1")


@pytest.mark.parametrize("argv", [["--compile", "fast"], ["--precision", "fp8"]])
def test_bad_gpu_options_are_refused_by_argparse(argv, capsys):
    with pytest.raises(SystemExit):
        infer_command.parse_args(["--model", "m", "--input", "i", "--output", "o"] + argv)
    assert "invalid choice" in capsys.readouterr().err


def test_classify_takes_no_int8(capsys):
    with pytest.raises(SystemExit):
        classify_command.parse_args(["p.jpg", "--precision", "int8"])  # it has no --calib
    assert "invalid choice" in capsys.readouterr().err


def test_compile_is_refused_where_it_does_not_apply(small_onnx):
    with pytest.raises(UserError, match="compile applies to the torch backend") as excinfo:
        create_backend("onnxruntime", small_onnx, compile_mode="reduce-overhead")
    one_line_error(excinfo)


def test_torch_compile_default_mode_runs_through_the_runner_and_matches_eager(tmp_path, small_checkpoint,
                                                                             small_model):
    """torch.compile on the CPU (inductor, built with the machine's C++ compiler), two batch sizes in one run (one
    compilation each): every logit within 1e-5 of eager PyTorch's."""
    rng = np.random.default_rng(7)
    batches = {"two": rng.standard_normal((2, *IMAGE)).astype(np.float32),
               "three": rng.standard_normal((3, *IMAGE)).astype(np.float32)}
    for name, batch in batches.items():
        batch.tofile(tmp_path / f"{name}.bin")
    done = subprocess.run([sys.executable, str(REPO / "convmixer_infer.py"), "--model", str(small_checkpoint),
                           "--backend", "torch", "--compile", "default", "--outfmt", "BIN", "--output",
                           str(tmp_path / "out"), "--input", f"{tmp_path / 'two.bin'},{tmp_path / 'three.bin'}"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.compile mode default" in done.stdout
    (folder,) = (tmp_path / "out").iterdir()
    for name, batch in batches.items():
        compiled = np.fromfile(folder / f"{name}_output_0.bin", dtype=np.float32).reshape(len(batch), -1)
        with torch.no_grad():
            eager = small_model(torch.from_numpy(batch)).numpy()
        assert np.abs(compiled - eager).max() <= 1e-5, name


# ---- one-line refusals -----------------------------------------------------------------------------------------

def test_torch_fp16_and_bf16_on_cpu_are_refused(small_checkpoint):
    for precision in ("fp16", "bf16"):
        with pytest.raises(UserError, match=f"precision {precision} on the torch backend runs on --device cuda:N") \
                as excinfo:
            create_backend("torch", small_checkpoint, precision=precision)
        assert "openvino" in one_line_error(excinfo)


def test_cuda_without_a_gpu_is_one_line(small_checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"device cuda:0: this torch \(.*\) sees no CUDA device") as excinfo:
        create_backend("torch", small_checkpoint, device="cuda:0", precision="fp16")
    one_line_error(excinfo)


@pytest.fixture
def fake_card(monkeypatch):
    """torch sees one CUDA card of the given compute capability (nothing runs on it: the checks come first)."""
    def install(capability, name="Tesla T4"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    return install


@pytest.fixture
def torch_fp32_flags():
    """torch's process-wide TF32 settings, as they were before the test, restored after it."""
    b = torch.backends
    legacy = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark)
    precision = (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision)
    yield
    b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark = legacy
    b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision = precision


def test_fp32_on_cuda_is_ieee_in_the_settings_torch_reads(fake_card, torch_fp32_flags):
    """torch 2.13 reads TF32 from fp32_precision; allow_tf32 = False alone left convolutions at "none"."""
    fake_card((9, 0), "NVIDIA H200")
    assert cuda.cuda_device(torch, "cuda:0", 0, "fp32") == torch.device("cuda:0")
    b = torch.backends
    assert (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision) == \
        ("ieee", "ieee", "ieee")
    assert b.cudnn.allow_tf32 is False and b.cuda.matmul.allow_tf32 is False  # the old readers agree, no error
    assert torch.get_float32_matmul_precision() == "highest"


def test_bf16_on_a_card_before_ampere_is_one_line(small_checkpoint, fake_card):
    fake_card((7, 5))
    with pytest.raises(UserError) as excinfo:
        create_backend("torch", small_checkpoint, device="cuda:0", precision="bf16")
    assert one_line_error(excinfo) == ("precision bf16: cuda:0 (Tesla T4) has compute capability 7.5; bf16 needs "
                                       "8.0 or later (Ampere); use fp16")


def test_a_card_that_is_not_there_is_one_line(small_checkpoint, fake_card):
    fake_card((9, 0), "NVIDIA H200")
    with pytest.raises(UserError, match=r"device cuda:1: torch sees 1 CUDA device\(s\), cuda:0 to cuda:0"):
        create_backend("torch", small_checkpoint, device="cuda:1", precision="bf16")


def test_onnxruntime_fp16_on_cpu_is_one_line(small_onnx):
    with pytest.raises(UserError, match="precision fp16 on onnxruntime runs on --device cuda:N") as excinfo:
        create_backend("onnxruntime", small_onnx, precision="fp16")
    one_line_error(excinfo)


def test_openvino_fp16_needs_the_device_to_report_it(small_onnx, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setattr(OpenVinoBackend, "capabilities", staticmethod(lambda core, device: ["FP32", "BF16"]))
    with pytest.raises(UserError, match=r"precision fp16: OpenVINO's CPU has no fp16 inference here \(its "
                                        r"OPTIMIZATION_CAPABILITIES: FP32, BF16; on a CPU fp16 needs AVX512_FP16"):
        create_backend("openvino", small_onnx, precision="fp16")
    monkeypatch.setattr(OpenVinoBackend, "capabilities", staticmethod(lambda core, device: ["FP32", "FP16"]))
    backend = create_backend("openvino", small_onnx, precision="fp16")  # dynamic batch: compiled at first use
    assert (backend.precision, backend.ov_config["INFERENCE_PRECISION_HINT"]) == ("fp16", "f16")


# ---- the float16 ONNX -------------------------------------------------------------------------------------------

def test_fp16_onnx_keeps_float32_inputs_and_outputs(small_onnx, small_model):
    path = fp16_model(small_onnx)
    assert path.parent == small_onnx.parent and path.name.startswith("small.fp16-") and path.suffix == ".onnx"
    graph = onnx.load(str(path)).graph
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [t.type.tensor_type.elem_type for t in list(graph.input) + list(graph.output)] == [float32, float32]
    weights = [t for t in graph.initializer if t.data_type in (float32, float16)]
    assert weights and all(t.data_type == float16 for t in weights)
    constants = [n for n in graph.node if n.op_type == "Constant"]
    assert all(a.t.data_type != float32 for n in constants for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)
    onnx.checker.check_model(str(path))


def test_fp16_onnx_is_made_once_and_renamed_for_another_model(small_onnx, tmp_path):
    from conftest import export_small_onnx, seeded_model
    first = fp16_model(small_onnx)
    stamp = first.stat().st_mtime_ns
    assert fp16_model(small_onnx) == first and first.stat().st_mtime_ns == stamp
    other = export_small_onnx(seeded_model(seed=1), tmp_path / "small2.onnx")
    other.rename(small_onnx)  # the same name, other weights
    assert fp16_model(small_onnx) != first
    assert not list(tmp_path.glob(".*tmp*"))


def test_onnxruntime_cpu_runs_the_fp16_onnx_close_to_fp32(small_onnx, small_model):
    import onnxruntime as ort
    batch = np.random.default_rng(0).standard_normal((2, *IMAGE)).astype(np.float32)
    # the pinned ONNX Runtime runs every float16 operator of the graph on the CPU: an error here is a broken graph
    session = ort.InferenceSession(str(fp16_model(small_onnx)), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": batch})[0]
    with torch.no_grad():
        expected = small_model(torch.from_numpy(batch)).numpy()
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max()


def test_onnxruntime_gpu_routes_for_fp16(small_onnx):
    cuda = OnnxRuntimeBackend(small_onnx, precision="fp16", device="cuda:0")  # not loaded: no GPU here
    assert cuda.onnx_for_precision().name.startswith("small.fp16-")
    tensorrt = OnnxRuntimeBackend(small_onnx, precision="fp16", device="tensorrt:1")
    assert tensorrt.onnx_for_precision() == small_onnx  # TensorRT makes fp16 engines from the fp32 graph


class FakeOrt:
    """onnxruntime-gpu as far as OnnxRuntimeBackend sees it: what it is handed is kept; ``refusal`` is raised by
    InferenceSession, as ONNX Runtime raises its errors."""
    __version__ = "fake"
    GraphOptimizationLevel = SimpleNamespace(ORT_ENABLE_ALL="all")

    def __init__(self, refusal=None):
        self.sessions, self.refusal = [], refusal
        fake = self

        class SessionOptions:
            def __init__(self):
                self.entries = {}

            def add_session_config_entry(self, key, value):
                self.entries[key] = value

        class InferenceSession:
            def __init__(self, path, options, providers):
                if fake.refusal:
                    raise RuntimeError(fake.refusal)
                fake.sessions.append({"path": path, "entries": options.entries, "providers": providers})
                self.providers = providers

            def get_providers(self):
                return [p[0] if isinstance(p, tuple) else p for p in self.providers]

            def get_inputs(self):
                return [SimpleNamespace(name="image", shape=["batch", 3, 224, 224])]

        self.SessionOptions, self.InferenceSession = SessionOptions, InferenceSession

    @staticmethod
    def get_available_providers():
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def fake_ort(monkeypatch):
    def install(refusal=None):
        fake = FakeOrt(refusal)
        monkeypatch.setattr(onnxruntime_backend, "import_library", lambda *args: fake)
        return fake
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    return install


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_cuda_sessions_are_ieee_fp32_with_no_cpu_provider(small_onnx, fake_ort, precision):
    """The CUDA provider alone (no CPU fallback: a node without a CUDA kernel refuses the session), with TF32
    off so fp32 is the true fp32 twin of the gate."""
    fake = fake_ort()
    create_backend("onnxruntime", small_onnx, precision=precision, device="cuda:1")
    (session,) = fake.sessions
    assert session["providers"] == [("CUDAExecutionProvider", {"device_id": 1, "use_tf32": 0})]
    assert session["entries"] == {"session.disable_cpu_ep_fallback": "1"}
    assert session["path"].endswith(".onnx") and ("fp16-" in session["path"]) == (precision == "fp16")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_sessions_build_one_engine_for_the_runs_batches_without_tf32(small_onnx, fake_ort, precision):
    fake = fake_ort()
    create_backend("onnxruntime", small_onnx, precision=precision, device="tensorrt:0", batch_sizes=(16,))
    (session,) = fake.sessions
    assert session["providers"] == [
        ("TensorrtExecutionProvider", {
            "device_id": 0, "trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(small_onnx.with_name("small.trt-cache-ieee-fp32")),
            "trt_profile_min_shapes": "image:1x3x224x224", "trt_profile_opt_shapes": "image:16x3x224x224",
            "trt_profile_max_shapes": "image:16x3x224x224"}),
        ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0})]
    assert session["entries"] == {"session.disable_cpu_ep_fallback": "1"}
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0"  # TensorRT's only TF32 switch, read when it builds
    create_backend("onnxruntime", small_onnx, device="tensorrt:0", batch_sizes=(2,))
    assert fake.sessions[1]["providers"][0][1]["trt_profile_max_shapes"] == "image:8x3x224x224"  # the gate's 8


def test_the_cpu_session_keeps_its_defaults(small_onnx, fake_ort):
    fake = fake_ort()
    create_backend("onnxruntime", small_onnx, batch_sizes=(4,))
    assert fake.sessions[0]["providers"] == ["CPUExecutionProvider"] and fake.sessions[0]["entries"] == {}
    assert "NVIDIA_TF32_OVERRIDE" not in os.environ


def test_a_node_the_gpu_provider_cannot_run_refuses_the_session_in_one_line(small_onnx, fake_ort):
    fake_ort("[ONNXRuntimeError] : 1 : FAIL : This session contains graph nodes that are assigned to the default "
             "CPU EP, but fallback to CPU EP has been explicitly disabled by the user.")
    with pytest.raises(UserError) as excinfo:
        create_backend("onnxruntime", small_onnx, device="cuda:0")
    assert one_line_error(excinfo) == (
        "device cuda:0: CUDAExecutionProvider cannot run every operator of small.onnx (ONNX Runtime would run the "
        "rest on the CPU, copying tensors on every call); run it on --device cpu, or another --precision")


def test_the_run_and_the_gate_give_tensorrt_their_batch_size(small_onnx, calib_dir, tmp_path, monkeypatch):
    """convmixer_infer.py's batch size (its .bin files' images) reaches the backend and the gate's fp32 twin."""
    seen = []
    real = OnnxRuntimeBackend.load

    def load(self):
        seen.append((self.precision, self.batch_sizes))
        return real(self)
    monkeypatch.setattr(OnnxRuntimeBackend, "load", load)
    config = RunConfig.build(small_onnx, backend="onnxruntime", precision="int8", calib=calib_dir, num_calib=5)
    run_inference(config, InferenceOptions(input=str(calib_dir), output=str(tmp_path / "out")), log=lambda line: None)
    assert seen == [("int8", (2,)), ("fp32", (2,))]


# ---- feeding the model ------------------------------------------------------------------------------------------

class LookAheadBackend(Backend):
    """Takes batch k+1 before it gives batch k's logits back, as the CUDA path does; logit 0 is the batch's mean."""
    name = "lookahead"

    def predict_each(self, batches):
        previous = None
        for batch in batches:
            if previous is not None:
                yield previous
            previous = (np.full((len(batch), 10), batch.mean(), np.float32), 1.0)
        if previous is not None:
            yield previous


def test_the_stream_keeps_each_batch_with_its_details_when_the_backend_looks_ahead():
    items = [(k, np.full((2, *IMAGE), k, np.float32), [(1, "x", f"bad {k}")] if k == 1 else [], 0.1 * k, 0.0)
             for k in range(4)]

    class Stream(list):
        batch_size = 2

    results = list(local_results(Stream(items), LookAheadBackend("m"), num_images=7, topk=1))
    assert [r.k for r in results] == [0, 1, 2, 3]
    assert [r.scores[0, 0] for r in results] == [0.0, 1.0, 2.0, 3.0]  # each its own batch's logits
    assert [r.bad for r in results] == [{}, {1: "bad 1"}, {}, {}] and results[3].classes.shape == (1, 1)
    assert [r.decode_s for r in results] == [0.0, 0.1, 0.2, 0.30000000000000004]


class PinnedHost(torch.Tensor):
    """A host tensor that takes record_stream, as a CUDA tensor does (a CPU tensor refuses it)."""

    def record_stream(self, stream):
        pass


class SyncStream:
    def wait_event(self, event):
        pass


class SyncEvent:
    def __init__(self, enable_timing=False):
        self.at = None

    def record(self, stream=None):
        self.at = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.at - self.at) * 1000.0


class SyncCudaTorch:
    """torch with its CUDA stream, event and pinned-memory calls done at once on the CPU: TorchBackend's CUDA
    ``predict_each`` (two buffer slots, batch k+1 taken before batch k's logits are collected) runs here as written,
    so a batch handed back with another batch's logits shows."""
    cuda = SimpleNamespace(Stream=lambda device=None: SyncStream(), stream=lambda stream: contextlib.nullcontext(),
                           Event=SyncEvent, current_stream=lambda device=None: SyncStream())

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(shape, dtype=None, pin_memory=False):
        return torch.empty(shape, dtype=dtype).as_subclass(PinnedHost)


def test_predict_each_on_the_cuda_path_gives_each_batch_its_own_logits(small_checkpoint, small_model):
    backend = create_backend("torch", small_checkpoint)
    backend.torch, backend.device_kind = SyncCudaTorch(), "cuda"  # the CUDA code path, on the CPU
    batches = [np.random.default_rng(i).standard_normal((2, *IMAGE)).astype(np.float32) for i in range(5)]
    got = list(backend.predict_each(iter(batches)))
    assert len(got) == 5
    with torch.no_grad():
        for (logits, latency_ms), batch in zip(got, batches):
            expected = small_model(torch.from_numpy(batch)).numpy()
            np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
            assert type(logits) is np.ndarray and latency_ms > 0


@pytest.mark.parametrize("decode_s, inference_ms, scoring_s, bound", [
    (8.0, [500.0], 0.01, "decode+transform"),  # 2 workers: 25 images/s against 200
    (0.2, [5000.0], 0.01, "inference"),
    (0.0, [], 0.0, None),
])
def test_the_summary_names_the_stage_that_bounds_the_run(decode_s, inference_ms, scoring_s, bound):
    times = StreamTimes(decode_s=decode_s, inference_ms=inference_ms, scoring_s=scoring_s, num_images=100,
                        workers=2, pipeline_s=6.0)
    rates = times.rates()
    assert rates["bound_stage"] == bound
    line = [x for x in stream_eval_command.stage_lines(rates, 2) if "bound by" in x]
    assert line == [f"[INFO] bound by: {bound or 'nothing timed'} (the stage with the fewest images/s)"]
    assert "ms" not in line[0]  # test/parse.py reads the log's last "…ms"


# ---- gpu_check --------------------------------------------------------------------------------------------------

class Clock:
    """A clock that moves only when the model runs: time_batch's shares, counted without the machine's speed."""

    def __init__(self):
        self.now_s = 100.0

    def __call__(self):
        return self.now_s


class CountingBackend:
    """Each call takes ``call_ms`` on ``clock``."""

    def __init__(self, clock, call_ms=10.0):
        self.calls, self.clock, self.call_ms = 0, clock, call_ms

    def predict(self, batch):
        self.calls += 1
        self.clock.now_s += self.call_ms / 1000.0
        return np.zeros((len(batch), 10), np.float32)

    def predict_each(self, batches):
        for batch in batches:
            yield self.predict(batch), 0.5


@pytest.mark.parametrize("share_ms, timed", [
    (55.0, 4),   # 2 warm-up calls (20 ms), then timed calls while the clock is short of 55 ms: 30, 40, 50, 60
    (0.5, 3),    # past its share after the warm-up: still the least number of timed calls
    (1e6, 7),    # time enough: --max-calls
])
def test_time_batch_stays_within_its_share(monkeypatch, share_ms, timed):
    clock = Clock()
    monkeypatch.setattr(gpu_check, "time", SimpleNamespace(perf_counter=clock))
    backend = CountingBackend(clock)
    batch = np.zeros((4, *IMAGE), np.float32)
    assert gpu_check.time_batch(backend, batch, share_end=clock() - 1.0) == {
        "measured": False, "why": "no time left in this configuration's share"}
    assert backend.calls == 0
    ended = gpu_check.time_batch(backend, batch, share_end=clock() + share_ms / 1000.0, max_calls=7)
    assert ended["measured"] and ended["latency_ms"]["count"] == timed
    assert ended["latency_ms"]["median"] == pytest.approx(10.0) and ended["images_per_s"] == pytest.approx(400.0)
    assert backend.calls == gpu_check.WARMUP_CALLS + 2 * timed  # timed calls, then as many pipelined
    assert ended["pipelined_batch_ms_median"] == 0.5


def test_gpu_check_reports_the_best_measured_figures():
    def cell(rate, p50):
        return {"measured": True, "images_per_s": rate, "pipelined_images_per_s": rate / 2,
                "latency_ms": {"median": p50, "p99": p50}}
    results = {"reference": {}, "torch-cuda-bf16": {"part": "torch-cuda-bf16", "max_rel_diff": 0.004,
                                                    "batches": {"1": cell(250.0, 4.0), "256": cell(3500.0, 73.0)}},
               "torch-cuda-fp16": {"part": "torch-cuda-fp16", "max_rel_diff": 0.03,
                                   "batches": {"1": {"measured": False, "why": "no time"}}},
               "torch-cuda-fp32": {"part": "torch-cuda-fp32", "max_rel_diff": 0.0, "batches": {"1": cell(9e9, 0.1)}}}
    assert gpu_check.best_lines(results) == [
        "- best images/s in fp16 or bf16: 3500 (torch-cuda-bf16 at batch 256)",
        "- best batch-1 latency p50 in fp16 or bf16, ms: 4 (torch-cuda-bf16)",
        "- worst max |diff|/max |logit| of fp16/bf16: 0.03 (torch-cuda-fp16): ABOVE the fidelity gate's default "
        "limit 0.02"]
    assert gpu_check.best_lines({}) == [
        "- best images/s in fp16 or bf16: not measured", "- best batch-1 latency p50 in fp16 or bf16, ms: not measured",
        "- worst max |diff|/max |logit| of fp16/bf16: not measured"]


class ContentBackend(CountingBackend):
    """Logits that are the batch's first ten values: each batch's own."""

    def predict(self, batch):
        return np.ascontiguousarray(batch.reshape(len(batch), -1)[:, :10], dtype=np.float32)


class SwappingBackend(ContentBackend):
    """predict_each hands back each batch's logits one batch late, the first twice: what a look-ahead bug does."""

    def predict_each(self, batches):
        previous = None
        for batch in batches:
            yield self.predict(previous if previous is not None else batch), 0.5
            previous = batch


def test_predict_each_check_finds_batches_handed_back_with_another_batchs_logits():
    rng = np.random.default_rng(0)
    assert gpu_check.predict_each_check(ContentBackend(Clock()), rng, 2) == {
        "batches": 4, "max_rel_diff": 0.0, "matches": True}
    swapped = gpu_check.predict_each_check(SwappingBackend(Clock()), rng, 2)
    assert swapped["batches"] == 4 and not swapped["matches"] and swapped["max_rel_diff"] > 0.1


@pytest.mark.parametrize("argv, message", [
    (["--configs", "torch-cuda-fp8"], "--configs: unknown torch-cuda-fp8"),
    (["--batch-sizes", "1,x"], "--batch-sizes '1,x': comma-separated whole numbers"),
    (["--batch-sizes", "0"], "--batch-sizes: at least one, each at least 1"),
    (["--time-limit-s", "5"], "--time-limit-s 5: must exceed 10"),
    (["--device", "tensorrt:0"], "--device tensorrt:0: the GPU check takes cuda:N"),
])
def test_gpu_check_refuses_bad_arguments(argv, message):
    with pytest.raises(UserError, match=message):
        gpu_check.parse_args(argv)


def run_gpu_check(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "convmixer_suite.commands.gpu_check", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_gpu_check_names_the_packages_this_python_lacks(monkeypatch):
    from convmixer_suite.commands import gpu_check as gpu_check_command
    monkeypatch.setitem(gpu_check_command.NEEDED, "no_such_module_here", "no-such-distribution")
    with pytest.raises(UserError, match=rf"{re.escape(sys.executable)} lacks no-such-distribution; install them"):
        gpu_check_command.main(["--out", "unused"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path):
    done = run_gpu_check("--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gpu_check: no CUDA GPU here (torch ") and "nothing measured" in done.stdout
    assert not (tmp_path / "out").exists()


def test_gpu_check_parts_run_on_the_cpu(tmp_path, small_checkpoint, small_model):
    """The parent/child machinery end to end on the CPU: fp32 measured, fp16 refused and reported as such."""
    done = run_gpu_check("--out", tmp_path / "out", "--work", tmp_path / "work", "--device", "cpu",
                         "--checkpoint", small_checkpoint,
                         "--configs", "torch-cuda-fp32,torch-cuda-fp16,onnxruntime-cuda-fp16,onnxruntime-tensorrt-fp16",
                         "--batch-sizes", "1,2", "--fidelity-images", "2", "--stream-images", "0", "--max-calls", "3",
                         "--time-limit-s", "200")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["reference", "torch-cuda-fp32", "torch-cuda-fp16", "onnxruntime-cuda-fp16",
                           "onnxruntime-tensorrt-fp16"]
    import onnxruntime  # the CPU build here: neither GPU route runs, and each says why
    for part, provider in (("onnxruntime-cuda-fp16", "CUDAExecutionProvider"),
                           ("onnxruntime-tensorrt-fp16", "TensorrtExecutionProvider")):
        assert parts[part]["error"].startswith(f"not run: onnxruntime {onnxruntime.__version__} has no {provider}")
    # --device cpu compares CPU fp32 with itself; what can be wrong is the reference: its logits must be those of
    # the checkpoint's model on the fidelity inputs, computed here without the suite
    images = np.load(tmp_path / "work" / "fidelity_inputs_2.npy")
    with torch.no_grad():
        expected = small_model(torch.from_numpy(images)).numpy()
    reference = np.load(tmp_path / "work" / "reference_logits.npy")
    np.testing.assert_allclose(reference, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert len(images) == 2 and np.abs(expected[0] - expected[1]).max() > 0  # two different pictures
    fp32 = parts["torch-cuda-fp32"]
    assert fp32["max_rel_diff"] == 0.0 and set(fp32["batches"]) == {"1", "2"}
    assert fp32["predict_each"] == {"batches": 4, "max_rel_diff": 0.0, "matches": True}
    assert all(b["measured"] and b["images_per_s"] > 0 and b["latency_ms"]["count"] == 3 for b in fp32["batches"].values())
    assert parts["torch-cuda-fp16"]["error"].startswith("--precision fp16 on the torch backend runs on --device cuda")
    markdown = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| torch-cuda-fp32 |" in markdown and "- best batch-1 latency p50 in fp16 or bf16, ms: not measured" in markdown
    assert "- torch-cuda-fp32: each batch its own logits (max |diff|/max |logit| 0)" in markdown
    assert "| onnxruntime-tensorrt-fp16 | " in markdown and "not run: onnxruntime" in markdown
    assert report["elapsed_s"] < 200
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.json", "gpu_check.md"]
    assert (tmp_path / "work" / "reference_logits.npy").is_file()


def test_a_part_past_its_time_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        gpu_check.run_bounded(["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], timeout_s=1.0)
    child = int(pid_file.read_text())
    for _ in range(50):  # reaped by init once its killed parent is gone
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the part's child {child} outlived it")


def test_classify_runs_the_fidelity_gate_of_a_reduced_precision(small_onnx, photo_folder, capsys):
    pytest.importorskip("openvino")
    photos = [str(p) for p in sorted(photo_folder.iterdir())[:3]]
    argv = photos + ["--model", str(small_onnx), "--backend", "openvino", "--precision", "bf16"]
    assert classify_command.main(argv) == 0
    out = capsys.readouterr().out
    if "precision fp32" in out.splitlines()[0]:
        pytest.skip("this CPU has no bf16: OpenVINO ran fp32, which has no gate")
    assert "[INFO] fidelity: bf16 on openvino" in out and "the photos given" in out
    with pytest.raises(UserError, match="above --max-logit-error 0"):
        classify_command.main(argv + ["--max-logit-error", "0"])
