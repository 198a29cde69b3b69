"""What every command line shares: one-line errors (exit 2 for user mistakes, 1 for any other failure, whose
traceback ``--debug`` shows), the Python the modern stack needs, and argparse types."""
import argparse
import os
import sys
import traceback
from pathlib import Path

from convmixer_suite.util.errors import SettingError, UserError, first_line


# The Python the modern stack (OpenVINO and NNCF, Ray, LoadGen, the benchmark, the GPU precisions) needs. The
# guide's scripts run on older ones too, down to the guide's Python 3.7 (README, "Older Pythons").
MODERN_PYTHON = (3, 10)


DEBUG_FLAG = "--debug"  # anywhere on a command line: a failure prints its traceback (run_main takes it out)
DEBUG_ENV = "CONVMIXER_DEBUG"  # "1": the same for every command of a shell or a script


def run_main(main, argv=None, modern_stack=False) -> None:
    """Run ``main(argv)`` and exit: 0 on success (or ``main``'s own status); 2 with one ``prog: error: …`` line
    on a UserError (a SettingError worded with its flag; only its first line, should a library have added lines
    to it); 1 on any other exception, in one line with its type and the way to see its traceback; 130 on Ctrl-C.
    With ``--debug`` among the arguments (taken out before ``main`` sees them, and set as CONVMIXER_DEBUG=1 while
    it runs) or CONVMIXER_DEBUG=1, a failure prints its whole traceback instead, its causes included, with the
    same status.
    ``modern_stack``: the script needs ``MODERN_PYTHON``, and says so in one line (exit 2) on an older one."""
    if modern_stack and sys.version_info < MODERN_PYTHON:
        print_error(f"needs Python {'.'.join(map(str, MODERN_PYTHON))} or later (this is Python "
                    f"{sys.version.split()[0]}); the guide's scripts run on older Pythons")
        sys.exit(2)
    args = sys.argv[1:] if argv is None else list(argv)
    previous = os.environ.get(DEBUG_ENV)
    if DEBUG_FLAG in args:
        argv = [arg for arg in args if arg != DEBUG_FLAG]
        os.environ[DEBUG_ENV] = "1"  # for what the library records instead of raising, and its child processes
    try:
        sys.exit(run_reporting_failures(main, argv))
    finally:
        if previous is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = previous


def run_reporting_failures(main, argv) -> int:
    """``main(argv)``'s status, or the exit status of the failure it raised, printed as ``run_main`` says."""
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print(f"{Path(sys.argv[0]).name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        user_error = isinstance(exc, UserError)
        if debug_requested():
            traceback.print_exc()
        elif user_error:
            print_error(exc.flag_message() if isinstance(exc, SettingError) else first_line(exc))
        else:
            print_error(f"{failure_line(exc)} (run with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback)")
        return 2 if user_error else 1


def debug_requested() -> bool:
    """Whether the user asked for tracebacks (``--debug`` on a command line, or CONVMIXER_DEBUG=1)."""
    return os.environ.get(DEBUG_ENV) == "1"


def failure_line(exc: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def print_error(message) -> None:
    """One ``prog: error: …`` line on stderr: for a UserError, or for one bad item a script skips."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)


def positive_int(text: str) -> int:
    """An argparse type for counts and sizes: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
