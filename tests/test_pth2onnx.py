"""convmixer_pth2onnx.py: the ONNX file's contract, its verification, and the errors for bad input."""
import copy
import fractions
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import run_script, timm_state_dict, write_photo
from safetensors.torch import save_file

import convmixer_net
from convmixer_suite.commands import pth2onnx as pth2onnx_command
from convmixer_suite.model import checkpoint
from convmixer_suite.model import export
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.cli import run_main

REL_DIFF = re.compile(r"max \|diff\|/max \|logit\| ([\d.e+-]+)")


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def run_cli(*argv):
    """Run the script's main under run_main in-process and return its exit status (output: capsys)."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(pth2onnx_command.main, [str(a) for a in argv])
    return exit_info.value.code


def test_export_writes_the_modelzoo_contract_and_matches_pytorch(tmp_path, small_model, small_checkpoint):
    target = tmp_path / "model.onnx"
    result = run_script("convmixer_pth2onnx.py", "--source", small_checkpoint, "--target", target)
    assert result.returncode == 0, result.stderr
    assert "parameters: 55,944" in result.stdout and "opset: 11" in result.stdout
    assert "at batch 1, 3:" in result.stdout and "file size: 0.2 MB" in result.stdout
    assert float(REL_DIFF.search(result.stdout).group(1)) <= 1e-4

    proto = onnx.load(str(target))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [11]
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, dims(inp), inp.type.tensor_type.elem_type) == ("image", ["batch", 3, 224, 224],
                                                                     onnx.TensorProto.FLOAT)
    assert (out.name, dims(out)) == ("class", ["batch", 1000])
    # An independent check at a batch size the script did not verify.
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    got = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(["class"], {"image": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, small_model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_fixed_batch_size_and_other_opset(tmp_path, small_checkpoint, capsys):
    target = tmp_path / "bs2.onnx"
    assert run_cli("--source", small_checkpoint, "--target", target, "--batch-size", 2, "--opset", 13) == 0
    stdout = capsys.readouterr().out
    assert "opset: 13" in stdout and "at batch 2:" in stdout
    proto = onnx.load(str(target))
    assert dims(proto.graph.input[0]) == [2, 3, 224, 224] and dims(proto.graph.output[0]) == [2, 1000]
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [13]


def test_timm_safetensors_export(tmp_path, small_model, capsys):
    source = tmp_path / "model.safetensors"
    save_file(timm_state_dict(small_model.state_dict(), 2), str(source))
    assert run_cli("--source", source, "--target", tmp_path / "t.onnx") == 0
    assert "convmixer_32_2_ks5_p14" in capsys.readouterr().out


def test_allow_pickle_opts_in_to_full_unpickling(tmp_path, small_model, capsys):
    source = tmp_path / "frac.pth.tar"
    torch.save({"state_dict": small_model.state_dict(), "ratio": fractions.Fraction(1, 3)}, source)
    target = tmp_path / "out.onnx"
    assert run_cli("--source", source, "--target", target) == 2
    assert "fractions.Fraction" in capsys.readouterr().err and not target.exists()
    assert run_cli("--source", source, "--target", target, "--allow-pickle") == 0
    assert target.exists()


def test_help_warns_that_allow_pickle_executes_code(capsys):
    with pytest.raises(SystemExit):
        pth2onnx_command.parse_args(["--help"])
    assert "EXECUTES CODE" in " ".join(capsys.readouterr().out.split())


def bad_source(tmp_path, kind, small_model):
    path = tmp_path / f"{kind}.pth.tar"
    if kind == "truncated":
        torch.save(small_model.state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "jpeg":
        write_photo(path, fmt="JPEG")
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "no_tensors":
        torch.save({"epoch": 1}, path)
    elif kind in ("other_arch", "unsafe"):
        extra = {"x": fractions.Fraction(1, 2)} if kind == "unsafe" else {}
        torch.save({"state_dict": small_model.state_dict(), **extra}, path)
    return path


BAD_INPUTS = [
    ("missing", [], "checkpoint not found"),
    ("truncated", [], "truncated or corrupt"),
    ("jpeg", [], "looks like a JPEG image"),
    ("text", [], "looks like a text file"),
    ("no_tensors", [], "holds no tensors"),
    ("other_arch", ["--arch", "convmixer_768_32"], "does not fit convmixer_768_32: missing 5.0.fn.0.weight"),
    ("unsafe", [], "pickle calls fractions.Fraction"),
]


@pytest.mark.parametrize("kind, extra, expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_one_line_exit_2_no_target(tmp_path, small_model, capsys, kind, extra, expected):
    source = bad_source(tmp_path, kind, small_model)
    target = tmp_path / "out.onnx"
    assert run_cli("--source", source, "--target", target, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: " in err and str(source) in err and expected in err
    assert not target.exists()


def test_bad_input_end_to_end_has_no_traceback(tmp_path):
    source = write_photo(tmp_path / "photo.pth.tar", fmt="JPEG")
    result = run_script("convmixer_pth2onnx.py", "--source", source, "--target", tmp_path / "x.onnx")
    assert result.returncode == 2
    assert result.stderr.startswith("convmixer_pth2onnx.py: error: ") and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.pth.tar"]


def test_bad_batch_size_and_arch_are_refused(small_checkpoint, tmp_path, capsys):
    assert run_cli("--source", small_checkpoint, "--target", tmp_path / "o.onnx", "--batch-size", 0) == 2
    assert "--batch-size: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own choices check
        pth2onnx_command.parse_args(["--source", "a", "--target", "b", "--arch", "resnet50"])
    assert exit_info.value.code == 2


def test_unsupported_opset_is_a_user_error(small_model, tmp_path):
    with pytest.raises(UserError, match="ONNX export at opset 99 failed"):
        export.export_verified(small_model, tmp_path / "o.onnx", opset=99)
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_disagrees_with_pytorch_leaves_no_target(small_model, tmp_path, monkeypatch):
    """Simulates an exporter bug: the file written holds slightly different weights from the model checked."""
    real_export = export.export_onnx

    def export_perturbed(model, path, *args):
        broken = copy.deepcopy(model)
        with torch.no_grad():
            broken[-1].bias.add_(0.01)
        real_export(broken, path, *args)

    monkeypatch.setattr(export, "export_onnx", export_perturbed)
    with pytest.raises(UserError, match=r"disagrees with PyTorch: max \|diff\|/max \|logit\| .* > 0.0001"):
        export.export_verified(small_model, tmp_path / "o.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fullsize
def test_full_size_export_matches_pytorch_in_both_key_layouts(tmp_path, full_size_demo):
    """ConvMixer-1536/20 with seeded random weights: exported once from a locuslab .pth.tar by the script
    (which checks ONNX Runtime vs PyTorch at batch 1 and 3), then the same weights in timm's keys as
    .safetensors must load to a model the exported file matches too. The export is the one of conftest's
    full_size_demo: test/demo.sh's step 4 (test/pth2om.sh) runs the script on the downloaded checkpoint."""
    spec = convmixer_net.ARCHS["convmixer_1536_20"]
    result = full_size_demo["result"]
    assert result.returncode == 0, result.stderr
    export_step = result.stdout.split("==> 4. ")[1].split("==> 5. ")[0]  # the script's lines, indented
    print(export_step)
    assert f"==> 1. exporting {full_size_demo['cwd'] / spec.checkpoint} to convmixer_1536_20.onnx" in export_step
    assert "convmixer_1536_20 (dim 1536, depth 20, kernel 9, patch 7, gelu)" in export_step
    assert "parameters: 51,625,960" in export_step and "at batch 1, 3:" in export_step
    assert float(REL_DIFF.search(export_step).group(1)) <= 1e-4
    target = full_size_demo["cwd"] / "demo_work" / "convmixer_1536_20.onnx"

    timm = tmp_path / "model.safetensors"
    save_file(timm_state_dict(torch.load(full_size_demo["served"]), spec.depth), str(timm))
    timm_model, timm_spec = checkpoint.load_model(timm)
    assert timm_spec is spec
    report = export.verify_onnx(timm_model, target, (1, 3))
    print("timm layout vs the exported file:", *report.lines(), sep="\n  ")
    assert report.parameters == 51_625_960 and report.max_rel_diff <= 1e-4
