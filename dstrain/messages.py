"""Pieces of the one-line error messages that every check of user input shares (recipe, task, architecture, --set).

Why a module of its own: every echo of a user's value goes through :func:`shown`, so no
message can grow with the input (a 10^7-element alias expansion, a megabyte-long key or a
5000-digit integer is shown in a couple of hundred characters), and the three pydantic
error formatters (recipe sections, task configs, architecture options) say the same thing
about infinities, NaNs and YAML 1.1 booleans.
"""
from __future__ import annotations

import math
import reprlib
from typing import Any, Dict, Optional

#: Longest echo of a user's value in an error message, ellipsis included.
MAX_SHOWN = 200

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 8
_REPR.maxstring = _REPR.maxother = MAX_SHOWN


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)``, bounded: big containers, long strings and huge integers stay short.

    ``repr`` of an int above 4300 digits raises, and of a nested structure costs time in
    its size, so both are summarised before anything is formatted.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 600:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named by its type
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


def pydantic_problem(error: Dict[str, Any]) -> Optional[str]:
    """The problem of one pydantic error, where the default wording would mislead; else None.

    ``finite_number``: pydantic says "Input should be a finite number"; the message names
    the value instead (``inf is not a finite number``).
    """
    if error["type"] == "finite_number":
        return f"{shown(error.get('input'))} is not a finite number"
    return None


def pydantic_fix(error: Dict[str, Any]) -> Optional[str]:
    """The fix for one pydantic error where a generic "got X" would not say what to write; else None."""
    kind, value = error["type"], error.get("input")
    if kind == "finite_number":
        return "write a finite number (.inf, -.inf and .nan are refused)"
    if kind == "bool_type":
        return f"got {shown(value)}; use true or false"
    return None
