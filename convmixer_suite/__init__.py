"""Shared code behind the convmixer_*.py scripts and test/ wrappers.

The library's notices (a fallback taken, a cached file reused, a download started) go through ``logging``, to the
logger of the module that gives them (``logging.getLogger(__name__)``, under ``convmixer_suite``), and come out on
stderr as ``[INFO] message``. stdout is kept for msame's log lines, which test/parse.py and the guide's scripts read.
"""
import logging
import sys


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a notice is given (a redirect, pytest's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _setup_notices() -> None:
    logger = logging.getLogger(__name__)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


_setup_notices()
