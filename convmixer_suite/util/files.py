"""Files written whole or not at all (a temporary name, then a rename), folders made on demand, and file
digests."""
import contextlib
import hashlib
import os
from pathlib import Path

from convmixer_suite.util.errors import UserError


def output_folder(path, flag: str) -> Path:
    """``path`` as a folder, made if missing; a UserError naming ``flag`` when it is a file or cannot be made."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {folder}: cannot be used as a folder ({exc.strerror})") from exc
    return folder


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    A crash or an exception leaves no file under the final name, so a half-written file is never
    taken for a finished one, and a rerun knows which files are done.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()
