"""What every command-line script shares: one-line errors for user mistakes, optional libraries imported with an
install hint, and atomic file writes."""
import argparse
import contextlib
import importlib
import os
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input (a missing or malformed file, a bad flag value).

    Scripts raise it with a message that names the file and what is wrong; ``run_main`` prints that
    message as one line and exits with status 2, without a traceback.
    """


class SettingError(UserError):
    """A runtime setting (``precision``, ``device``, ``threads``, ``backend``) whose value cannot be used, raised by
    the library in plain words: ``str`` is "precision 'fp16': choose one of …". A command line words it with its
    flag instead (``flag_message``: "--precision 'fp16': …"), which ``run_main`` prints."""

    def __init__(self, setting: str, text: str):
        super().__init__(setting, text)
        self.setting, self.text = setting, text

    def __str__(self) -> str:
        return f"{self.setting} {self.text}"

    def flag_message(self) -> str:
        return f"--{self.setting.replace('_', '-')} {self.text}"


# The Python the modern stack (OpenVINO and NNCF, Ray, LoadGen, the benchmark, the GPU precisions) needs. The
# guide's scripts run on older ones too, down to the guide's Python 3.7 (README, "Older Pythons").
MODERN_PYTHON = (3, 10)


def run_main(main, argv=None, modern_stack=False) -> None:
    """Run ``main(argv)`` and exit: 0 on success, 2 with one ``prog: error: …`` line on a UserError (a
    SettingError worded with its flag), 130 on Ctrl-C. ``modern_stack``: the script needs ``MODERN_PYTHON``,
    and says so in one line (exit 2) on an older one."""
    if modern_stack and sys.version_info < MODERN_PYTHON:
        print_error(f"needs Python {'.'.join(map(str, MODERN_PYTHON))} or later (this is Python "
                    f"{sys.version.split()[0]}); the guide's scripts run on older Pythons")
        sys.exit(2)
    try:
        status = main(argv)
    except UserError as exc:
        print_error(exc.flag_message() if isinstance(exc, SettingError) else exc)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{Path(sys.argv[0]).name}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


def print_error(message) -> None:
    """One ``prog: error: …`` line on stderr: for a UserError, or for one bad item a script skips."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)


def import_library(module: str, needed_by: str, hint: str):
    """Import an optional library, or raise a UserError: ``needed_by`` (say "the openvino backend") needs it,
    and ``hint`` is the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{needed_by} needs the Python package '{module}', which cannot be imported "
                        f"({exc.__class__.__name__}); install it with: {hint}") from None


def positive_int(text: str) -> int:
    """An argparse type for counts and sizes: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def output_folder(path, flag: str) -> Path:
    """``path`` as a folder, made if missing; a UserError naming ``flag`` when it is a file or cannot be made."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {folder}: cannot be used as a folder ({exc.strerror})") from None
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
