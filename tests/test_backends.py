"""convmixer_suite.runtimes: every installed runtime against the PyTorch reference, and the error paths."""
import importlib.util
import sys

import numpy as np
import pytest
import torch

from conftest import export_small_onnx, fake_om
from convmixer_suite.precision import int8
from convmixer_suite.runtimes import ascend
from convmixer_suite.runtimes.openvino_backend import OpenVinoBackend
from convmixer_suite.runtimes.registry import create_backend, resolve_backend
from convmixer_suite.util.errors import SettingError, UserError
from convmixer_suite.util.cli import run_main


@pytest.fixture
def batch():
    return np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)


def reference(model, batch):
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


def assert_close(actual, expected, rel=1e-4):
    """max |diff| relative to the largest logit, as the export check measures it."""
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= rel * np.abs(expected).max()


def test_onnxruntime_matches_pytorch(small_model, small_onnx, batch):
    backend = create_backend("onnxruntime", small_onnx, threads=1)
    assert (backend.name, backend.version, backend.batch_size) == ("onnxruntime", __import__("onnxruntime").__version__, None)
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    assert_close(backend.predict(batch), reference(small_model, batch))


def test_onnxruntime_reads_a_fixed_batch_size(small_model, tmp_path):
    path = export_small_onnx(small_model, tmp_path / "bs2.onnx", batch_size=2)
    assert create_backend("onnxruntime", path).batch_size == 2


def test_torch_backend_is_the_checkpoint_model(small_model, small_checkpoint, batch):
    backend = create_backend("torch", small_checkpoint, threads=1)
    assert (backend.name, backend.version, backend.batch_size) == ("torch", torch.__version__, None)
    assert_close(backend.predict(batch), reference(small_model, batch), rel=1e-6)


def test_torch_backend_refuses_an_onnx_model(small_onnx):
    with pytest.raises(UserError, match=r"small\.onnx: the torch backend loads the checkpoint"):
        create_backend("torch", small_onnx)


def test_openvino_matches_pytorch(small_model, small_onnx, batch):
    ov = pytest.importorskip("openvino")
    backend = create_backend("openvino", small_onnx, threads=1)
    assert (backend.name, backend.version, backend.precision) == ("openvino", ov.get_version(), "fp32")
    assert_close(backend.predict(batch), reference(small_model, batch))


def test_openvino_compiles_a_dynamic_model_once_per_batch_size(small_model, small_onnx, batch):
    pytest.importorskip("openvino")
    backend = create_backend("openvino", small_onnx, threads=1)
    assert backend.batch_size is None and backend.requests == {}
    assert_close(backend.predict(batch), reference(small_model, batch))
    assert_close(backend.predict(batch[:1]), reference(small_model, batch[:1]))
    backend.predict(batch)
    assert sorted(backend.requests) == sorted({1, len(batch)})


def test_openvino_bf16_runs_close_to_fp32(small_model, small_onnx, batch):
    pytest.importorskip("openvino")
    backend = create_backend("openvino", small_onnx, threads=1, precision="bf16")
    expected_precision = "bf16" if backend.device_has_bf16(__import__("openvino").Core(), "CPU") else "fp32"
    assert backend.precision == expected_precision
    assert_close(backend.predict(batch), reference(small_model, batch), rel=5e-2)


def test_openvino_bf16_falls_back_to_fp32_without_cpu_support(small_model, small_onnx, batch, monkeypatch, capsys):
    pytest.importorskip("openvino")
    monkeypatch.setattr(OpenVinoBackend, "device_has_bf16", staticmethod(lambda core, device: False))
    backend = create_backend("openvino", small_onnx, threads=1, precision="bf16")
    assert backend.precision == "fp32"
    assert "lacks bf16 support; running fp32 instead" in capsys.readouterr().err
    assert_close(backend.predict(batch), reference(small_model, batch))


def test_missing_library_gives_a_one_line_install_hint(small_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(UserError) as info:
        create_backend("openvino", small_onnx)
    message = str(info.value)
    assert "\n" not in message and message.endswith("pip install openvino")
    # the other backends are unaffected
    assert create_backend("onnxruntime", small_onnx).name == "onnxruntime"


def test_auto_picks_onnxruntime_for_onnx(small_onnx):
    assert resolve_backend("auto", small_onnx) == "onnxruntime"


@pytest.mark.parametrize("precision, installed, expected", [
    ("fp32", {"openvino", "nncf"}, "onnxruntime"),
    ("bf16", {"openvino"}, "openvino"),
    ("bf16", set(), "onnxruntime"),          # then onnxruntime refuses bf16 with a clear line
    ("int8", {"openvino", "nncf"}, "openvino"),
    ("int8", {"openvino"}, "onnxruntime"),   # NNCF missing: ONNX Runtime's own quantizer
])
def test_auto_follows_the_precision_to_the_runtime_that_has_it(small_onnx, monkeypatch, precision, installed,
                                                               expected):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real_find_spec("json") if name in installed else None)
                        if name in ("openvino", "nncf") else real_find_spec(name, *a))
    assert resolve_backend("auto", small_onnx, precision) == expected


def test_auto_picks_msame_for_om_only_when_msame_is_on_path(tmp_path, small_onnx, fake_msame, monkeypatch):
    om = fake_om(tmp_path / "m_bs1.om", small_onnx)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"m_bs1\.om: an \.om model runs only on the NPU with msame"):
        resolve_backend("auto", om)
    monkeypatch.setenv("PATH", fake_msame[0]["PATH"])
    assert resolve_backend("auto", om) == "msame"


def test_msame_backend_runs_the_tool_on_a_batch(tmp_path, small_model, small_onnx, fake_msame, monkeypatch, batch):
    env, args_log = fake_msame
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    backend = create_backend("msame", fake_om(tmp_path / "m_bs3.om", small_onnx), device="0")
    assert backend.batch_size == 3
    assert_close(backend.predict(batch), reference(small_model, batch))
    argv = __import__("json").loads(args_log.read_text().splitlines()[0])
    assert argv[argv.index("--outfmt") + 1] == "BIN" and argv[argv.index("--device") + 1] == "0"


def test_msame_missing_is_a_clear_error(tmp_path, small_onnx, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="msame is not installed"):
        create_backend("msame", fake_om(tmp_path / "m.om", small_onnx))


def test_ais_bench_missing_is_a_clear_error(tmp_path, small_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "ais_bench", None)
    monkeypatch.setattr(ascend.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="ais_bench is not installed"):
        create_backend("ais_bench", fake_om(tmp_path / "m.om", small_onnx))


@pytest.mark.parametrize("kwargs, message", [
    (dict(precision="bf16"), "precision bf16 is not available on the onnxruntime backend"),
    (dict(precision="fp8"), "precision 'fp8': choose one of fp32, fp16, bf16, int8"),
    (dict(device="0"), "device 0 does not apply to the onnxruntime backend"),
    (dict(device="npu"), "device 'npu' is not understood"),
    (dict(threads=0), "threads 0: must be at least 1"),
])
def test_bad_options_are_plain_errors_that_a_command_line_words_with_its_flag(small_onnx, kwargs, message, capsys):
    with pytest.raises(SettingError) as raised:
        create_backend("onnxruntime", small_onnx, **kwargs)
    assert str(raised.value).startswith(message) and "--" not in str(raised.value).split(":")[0]

    def main(argv):
        raise raised.value
    with pytest.raises(SystemExit) as exited:
        run_main(main)
    assert exited.value.code == 2 and f"error: --{message}" in capsys.readouterr().err


def test_cuda_without_a_cuda_build_is_refused_not_replaced_by_cpu(small_onnx):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(UserError, match="no CUDAExecutionProvider"):
        create_backend("onnxruntime", small_onnx, device="cuda:0")


def test_unreadable_model_names_the_file(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"broken\.onnx: onnxruntime cannot load this model"):
        create_backend("onnxruntime", bad)
    with pytest.raises(UserError, match=r"missing\.onnx: model file not found"):
        create_backend("onnxruntime", tmp_path / "missing.onnx")


def test_int8_runs_the_model_the_precision_module_makes(small_model, small_onnx, batch, tmp_path, monkeypatch):
    calls = []

    def int8_model(onnx_path, backend_name, calib_dir, num_calib, sample_shape):
        calls.append((onnx_path, backend_name, calib_dir, num_calib, sample_shape))
        return onnx_path  # stands in for the quantized model

    monkeypatch.setattr(int8, "int8_model", int8_model)
    backend = create_backend("onnxruntime", small_onnx, precision="int8", calib_dir=tmp_path, num_calib=9)
    assert calls == [(small_onnx, "onnxruntime", tmp_path, 9, (3, 224, 224))] and backend.precision == "int8"
    assert_close(backend.predict(batch), reference(small_model, batch))


def test_a_batch_of_the_wrong_shape_is_refused(small_onnx):
    backend = create_backend("onnxruntime", small_onnx)
    with pytest.raises(UserError, match=r"shape \[N,3,224,224\], got \[2, 3, 100, 100\]"):
        backend.predict(np.zeros((2, 3, 100, 100), np.float32))
