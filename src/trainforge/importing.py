"""``"package.module:name"`` references, as configs and data specs give models, tasks and filters.

One function, ``import_object``, turns such a reference into the object, and every failure into
a ``ValueError`` that names the reference, the part that is missing and, where it can, the fix.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import Any

__all__ = ["import_object"]


def import_object(ref: Any, *, callable_only: bool = False) -> Any:
    """``'package.module:attr'`` (``attr`` may be dotted: ``'mod:Class.method'``) -> the object.

    Raises ValueError for a reference of the wrong shape, a module that cannot be imported, a
    missing attribute (suggesting close names) and, with ``callable_only``, an object that is not
    callable. An error raised by the module's own code while it is imported propagates as it is.
    """
    text = str(ref)
    module_name, sep, attr = text.partition(":")
    if not isinstance(ref, str) or not sep or not module_name or not attr:
        raise ValueError(f"{ref!r} must look like 'package.module:name' (e.g. 'mypkg.models:build')")
    _current_directory_importable()
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} (from {text!r}): {e}; check the spelling, "
                         "and that it is installed or its directory is on PYTHONPATH") from None
    parts = attr.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            where = ".".join([module_name, *parts[:i]])
            close = difflib.get_close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"module {module_name!r} has no attribute {'.'.join(parts[:i + 1])!r} "
                             f"({where!r} has no {part!r}; from {text!r}){hint}")
        obj = getattr(obj, part)
    if callable_only and not callable(obj):
        raise ValueError(f"{text!r} is a {type(obj).__name__}, not a callable")
    return obj


def _current_directory_importable() -> None:
    """The directory trainforge runs from is importable, as with ``python -m``: a config's
    ``model: mypkg.models:build`` finds ``./mypkg`` without PYTHONPATH (the console script that
    ``trainforge`` is does not put it on ``sys.path`` by itself)."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
