"""Errors whose message already names what is wrong and the fix (file, case, field or config key).

Every entry point (the stages through ``backlens.cli.run_stage``, the workflow at DAG time)
prints such an error as one line, ``error: <message>``, and exits non-zero without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration; the message is the whole explanation."""


class ConfigError(UserError, ValueError):
    """A configuration value is missing, of the wrong type or out of range; the message names the key."""


def positive_int(value: object, key: str, *, at_most: int | None = None, what: str = "") -> int:
    """``value`` as an integer >= 1 (and <= ``at_most``), or a ConfigError naming ``key``."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not an integer; give a whole number >= 1") from None
    if number < 1:
        raise ConfigError(f"{key}={number} must be at least 1")
    if at_most is not None and number > at_most:
        raise ConfigError(f"{key}={number} is larger than {what or at_most} ({at_most}); give at most {at_most}")
    return number
