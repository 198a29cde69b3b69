"""Optional libraries, imported where they are needed, with a one-line install hint when they are missing."""
import importlib

from convmixer_suite.util.errors import NotAvailable


def import_library(module: str, needed_by: str, hint: str):
    """Import an optional library, or raise NotAvailable (a UserError): ``needed_by`` (say "the openvino
    backend") needs it, and ``hint`` is the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NotAvailable(f"{needed_by} needs the Python package '{module}', which cannot be imported "
                           f"({exc.__class__.__name__}); install it with: {hint}") from exc
