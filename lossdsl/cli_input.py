"""What the command line reads besides its formula: ``--units`` and ``--params``, the lines
of ``check --stdin`` and the arrays of ``eval``. A value that cannot be read is a
``UsageError`` (exit status 2) that says what the option takes, never a raw exception:

>>> units_arg("2"), units_arg('{"p": 0, "loc": [1, 3]}')
(2, {'p': 0, 'loc': [1, 3]})
>>> try:
...     units_arg("two")
... except UsageError as e:
...     print(e)
--units takes the output width (a whole number, such as 2) or a JSON mapping of unit names,
such as '{"p": 0, "loc": [1, 3]}'. Received: 'two' (not JSON: Expecting value at column 1).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from typing import Any, TextIO

__all__ = ["UsageError", "load_array", "params_arg", "read_lines", "units_arg"]


class UsageError(Exception):
    """A command line that cannot run: exit status 2, the message on stderr."""


_WIDTH = re.compile(r"\s*([0-9]+)\s*")  # ASCII digits only: '²' and '٣' are not widths
_MAX_DIGITS = 18  # of an integer in --units: far past any output width
_UNITS_HELP = (
    "--units takes the output width (a whole number, such as 2) or a JSON mapping of unit "
    """names, such as '{"p": 0, "loc": [1, 3]}'"""
)
_PARAMS_HELP = (
    """--params takes a JSON mapping of parameter names to numbers, such as '{"alpha": 0.7}'"""
)


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _no_duplicates(option: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise UsageError(f"{option}: the key {key!r} appears twice.")
            out[key] = value
        return out

    return build


def _json(text: str, option: str, usage: str, parse_int: Callable[[str], Any]) -> Any:
    try:
        return json.loads(text, parse_int=parse_int, object_pairs_hook=_no_duplicates(option))
    except json.JSONDecodeError as e:
        raise UsageError(
            f"{usage}. Received: {_short(text)} (not JSON: {e.msg} at column {e.colno})."
        ) from None
    except RecursionError:
        raise UsageError(f"{usage}. Received: JSON nested too deeply to read.") from None


def _integer(option: str) -> Callable[[str], int]:
    def read(digits: str) -> int:
        if len(digits.lstrip("-").lstrip("0")) > _MAX_DIGITS:
            raise UsageError(
                f"{option}: the number {_short(digits)} ({len(digits):,} digits) is too large."
            )
        return int(digits)

    return read


def _number(digits: str) -> float:
    value = float(digits)  # an integer parameter is a float like any other
    if value in (float("inf"), float("-inf")):
        raise UsageError(
            f"--params: the number {_short(digits)} ({len(digits):,} digits) is too large "
            "for a float."
        )
    return value


def units_arg(text: str | None) -> Any:
    """``--units``: ``None``, a width, or the JSON value (a mapping, checked by the spec)."""
    if text is None:
        return None
    width = _WIDTH.fullmatch(text)
    if width is not None:
        return _integer("--units")(width.group(1))
    return _json(text, "--units", _UNITS_HELP, _integer("--units"))


def params_arg(text: str | None) -> Any:
    """``--params``: the JSON value (a mapping, checked by the spec), ``{}`` when absent."""
    if text is None:
        return {}
    return _json(text, "--params", _PARAMS_HELP, _number)


def read_lines(stream: TextIO, limit: int) -> Iterator[str | None]:
    """Each line of ``stream`` without its line break, or ``None`` for a line longer than
    ``limit`` characters, whose rest is read and dropped: no more than ``limit + 1``
    characters of a line are held at once."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if line.endswith("\n"):
            yield line[:-1]
        elif len(line) <= limit:
            yield line  # the last line, without a line break
        else:
            while line and not line.endswith("\n"):
                line = stream.readline(limit + 1)
            yield None


def load_array(path: str, option: str) -> Any:
    """The array in the ``.npy`` file at ``path``: numbers or booleans, no pickled objects."""
    import numpy as np

    def refuse(why: str) -> UsageError:
        return UsageError(
            f"{option} {path}: {why}. eval reads arrays of numbers or booleans saved with "
            "numpy.save (.npy files)."
        )

    try:
        info = os.stat(path)
    except (OSError, ValueError) as e:
        raise refuse(f"cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(info.st_mode):
        raise refuse("it is not a regular file")
    try:
        # Mapped, not read: a header that claims more data than the file holds is an error
        # here, not a huge allocation.
        value = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as e:  # any reader's error on a file that is not a .npy of numbers
        raise refuse(f"cannot read it ({e})") from None
    if not isinstance(value, np.ndarray):
        close = getattr(value, "close", None)
        if close is not None:
            close()
        raise refuse("it is an .npz archive, not one array")
    if value.dtype.kind not in "biuf":
        raise refuse(f"it holds values of type {value.dtype}")
    return np.array(value)
