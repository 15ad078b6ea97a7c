"""Human sizes (``256M``, ``1.5G``) for options."""

from __future__ import annotations

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional binary suffix (K, M, G, T, P)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    number = t[: len(t) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 256M or 1G)") from None
    if value < 0:
        raise ValueError(f"not a size: {text!r}")
    return int(value * _UNITS[unit])
