"""What every command line shares: one-line errors for user mistakes (exit 2), the Python the modern stack needs,
and argparse types."""
import argparse
import sys
from pathlib import Path

from convmixer_suite.util.errors import SettingError, UserError


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


def positive_int(text: str) -> int:
    """An argparse type for counts and sizes: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
