"""Progress bars that show on a terminal and stay out of CI logs."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    """True on an interactive terminal, unless ``CI`` or ``IPGUARD_PROGRESS=0`` says otherwise."""
    if os.environ.get("IPGUARD_PROGRESS") in {"0", "false", "no"} or os.environ.get("CI"):
        return False
    return sys.stderr.isatty()


def bar(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (on stderr) that is disabled where :func:`progress_enabled` is false."""
    return tqdm(iterable, disable=not progress_enabled(), leave=False, dynamic_ncols=True, **kwargs)
