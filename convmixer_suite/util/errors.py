"""The library's error types: a user's mistake, worded so a command line can print it as one line."""


class UserError(Exception):
    """A mistake in the user's input (a missing or malformed file, a bad flag value).

    Scripts raise it with a message that names the file and what is wrong; ``run_main`` prints that
    message as one line and exits with status 2, without a traceback. ``unavailable``: not a mistake in the
    input but something this machine lacks (see NotAvailable).
    """
    unavailable = False


class NotAvailable(UserError):
    """Something this machine lacks: an optional library, an external tool, a device, a CPU feature. A command
    line says so in one line (exit 2), as for a UserError; the benchmark skips a configuration that needs it
    rather than counting it as failed."""
    unavailable = True


class SettingError(UserError):
    """A runtime setting (``precision``, ``device``, ``threads``, ``backend``) whose value cannot be used, raised by
    the library in plain words: ``str`` is "precision 'fp16': choose one of …". A command line words it with its
    flag instead (``flag_message``: "--precision 'fp16': …"), which ``run_main`` prints. ``unavailable``: the
    value is sound but this machine lacks what it needs (no such device here, say)."""

    def __init__(self, setting: str, text: str, unavailable: bool = False):
        super().__init__(setting, text)
        self.setting, self.text, self.unavailable = setting, text, unavailable

    def __str__(self) -> str:
        return f"{self.setting} {self.text}"

    def flag_message(self) -> str:
        return f"--{self.setting.replace('_', '-')} {self.text}"


class ToolError(RuntimeError):
    """An external program (a compiler, a converter, an accelerator's runner) that failed or did not write what
    it should have: the tool's own failure, not the user's; the message ends with what the tool said."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, or its type's name when it has none."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
