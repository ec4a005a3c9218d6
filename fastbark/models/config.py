"""What every model config checks."""

from __future__ import annotations


def check_positive_ints(config, names: tuple[str, ...]) -> None:
    """ValueError naming the first field of `config` in `names` that is not a positive integer (bools are not)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
