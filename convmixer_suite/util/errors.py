"""The library's error types: a user's mistake, worded so a command line can print it as one line."""


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
