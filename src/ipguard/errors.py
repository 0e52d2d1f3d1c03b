"""Errors that the CLI and the stages report as one line and exit status 2."""

from __future__ import annotations


class IpguardError(Exception):
    """Bad input from the user: a file or config key that cannot be used as it is.

    The message names the file or the key; the command-line entry points print it alone and exit
    with status 2 instead of showing a traceback.
    """


class ConfigError(IpguardError, ValueError):
    """An unknown, missing or ill-typed config key."""


class ModelFileError(IpguardError):
    """A model file (weights or sidecar) that is missing, corrupt or does not fit."""


class FingerprintFileError(IpguardError):
    """A fingerprint file that is missing, corrupt, or whose hash or structure is wrong."""
