"""test/pth2om.sh: the guide's flags, the ONNX step, and the atc contract checked by a fake atc on PATH."""
import json
import os
import shutil
import sys

import pytest
from conftest import offline_env, run_script

import convmixer_net

CHECKPOINT = convmixer_net.ARCHS["convmixer_1536_20"].checkpoint

# docs/formats.md's atc command, word for word, with ${bs} and ${soc} left to fill in.
ATC_COMMAND = ('--framework=5 --model=convmixer_1536_20.onnx --output=convmixer_1536_20_bs${bs} --input_format=NCHW '
               '--input_shape=image:${bs},3,224,224 --log=error --soc_version=${soc} '
               '--op_select_implmode=high_performance --optypelist_for_implmode=Gelu')

FAKE_ATC = '''#!{python}
"""A stand-in for Ascend's atc: every argument must be one of docs/formats.md's command, each exactly once."""
import json, os, sys
expected = {expected!r}
got = sys.argv[1:]
with open(os.environ["FAKE_ATC_LOG"], "a") as log:
    log.write(json.dumps(got) + "\\n")
unknown = [a for a in got if a not in expected]
missing = [a for a in expected if a not in got]
if unknown or missing or len(got) != len(expected):
    print(f"ATC run failed: unexpected {{unknown}}, missing {{missing}}")
    sys.exit(1)
model = next(a.split("=", 1)[1] for a in got if a.startswith("--model="))
if os.path.getsize(model) == 0:
    print(f"ATC run failed: {{model}} is empty")
    sys.exit(1)
output = next(a.split("=", 1)[1] for a in got if a.startswith("--output="))
with open(output + ".om", "wb") as om:
    om.write(b"fake om")
print("ATC run success, welcome to the next use")
'''

NPU_SMI_TABLE = """+--------------------------------------------------------------------------------------------+
| npu-smi 22.0.0                   Version: 22.0.2                                              |
+-------------------+-----------------+------------------------------------------------------+
| NPU     Name      | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device    | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===================+=================+======================================================+
| 0       310       | OK              | 12.8         45                0    / 0              |
| 0       0         | 0000:05:00.0    | 0            2621 / 8192                              |
+===================+=================+======================================================+
"""


def expected_atc_args(bs, soc):
    return ATC_COMMAND.replace("${bs}", str(bs)).replace("${soc}", soc).split()


def fake_tools(tmp_path, bs, soc, npu_smi=False):
    """A bin folder with a fake atc expecting (bs, soc), and optionally a fake npu-smi; returns env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    atc = bin_dir / "atc"
    atc.write_text(FAKE_ATC.format(python=sys.executable, expected=expected_atc_args(bs, soc)))
    atc.chmod(0o755)
    if npu_smi:
        tool = bin_dir / "npu-smi"
        tool.write_text("#!/bin/sh\ncat <<'EOF'\n" + NPU_SMI_TABLE + "EOF\n")
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_ATC_LOG": str(tmp_path / "atc.log")}


@pytest.fixture
def exported_workdir(tmp_path):
    """A folder with a stand-in for an earlier export, for tests of the atc step run with
    --not_skip_onnx=false (the fake atc only needs a non-empty model file)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "convmixer_1536_20.onnx").write_bytes(b"an earlier export")
    return work


@pytest.fixture
def workdir(tmp_path, small_checkpoint):
    """A folder holding the checkpoint under the guide's file name (a small model: the script infers it)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(small_checkpoint, work / CHECKPOINT)
    return work


def atc_calls(tmp_path):
    return [json.loads(line) for line in (tmp_path / "atc.log").read_text().splitlines()]


def test_guide_command_exports_and_compiles_with_atc(tmp_path, workdir):
    env = fake_tools(tmp_path, bs=4, soc="Ascend310P3")
    result = run_script("test/pth2om.sh", "--batch_size=4", "--not_skip_onnx=true", cwd=workdir, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "==> 1. exporting" in result.stdout and "==> 2. compiling" in result.stdout
    assert "ATC run success" in result.stdout
    assert (workdir / "convmixer_1536_20.onnx").stat().st_size > 0
    assert (workdir / "convmixer_1536_20_bs4.om").exists()
    assert atc_calls(tmp_path) == [expected_atc_args(4, "Ascend310P3")]


def test_soc_version_is_read_from_npu_smi(tmp_path, exported_workdir):
    env = fake_tools(tmp_path, bs=1, soc="Ascend310", npu_smi=True)
    result = run_script("test/pth2om.sh", "--not_skip_onnx=false", cwd=exported_workdir, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (exported_workdir / "convmixer_1536_20_bs1.om").exists()


def test_wrong_atc_argument_fails_the_script(tmp_path, exported_workdir):
    """The fake atc rejects a soc it was not told to expect, so a wrong argument really surfaces."""
    env = fake_tools(tmp_path, bs=1, soc="Ascend710")
    result = run_script("test/pth2om.sh", "--soc_version=Ascend310P3", "--not_skip_onnx=false",
                        cwd=exported_workdir, env=env)
    assert result.returncode != 0
    assert "unexpected ['--soc_version=Ascend310P3']" in result.stdout
    assert "pth2om.sh: error: atc failed" in result.stderr
    assert not (exported_workdir / "convmixer_1536_20_bs1.om").exists()


def test_without_atc_the_om_step_is_skipped_plainly(workdir):
    assert shutil.which("atc") is None, "a real atc is installed here; this test is for machines without it"
    result = run_script("test/pth2om.sh", "--batch_size=1", "--not_skip_onnx=true", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "atc (Ascend toolkit) is not installed: skipping the OM step" in result.stdout
    assert "embedded ONNX Runtime backend" in result.stdout
    assert (workdir / "convmixer_1536_20.onnx").exists()
    assert not list(workdir.glob("*.om"))


def test_existing_onnx_is_reused_when_not_skip_onnx_is_false(tmp_path, exported_workdir):
    work = exported_workdir
    env = fake_tools(tmp_path, bs=1, soc="Ascend310P3")
    result = run_script("test/pth2om.sh", "--not_skip_onnx=false", cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    assert "==> 1. reusing convmixer_1536_20.onnx" in result.stdout
    assert (work / "convmixer_1536_20.onnx").read_bytes() == b"an earlier export"
    assert (work / "convmixer_1536_20_bs1.om").exists()


def test_not_skip_onnx_false_without_an_onnx_is_an_error(tmp_path):
    result = run_script("test/pth2om.sh", "--not_skip_onnx=false", cwd=tmp_path)
    assert result.returncode != 0
    assert "--not_skip_onnx=false but" in result.stderr and "convmixer_1536_20.onnx does not exist" in result.stderr


def test_missing_checkpoint_is_downloaded_or_the_script_says_why_not(tmp_path):
    """Offline (the release address on a closed port): the download's one line names the address and the
    by-hand command, and nothing is left behind."""
    env = offline_env()
    url = f"{env['CONVMIXER_RELEASE_URL']}/{CHECKPOINT}"
    result = run_script("test/pth2om.sh", "--batch_size=1", "--not_skip_onnx=true", cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert f"convmixer_pth2onnx.py: error: cannot download {url}: Connection refused. Fetch it by hand: " \
           f"wget -O {CHECKPOINT} {url}" in result.stderr
    assert f"pth2om.sh: error: ONNX export of ./{CHECKPOINT} failed" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_download_false_names_the_release_address(tmp_path):
    result = run_script("test/pth2om.sh", "--download=false", cwd=tmp_path, env={"CONVMIXER_RELEASE_URL": ""})
    assert result.returncode != 0
    assert f"{CHECKPOINT}: checkpoint not found (--no-download). Fetch it by hand: wget -O {CHECKPOINT} " \
           f"{convmixer_net.ARCHS['convmixer_1536_20'].url}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_failed_export_stops_the_script(tmp_path):
    (tmp_path / CHECKPOINT).write_text("not a checkpoint")
    result = run_script("test/pth2om.sh", cwd=tmp_path)
    assert result.returncode != 0
    assert "looks like a text file" in result.stderr and "ONNX export of" in result.stderr
    assert "==> 2." not in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["--batch-size=1"], "unknown argument '--batch-size=1'"),
    (["--batch_size", "1"], "unknown argument '--batch_size'"),
    (["--batch_size=0"], "--batch_size=0: must be a positive integer"),
    (["--not_skip_onnx=yes"], "--not_skip_onnx=yes: must be true or false"),
    (["--download=no"], "--download=no: must be true or false"),
])
def test_bad_flags_get_a_clear_line(tmp_path, args, expected):
    result = run_script("test/pth2om.sh", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.startswith("pth2om.sh: error: ") and expected in result.stderr
