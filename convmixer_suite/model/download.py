"""Fetching a released ConvMixer checkpoint when the one asked for is missing.

    python3 -m convmixer_suite.model.download ./convmixer_1536_20_ks9_p7.pth.tar

A missing file whose name is one of the released checkpoints (``convmixer_net.ARCHS``: the one table of
names and addresses) is downloaded from the release with a progress bar. The bytes go to a temporary name in
the same folder; the file is renamed to its real name only when the transfer is complete (as many bytes as
Content-Length announced) and the file loads with ``torch.load(weights_only=True)`` as the architecture its
name promises. Beside it go ``<file>.sha256`` (``sha256sum -c`` reads it) and ``<file>.download.json``
(address, size in bytes, sha256, time). Any failure (offline, an HTTP error, a cut transfer, a file that is
no such checkpoint) is one line naming the address and the command to fetch it by hand, and leaves nothing
behind.

``CONVMIXER_RELEASE_URL`` replaces the release's base address (a mirror, or a local server in the tests).
"""
import argparse
import hashlib
import http.client
import json
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from convmixer_suite.model import net as convmixer_net
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import atomic_path, write_text_atomic
from convmixer_suite.util.cli import run_main

LOG = logging.getLogger("convmixer_suite.model.download")  # by name: run with -m, __name__ is "__main__"

RELEASE_URL_ENV = "CONVMIXER_RELEASE_URL"
TIMEOUT_S = 30          # per connect and per read: an offline machine fails fast, a stalled server in 30 s
CHUNK_BYTES = 1 << 20


def release_for(path):
    """The released variant (an ``ArchSpec``) whose checkpoint file is named like ``path``, or None."""
    name = Path(path).name
    return next((spec for spec in convmixer_net.ARCHS.values() if spec.checkpoint == name), None)


def release_url(spec) -> str:
    """The address of a released checkpoint: ``spec.url``, or its file under $CONVMIXER_RELEASE_URL."""
    base = os.environ.get(RELEASE_URL_ENV, "").strip()
    return f"{base.rstrip('/')}/{spec.checkpoint}" if base else spec.url


def by_hand(url: str, path) -> str:
    return f"wget -O {path} {url}  (or: curl -fL -o {path} {url})"


def ensure_checkpoint(path, download: bool = True) -> Path:
    """``path`` itself when it exists or is no released name (the loader then says what is wrong);
    otherwise the released checkpoint downloaded to ``path``, unless ``download`` is False."""
    path = Path(path)
    spec = release_for(path)
    if path.exists() or spec is None:
        return path
    url = release_url(spec)
    if not download:
        raise UserError(f"{path}: checkpoint not found (--no-download). Fetch it by hand: {by_hand(url, path)}")
    return download_checkpoint(path, spec, url)


def download_checkpoint(path, spec, url=None, timeout_s: float = TIMEOUT_S) -> Path:
    """Download ``spec``'s checkpoint to ``path``, check it, record its size and sha256 beside it."""
    path = Path(path)
    url = url or release_url(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp*"):  # left by a download that was killed
        stale.unlink()
    LOG.info(f"{path} not found: downloading {spec.name}'s released weights from {url}")
    with atomic_path(path) as tmp:
        try:
            size_bytes, sha256 = _fetch(url, tmp, timeout_s)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise UserError(f"cannot download {url}: {_why(exc, timeout_s)}. "
                            f"Fetch it by hand: {by_hand(url, path)}") from exc
        _check_loads(tmp, spec, url, path)
        _write_records(path, url, size_bytes, sha256)
    LOG.info(f"downloaded {path}: {size_bytes} bytes, sha256 {sha256} (recorded in {path.name}.sha256)")
    return path


def _fetch(url: str, target: Path, timeout_s: float) -> tuple:
    """Stream ``url`` into ``target`` with a progress bar; (bytes, sha256 hex). A transfer that ends before
    Content-Length bytes is an error."""
    from tqdm import tqdm
    digest, received = hashlib.sha256(), 0
    request = urllib.request.Request(url, headers={"User-Agent": "convmixer-suite"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response, open(target, "wb") as out:
        expected = response.headers.get("Content-Length")
        expected = int(expected) if expected and expected.isdigit() else None
        with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=Path(url).name,
                  file=sys.stderr, leave=False) as bar:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received < expected:
        raise OSError(f"the transfer stopped after {received} of the {expected} bytes announced")
    if received == 0:
        raise OSError("the server sent an empty file")
    return received, digest.hexdigest()


def _why(exc: Exception, timeout_s: float) -> str:
    """One short phrase for a failed transfer."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the transfer stopped with {exc.expected} bytes still to come"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout_s:g} s, this machine may be offline"
    if isinstance(reason, socket.gaierror):
        return f"host not found ({reason.strerror}), this machine may be offline"
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def _check_loads(tmp: Path, spec, url: str, path: Path) -> None:
    """The downloaded bytes must load safely as ``spec``'s model, or they are thrown away."""
    from convmixer_suite.model.checkpoint import load_model
    try:
        load_model(tmp, arch=spec.name)
    except UserError as exc:
        why = str(exc).replace(f"{tmp}: ", "", 1)
        raise UserError(f"the file downloaded from {url} is not {spec.name}'s checkpoint ({why}); nothing was "
                        f"kept. Fetch it by hand: {by_hand(url, path)}") from exc


def _write_records(path: Path, url: str, size_bytes: int, sha256: str) -> None:
    """``<file>.sha256`` in sha256sum's format and ``<file>.download.json`` with the size and address."""
    write_text_atomic(path.with_name(path.name + ".sha256"), f"{sha256}  {path.name}\n")
    record = {"file": path.name, "url": url, "size_bytes": size_bytes, "sha256": sha256,
              "downloaded_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_text_atomic(path.with_name(path.name + ".download.json"), json.dumps(record, indent=2) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = ", ".join(spec.checkpoint for spec in convmixer_net.ARCHS.values())
    parser.add_argument("path", help=f"where the checkpoint goes; its name must be a released one ({names})")
    args = parser.parse_args(argv)
    if release_for(args.path) is None:
        raise UserError(f"{args.path}: not a released checkpoint's name (one of {names})")
    path = ensure_checkpoint(args.path)
    print(f"{path}: ready")


if __name__ == "__main__":
    run_main(main)
