"""Reading a config file: its text, safely, and its data, with the place of each problem.

A config file is untrusted input, so it is read in bounded time and memory: only a regular
file (a FIFO or ``/dev/zero`` would block or never end), of at most ``MAX_CONFIG_BYTES``
bytes, decoded as UTF-8. The data is parsed as YAML (``lossdsl.config_yaml``), TOML or JSON by
the file's suffix. A key set twice in one mapping is an error in every format (the parsers
would keep the last one silently), and every error that has a place in the file shows that
line with a caret under it:

>>> import pathlib, tempfile
>>> cfg = pathlib.Path(tempfile.mkdtemp()) / "c.json"
>>> _ = cfg.write_text('{"units": 1,\\n "units": 2}')
>>> try:
...     parse_document(cfg, read_text(cfg))
... except LossValidationError as e:
...     print(e)  # doctest: +ELLIPSIS
/.../c.json is not valid JSON: the key 'units' appears twice in one object, on lines 1 and 2.
  line 2, column 2:
     "units": 2}
     ^^^^^^^
  Hint: a key may appear once in an object; remove one of them.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lossdsl.errors import LossValidationError

__all__ = ["FORMATS", "MAX_CONFIG_BYTES", "Document", "file_error", "parse_document", "read_text"]

MAX_CONFIG_BYTES = 1_048_576
"""Largest config file read (1 MiB): a loss spec takes a few lines, and the largest formula
100,000 characters; a larger file is refused before it is parsed."""

FORMATS = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".json": "JSON"}


@dataclass(frozen=True)
class Document:
    """A parsed config file: its text, its data and, for YAML, its node tree (with the line
    and column of every key and value)."""

    text: str
    data: Any
    root: Any = None


def file_error(
    message: str, text: str, offset: int, hint: str | None = None
) -> LossValidationError:
    """An error about the file's text, with a caret under the character at ``offset``."""
    offset = max(0, min(offset, len(text)))
    return LossValidationError(message, source=text, span=(offset, offset + 1), hint=hint)


def _format(path: Path) -> str:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise LossValidationError(
            f"Cannot tell the format of {path}: the suffix must be one of "
            f"{', '.join(sorted(FORMATS))}. Received: {path.suffix or 'none'}."
        )
    return kind


def _not_regular(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _too_large(path: Path, size: str) -> LossValidationError:
    return LossValidationError(
        f"{path} is {size} bytes long; a config file may hold at most {MAX_CONFIG_BYTES:,} bytes.",
        hint="a loss spec takes a few lines; keep it in a smaller file.",
    )


def _read_bytes(path: Path) -> bytes:
    def refuse(mode: int) -> LossValidationError:
        return LossValidationError(
            f"Cannot read {path}: it is {_not_regular(mode)}; a config file must be a regular file."
        )

    try:
        # stat first, so that nothing but a regular file is opened (opening a FIFO waits for
        # a writer); then check the file opened, in case the path changed in between.
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise refuse(info.st_mode)
        if info.st_size > MAX_CONFIG_BYTES:
            raise _too_large(path, f"{info.st_size:,}")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise refuse(mode)
            data = f.read(MAX_CONFIG_BYTES + 1)  # a file that grew meanwhile is still capped
    except LossValidationError:
        raise
    except OSError as e:
        raise LossValidationError(f"Cannot read {path}: {e.strerror or e}.") from None
    except ValueError as e:  # a path with a NUL character
        raise LossValidationError(f"Cannot read {path!r}: {e}.") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise _too_large(path, f"more than {MAX_CONFIG_BYTES:,}")
    return data


def read_text(path: Path) -> str:
    """The text of the config file at ``path``, whose suffix names a known format."""
    _format(path)
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        shown = data.decode("utf-8", "replace")
        raise file_error(
            f"{path} is not UTF-8 text: the byte 0x{data[e.start]:02x} at offset {e.start:,} "
            f"(line {line}) cannot be decoded.",
            shown,
            len(data[: e.start].decode("utf-8")),
            hint="save the file as UTF-8.",
        ) from None
    return text.removeprefix("\ufeff")  # a byte order mark, as some editors write


def parse_document(path: Path, text: str) -> Document:
    """The data in ``text``, the content of the file at ``path``."""
    kind = _format(path)
    try:
        if kind == "YAML":
            from lossdsl import config_yaml

            data, root = config_yaml.load(path, text)
            return Document(text, data, root)
        if kind == "TOML":
            return Document(text, _toml(path, text))
        return Document(text, _json(path, text))
    except LossValidationError:
        raise
    except RecursionError:
        raise LossValidationError(
            f"{path} is not valid {kind}: it nests mappings or lists too deeply to read.",
            hint="a loss spec nests a few levels at most.",
        ) from None
    except ValueError as e:
        if "integer string conversion" not in str(e):
            raise LossValidationError(f"{path} is not valid {kind}: {e}") from None
        limit = sys.get_int_max_str_digits()
        raise LossValidationError(
            f"{path} holds an integer of more than {limit:,} digits, too long to read."
        ) from None
    except Exception as e:  # any other parser error, in our words
        raise LossValidationError(f"{path} is not valid {kind}: {e}") from None


_TOML_PLACE = re.compile(r" \(at line (\d+), column (\d+)\)$")


def _toml(path: Path, text: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        place = _TOML_PLACE.search(message)
        if place is None:
            raise LossValidationError(f"{path} is not valid TOML: {message}.") from None
        line, column = int(place.group(1)), int(place.group(2))
        starts = [0, *(m.end() for m in re.finditer("\n", text))]
        offset = starts[min(line, len(starts)) - 1] + column - 1
        hint = None
        if message.startswith(("Cannot overwrite", "Cannot declare")):
            hint = "a key or a table may be set once; this line sets it again."
        raise file_error(
            f"{path} is not valid TOML: {message[: place.start()]}.", text, offset, hint
        ) from None


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) < len(pairs):
        raise _DuplicateKey
    return out


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:]', re.DOTALL)


def _first_duplicate(text: str) -> tuple[str, list[int]]:
    """The key set twice in the first object of ``text`` to close with a duplicate (the one
    ``json`` stopped at), and the offsets of its occurrences in that object."""
    stack: list[dict[str, list[int]] | None] = []
    previous: re.Match[str] | None = None
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token in "{[":
            stack.append({} if token == "{" else None)
        elif token in "}]":
            closed = stack.pop() if stack else None
            for name, offsets in (closed or {}).items():
                if len(offsets) > 1:
                    return name, offsets
        elif token == ":" and previous is not None and previous.group()[0] == '"' and stack:
            keys = stack[-1]
            if keys is not None:
                keys.setdefault(json.loads(previous.group()), []).append(previous.start())
        previous = m
    return "", []  # pragma: no cover - json found one


def _json(path: Path, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise file_error(f"{path} is not valid JSON: {e.msg}.", text, e.pos) from None
    except _DuplicateKey:
        name, offsets = _first_duplicate(text)
        lines = list(dict.fromkeys(str(text.count("\n", 0, at) + 1) for at in offsets))
        where = f"line {lines[0]}"
        if len(lines) > 1:
            where = "lines " + ", ".join(lines[:-1]) + f" and {lines[-1]}"
        more = "twice" if len(offsets) == 2 else f"{len(offsets)} times"
        second = offsets[1] if len(offsets) > 1 else 0
        error = file_error(
            f"{path} is not valid JSON: the key {name!r} appears {more} in one object, on {where}.",
            text,
            second,
            hint="a key may appear once in an object; remove one of them.",
        )
        end = text.find(":", second)
        error.span = (second, end if end > second else second + 1)
        raise error from None
