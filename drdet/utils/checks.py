"""The one form of a config-value check, for every module that validates its own config keys."""

from typing import Any


def require(ok: bool, full_key: str, value: Any, what: str) -> None:
    """ValueError("config key <full_key> = <value> is invalid: <what>") unless ``ok``."""
    if not ok:
        raise ValueError(f"config key {full_key} = {value!r} is invalid: {what}")
