"""Optional, heavy dependencies: imported on demand, with a message that says what to install."""
from __future__ import annotations

import importlib

from .errors import StationError


def require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        torch_hint = " (and torch==2.13.0 first, for the CPU build)" if extra == "export" else ""
        raise StationError(f"{module} is not installed: pip install 'field-station[{extra}]'{torch_hint}") from None
