"""Small helpers with no normlab imports, at the bottom of the stack (anything may import them)."""
from __future__ import annotations

__all__ = ["duration"]


def duration(seconds: float) -> str:
    """A wall-clock time as people read it: '42s', '3m05s', '2h07m' (rounded to whole seconds; minutes and seconds
    zero-padded after the first unit).

    >>> duration(42.4), duration(185), duration(7625)
    ('42s', '3m05s', '2h07m')
    """
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
