"""convmixer_suite.model.download against a local HTTP server on 127.0.0.1: a good transfer, a transfer cut in the
middle, a 404, a file that is not a checkpoint, a wrong model, no server at all and a server that never
answers. Each ends with one clear line and leaves nothing half-written; the good one loads."""
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, closed_port, seeded_model

import convmixer_net
from convmixer_suite.commands import pth2onnx as pth2onnx_command
from convmixer_suite.model import download
from convmixer_suite.model.checkpoint import load_model
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.cli import run_main

SPEC = convmixer_net.ARCHS["convmixer_768_32"]          # the smallest release (85 MB): made at full size
NAME = SPEC.checkpoint


@pytest.fixture
def release(release_server, monkeypatch):
    """The local server as the release's base address; returns (server, the address of NAME)."""
    monkeypatch.setenv(download.RELEASE_URL_ENV, release_server.base)
    return release_server, f"{release_server.base}/{NAME}"


@pytest.fixture(scope="module")
def release_bytes():
    """A seeded ConvMixer-768/32 in the locuslab release's layout (a raw nn.Sequential state dict)."""
    model = seeded_model(dim=SPEC.dim, depth=SPEC.depth, kernel_size=SPEC.kernel_size, patch_size=SPEC.patch_size)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue(), model.state_dict()


def serve(server, body, **kwargs):
    server.serve(NAME, body, **kwargs)


def assert_nothing_left(folder):
    assert list(folder.iterdir()) == [], [p.name for p in folder.iterdir()]


def failure(path, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        download.ensure_checkpoint(path, **kwargs)
    return str(info.value)


def test_release_names_and_addresses_come_from_convmixer_net(monkeypatch):
    monkeypatch.delenv(download.RELEASE_URL_ENV, raising=False)
    assert download.release_for(f"some/dir/{NAME}") is SPEC
    assert download.release_for("my_model.pth.tar") is None
    assert download.release_url(SPEC) == \
        "https://github.com/tmp-iclr/convmixer/releases/download/v1.0/convmixer_768_32_ks7_p7_relu.pth.tar"
    monkeypatch.setenv(download.RELEASE_URL_ENV, "http://mirror.example/convmixer/")
    assert download.release_url(SPEC) == f"http://mirror.example/convmixer/{NAME}"


def test_good_download_is_checked_recorded_and_loads(tmp_path, release, release_bytes, capsys):
    server, url = release
    body, state_dict = release_bytes
    serve(server, body)
    path = tmp_path / NAME
    (tmp_path / f".{NAME}.tmp999").write_bytes(body[:100])  # left by an earlier download killed midway
    assert download.ensure_checkpoint(path) == path
    assert path.read_bytes() == body
    sha256 = hashlib.sha256(body).hexdigest()
    assert (tmp_path / f"{NAME}.sha256").read_text() == f"{sha256}  {NAME}\n"
    record = json.loads((tmp_path / f"{NAME}.download.json").read_text())
    assert (record["url"], record["size_bytes"], record["sha256"]) == (url, len(body), sha256)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([NAME, f"{NAME}.sha256", f"{NAME}.download.json"])
    err = capsys.readouterr().err
    assert f"downloading convmixer_768_32's released weights from {url}" in err
    assert f"{len(body)} bytes, sha256 {sha256}" in err
    model, spec = load_model(path)
    assert spec is SPEC
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state_dict.items())
    if shutil.which("sha256sum"):
        assert subprocess.run(["sha256sum", "-c", f"{NAME}.sha256"], cwd=tmp_path).returncode == 0
    # present now: no second transfer
    assert download.ensure_checkpoint(path) == path and len(server.requests) == 1


def test_transfer_cut_in_the_middle_leaves_nothing(tmp_path, release, release_bytes):
    server, url = release
    body, _ = release_bytes
    serve(server, body[:len(body) // 2], announced=len(body))
    message = failure(tmp_path / NAME)
    assert message == (f"cannot download {url}: the transfer stopped after {len(body) // 2} of the {len(body)} "
                       f"bytes announced. Fetch it by hand: {download.by_hand(url, tmp_path / NAME)}")
    assert "wget -O" in message and "curl -fL -o" in message
    assert_nothing_left(tmp_path)


def test_http_404_is_one_line_with_the_address(tmp_path, release):
    server, url = release
    message = failure(tmp_path / NAME)
    assert message.startswith(f"cannot download {url}: HTTP 404 Not Found. Fetch it by hand: wget -O ")
    assert server.requests == [f"/v1.0/{NAME}"]
    assert_nothing_left(tmp_path)


def test_a_page_that_is_not_a_checkpoint_is_thrown_away(tmp_path, release):
    server, url = release
    serve(server, b"<html><body>Sign in to GitHub</body></html>\n")
    message = failure(tmp_path / NAME)
    assert message.startswith(f"the file downloaded from {url} is not convmixer_768_32's checkpoint (not a "
                              f"checkpoint (it looks like a text file")
    assert "nothing was kept. Fetch it by hand: wget -O" in message
    assert_nothing_left(tmp_path)


def test_a_checkpoint_of_another_model_is_thrown_away(tmp_path, release):
    server, url = release
    buffer = io.BytesIO()
    torch.save(seeded_model().state_dict(), buffer)   # the small test model under the release's name
    serve(server, buffer.getvalue())
    message = failure(tmp_path / NAME)
    assert f"the file downloaded from {url} is not convmixer_768_32's checkpoint (" in message
    assert "does not fit convmixer_768_32" in message
    assert_nothing_left(tmp_path)


def test_no_server_is_one_line_and_fast(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/v1.0/{NAME}"
    monkeypatch.setenv(download.RELEASE_URL_ENV, url.rsplit("/", 1)[0])
    start = time.monotonic()
    message = failure(tmp_path / NAME)
    assert time.monotonic() - start < 5
    assert message.startswith(f"cannot download {url}: Connection refused. Fetch it by hand: ")
    assert_nothing_left(tmp_path)


def test_a_server_that_never_answers_times_out(tmp_path, release):
    server, url = release
    serve(server, b"late", delay_s=3)
    with pytest.raises(UserError) as info:
        download.download_checkpoint(tmp_path / NAME, SPEC, timeout_s=0.5)
    assert str(info.value).startswith(f"cannot download {url}: no answer within 0.5 s, this machine may be offline. Fetch it by hand: ")
    assert_nothing_left(tmp_path)


def test_no_download_and_unreleased_names(tmp_path, release):
    server, url = release
    message = failure(tmp_path / NAME, download=False)
    assert message == f"{tmp_path / NAME}: checkpoint not found (--no-download). Fetch it by hand: " \
                      f"{download.by_hand(url, tmp_path / NAME)}"
    other = tmp_path / "mine.pth.tar"
    assert download.ensure_checkpoint(other) == other   # not ours to fetch: the loader reports it missing
    assert server.requests == [] and not other.exists()


def run_pth2onnx(*argv):
    with pytest.raises(SystemExit) as exit_info:
        run_main(pth2onnx_command.main, [str(a) for a in argv])
    return exit_info.value.code


def test_pth2onnx_downloads_a_missing_release_or_says_why_not(tmp_path, release, capsys):
    server, url = release
    source, target = tmp_path / NAME, tmp_path / "m.onnx"
    assert run_pth2onnx("--source", source, "--target", target) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"error: cannot download {url}: HTTP 404 Not Found. Fetch it by hand: wget -O {source}" in err[-1]
    assert run_pth2onnx("--source", source, "--target", target, "--no-download") == 2
    assert "checkpoint not found (--no-download)" in capsys.readouterr().err
    assert len(server.requests) == 1 and list(tmp_path.iterdir()) == []


def run_module(*args):
    """``python3 -m convmixer_suite.model.download ARGS`` from the repository (the environment carries the base URL)."""
    return subprocess.run([sys.executable, "-m", "convmixer_suite.model.download", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_download_command_line(tmp_path, release, release_bytes):
    server, url = release
    serve(server, release_bytes[0])
    result = run_module(tmp_path / NAME)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / NAME}: ready\n" and (tmp_path / f"{NAME}.sha256").is_file()
    result = run_module(tmp_path / "mine.pth.tar")
    assert result.returncode == 2 and "not a released checkpoint's name" in result.stderr
