"""Errors a user can cause, and failures of the conversion tools. The CLI prints them on stderr
without a traceback and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 1."""

    exit_code = 1


class UsageError(UserError):
    """A command line that asks for something impossible (a bound, a core that does not exist):
    one line, exit code 2 like Click's own usage errors."""

    exit_code = 2


class ArtifactError(UserError):
    """A build artifact is missing, corrupt or does not match PyTorch."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI timeout, ``docker stop``, ``kill``): handled exactly like Ctrl-C, exit code 143."""


class ToolError(Exception):
    """A conversion tool failed on a valid input (TensorFlow's converter, the TFLite child process
    crashed or was killed): its message (the tool's last log lines) without a traceback, exit code
    3. ``EDGECONV_DEBUG=1`` shows the traceback, and :attr:`detail` if any."""

    exit_code = 3

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail

    def __reduce__(self):  # crosses the pipe from the TFLite child process with its detail
        return (type(self), (str(self), self.detail))
