"""Errors a user can cause. The CLI prints them as one line on stderr and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 1."""

    exit_code = 1


class ArtifactError(UserError):
    """A build artifact is missing, corrupt or does not match PyTorch."""
