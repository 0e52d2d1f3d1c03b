"""ipguard: fingerprint a classifier's boundary to detect pirated copies (IPGuard, AsiaCCS 2021)."""

__version__ = "0.1.0"
