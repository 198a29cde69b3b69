"""convmixer_patch.patch against upstream locuslab/convmixer at d5fb538, where a mirror of upstream is present.

CI machines have no copy of upstream (and no network), so these tests skip there, saying why; set
CONVMIXER_UPSTREAM_GIT to a clone's git directory to run them anywhere.
"""
import importlib.util
import os
import re
import subprocess
from pathlib import Path

import onnx
import pytest
import torch
from conftest import REPO, SMALL, seeded_model

import convmixer_net
from convmixer_suite.model import export

UPSTREAM_GIT = Path(os.environ.get("CONVMIXER_UPSTREAM_GIT", "/work/.mirror/locuslab+convmixer/repo"))
UPSTREAM_COMMIT = "d5fb538"
PATCH = REPO / "convmixer_patch.patch"

pytestmark = pytest.mark.skipif(not UPSTREAM_GIT.is_dir(),
                                reason=f"no copy of upstream locuslab/convmixer at {UPSTREAM_GIT} "
                                       "(set CONVMIXER_UPSTREAM_GIT to a clone's .git)")


def git(*args, cwd=None):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def patched(tmp_path_factory):
    """Upstream's convmixer.py at d5fb538 in a fresh repository, with the patch applied; returns the module."""
    work = tmp_path_factory.mktemp("upstream")
    git("init", "-q", cwd=work)
    (work / "convmixer.py").write_text(git("--git-dir", str(UPSTREAM_GIT), "show",
                                           f"{UPSTREAM_COMMIT}:convmixer.py"))
    git("apply", "--check", str(PATCH), cwd=work)
    git("apply", str(PATCH), cwd=work)
    spec = importlib.util.spec_from_file_location("patched_convmixer", work / "convmixer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_patch_is_made_against_upstreams_file_at_d5fb538():
    blob = git("--git-dir", str(UPSTREAM_GIT), "rev-parse", f"{UPSTREAM_COMMIT}:convmixer.py").strip()
    pre_image = re.search(r"^index ([0-9a-f]+)\.\.", PATCH.read_text(), re.M).group(1)
    assert blob.startswith(pre_image)


def test_patch_makes_the_three_changes(patched):
    source = Path(patched.__file__).read_text()
    assert "import torch\n" in source
    assert 'padding="same"' not in source and "padding=kernel_size//2" in source
    assert callable(patched.convmixer_1536_20)


def test_patched_model_matches_ours_on_the_same_weights(patched):
    ours = seeded_model(seed=4)
    theirs = patched.ConvMixer(**SMALL).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x))


def test_patched_builder_is_convmixer_1536_20(patched):
    with torch.device("meta"):
        theirs = patched.convmixer_1536_20().state_dict()
        ours = convmixer_net.convmixer_1536_20().state_dict()
    assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}


def test_patched_model_exports_to_onnx_opset_11(patched, tmp_path):
    model = patched.ConvMixer(**SMALL).eval()
    path = tmp_path / "patched.onnx"
    export.export_onnx(model, path, opset=11)
    onnx.checker.check_model(str(path))
    assert export.verify_onnx(model, path, (1,)).max_rel_diff <= 1e-4
