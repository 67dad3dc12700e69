"""Exceptions shared by every layer; the CLI maps them to exit codes."""


class TreeclipError(Exception):
    """Base class of errors that carry a message meant for the user."""


class UsageError(TreeclipError, ValueError):
    """A wrong argument, option, path or configuration value (exit code 2)."""


class InputError(TreeclipError):
    """Some inputs of a job failed while the rest ran (exit code 1)."""
