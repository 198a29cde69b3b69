"""Loading the benchmark's configurations one by one: each is loaded, skipped (this machine lacks what it needs:
an optional library, a device, a CPU feature), or failed (anything else, a runtime's own error included), with
its one line."""
import traceback

from convmixer_suite.util.cli import debug_requested, failure_line
from convmixer_suite.util.errors import UserError


def load_each(names, load, log=print, announce=lambda name: f"==> loading {name}", required=(),
              raise_failures=False) -> tuple:
    """({name: load(name)} of those that loaded, {name: why skipped}, {name: why it failed}). A name of
    ``required`` that does not load raises its exception, its cause kept: nothing is measured without it; so
    does any failure with ``raise_failures``."""
    loaded, skipped, failed = {}, {}, {}
    for name in names:
        log(announce(name))
        try:
            loaded[name] = load(name)
        except Exception as exc:
            unavailable = isinstance(exc, UserError) and exc.unavailable
            if name in required or (raise_failures and not unavailable):
                raise
            if unavailable:
                skipped[name] = str(exc)
                log(f"    skipped: {skipped[name]}")
            else:
                failed[name] = str(exc) if isinstance(exc, UserError) else failure_line(exc)
                log(f"    FAILED: {failed[name]}")
                if debug_requested():
                    log(traceback.format_exc().rstrip())
    return loaded, skipped, failed
