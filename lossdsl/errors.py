"""The error tree and the caret rendering every lossdsl error shares.

Each error knows the formula text (``source``) and the span of the offending
text as character offsets; ``line`` and ``column`` (1-based) are derived from
them, and ``str(error)`` prints the message, the source line and a caret under
the span, the way patsy's ``Origin.caretize`` does:

>>> from lossdsl import parse
>>> try:
...     parse("bce(u0) + ")
... except LossSyntaxError as e:
...     print(e)
Unexpected end of formula. Expected a term: a number, a name, a call or '('.
  line 1, column 11:
    bce(u0) +
              ^
  Hint: the formula ends with an operator; remove it or add the missing term.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence

__all__ = [
    "MAX_REPORTED",
    "LossDSLError",
    "LossInputError",
    "LossSyntaxError",
    "LossTypeError",
    "LossValidationError",
    "Span",
    "echo",
    "render_caret",
]

MAX_REPORTED = 50
"""Most problems one error lists; past them it says how many more there are."""

Span = tuple[int, int]
"""A half-open range ``[start, end)`` of character offsets into the source."""


def _line_col(source: str, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset`` in ``source``; a line ends at ``\n``, ``\r\n``
    or a lone ``\r``."""
    offset = max(0, min(offset, len(source)))
    breaks = (
        source.count("\n", 0, offset)
        + source.count("\r", 0, offset)
        - source.count("\r\n", 0, offset)
    )
    return breaks + 1, offset - _line_start(source, offset) + 1


def _line_start(source: str, offset: int) -> int:
    return max(source.rfind("\n", 0, offset), source.rfind("\r", 0, offset)) + 1


def _line_end(source: str, offset: int) -> int:
    ends = [i for i in (source.find("\n", offset), source.find("\r", offset)) if i != -1]
    return min(ends, default=len(source))


def _shown(text: str) -> str:
    """``text`` as one printable line of the same length: a control character or a lone
    surrogate (which no terminal can print) is shown as U+FFFD."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else "\ufffd" for c in text)


def render_caret(source: str, span: Span) -> str:
    """The source line holding ``span`` with ``^`` under the spanned text.

    >>> print(render_caret("bce(u0) + mse(u9)", (14, 16)))
        bce(u0) + mse(u9)
                      ^^
    """
    start, end = span
    start = max(0, min(start, len(source)))
    line_start = _line_start(source, start)
    line_end = _line_end(source, start)
    end = max(start + 1, min(end, line_end))
    prefix = suffix = ""
    if line_end - line_start > _LONG_LINE:
        # A long line (a generated formula) is shown around the caret only.
        lo = max(line_start, start - _CONTEXT)
        hi = min(line_end, max(end, start + 1) + _CONTEXT, lo + _LONG_LINE)
        end = min(end, hi)
        prefix = "..." if lo > line_start else ""
        suffix = "..." if hi < line_end else ""
        line_start, line_end = lo, hi
    text = _shown(source[line_start:line_end])
    # Keep tabs so the caret lines up under tab-indented config text.
    pad = " " * len(prefix) + "".join("\t" if c == "\t" else " " for c in source[line_start:start])
    shown = prefix + text if suffix else prefix + text.rstrip()
    return f"    {shown}{suffix}\n    {pad}{'^' * max(1, end - start)}"


_LONG_LINE = 100  # characters of one line shown at most around a caret
_CONTEXT = 40  # of which, before the span and after it


class _Echo(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = 5
        self.maxstring = self.maxother = 60
        self.maxlong = 40

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # repr would spell out every digit, or refuse past 4,300
            digits = int(x.bit_length() * 0.30103) + 1
            return f"{'-' if x < 0 else ''}<an integer of about {digits:,} digits>"
        return repr(x)


_echo = _Echo()


def echo(value: object) -> str:
    """``repr(value)`` for a message, shortened: nested and long values are cut with
    ``...`` (a shared structure is never expanded), huge integers described."""
    try:
        shown = _echo.repr(value)
    except Exception:  # a value whose own repr fails
        return f"<{type(value).__name__}>"
    return shown if len(shown) <= _ECHO_LENGTH else shown[: _ECHO_LENGTH - 3] + "..."


_ECHO_LENGTH = 120


class LossDSLError(ValueError):
    """Root of every error lossdsl raises.

    Attributes:
        message: what happened, without location.
        source: the formula text, or ``None`` when the error is not about text.
        span: ``(start, end)`` character offsets of the offending text, or ``None``.
        line, column: 1-based position of ``span``'s start (``None`` without a span).
        end_line, end_column: 1-based position just past the span.
        hint: how to fix it, or ``None``.
    """

    # TensorFlow's autograph re-raises errors from converted code as a generic
    # StagingError unless they carry this marker; ours pass through intact, so
    # a user's own tf.function still sees the LossDSLError with its caret.
    ag_pass_through = True

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        span: Span | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.span = span
        self.hint = hint
        self.origin: str | None = None
        """Where the formula came from, such as ``config.yaml, key training.loss``."""
        self.origin_line: int | None = None
        """The line of that file where the formula's first line stands (1-based)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.source, self.span, self.hint))

    def with_source(self, source: str) -> LossDSLError:
        """Attach the formula text once it is known (errors raised deep inside
        the parser only know offsets)."""
        if self.source is None:
            self.source = source
        return self

    def in_file(self, origin: str, first_line: int | None) -> LossDSLError:
        """Say which file (and key) the formula came from, and on which line of
        that file it starts, so that the message points into the file."""
        self.origin, self.origin_line = origin, first_line
        for e in getattr(self, "errors", ()):
            if e is not self:
                e.in_file(origin, first_line)
        return self

    def _position(self, offset: int | None) -> tuple[int, int] | tuple[None, None]:
        if self.source is None or offset is None:
            return None, None
        return _line_col(self.source, offset)

    @property
    def line(self) -> int | None:
        return self._position(self.span[0] if self.span else None)[0]

    @property
    def column(self) -> int | None:
        return self._position(self.span[0] if self.span else None)[1]

    @property
    def end_line(self) -> int | None:
        return self._position(self.span[1] if self.span else None)[0]

    @property
    def end_column(self) -> int | None:
        return self._position(self.span[1] if self.span else None)[1]

    def location(self) -> str:
        """``line L, column C:`` and the caret, or ``""`` without a span."""
        if self.source is None or self.span is None:
            return f"  in {self.origin}" if self.origin else ""
        where = f"line {self.line}, column {self.column}"
        if self.origin:
            in_file = ""
            if self.origin_line:
                in_file = f", line {self.origin_line + (self.line or 1) - 1} of the file"
            where = f"{self.origin}{in_file}; formula {where}"
        return f"  {where}:\n{render_caret(self.source, self.span)}"

    def __str__(self) -> str:
        parts = [self.message]
        where = self.location()
        if where:
            parts.append(where)
        if self.hint:
            parts.append(f"  Hint: {self.hint}")
        return "\n".join(parts)


def _rebuild(
    cls: type[LossDSLError],
    message: str,
    source: str | None,
    span: Span | None,
    hint: str | None,
) -> LossDSLError:
    return cls(message, source=source, span=span, hint=hint)


class LossSyntaxError(LossDSLError):
    """The text is not a formula: a character, token or limit the grammar rejects."""


class LossValidationError(LossDSLError):
    """The formula parses but cannot mean anything: an unknown name, a unit out
    of range, a keyword of the wrong type, a misplaced ``where``, ...

    ``errors`` lists every problem found (each a ``LossValidationError`` with
    its own span); the error itself describes the first, and ``str`` prints all.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        span: Span | None = None,
        hint: str | None = None,
        errors: Sequence[LossDSLError] = (),
        total: int = 0,
    ) -> None:
        super().__init__(message, source=source, span=span, hint=hint)
        self.errors: list[LossDSLError] = list(errors) or [self]
        self.total = total or len(self.errors)
        """How many problems were found (``errors`` holds at most ``MAX_REPORTED``)."""

    @classmethod
    def collect(cls, errors: Sequence[LossDSLError]) -> LossDSLError:
        """One error standing for ``errors`` (which must not be empty)."""
        if len(errors) == 1:
            return errors[0]
        # An error collected before may end with a stand-in for the problems it left out.
        shown = [e for e in errors if not isinstance(e, _NotShown)]
        total = len(shown) + sum(e.count for e in errors if isinstance(e, _NotShown))
        errors = shown[: MAX_REPORTED - 1] if total > MAX_REPORTED else shown
        if total > len(errors):
            errors.append(_NotShown(total - len(errors)))
        first = errors[0]
        return cls(
            first.message,
            source=first.source,
            span=first.span,
            hint=first.hint,
            errors=errors,
            total=total,
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_validation,
            (
                (self.message, self.source, self.span, self.hint),
                self.errors if len(self.errors) > 1 else [],
                self.total,
            ),
        )

    def with_source(self, source: str) -> LossDSLError:
        super().with_source(source)
        for e in self.errors:
            if e is not self:
                e.with_source(source)
        return self

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return super().__str__()
        items = [f"{self.total:,} problems in the loss specification:"]
        for i, e in enumerate(self.errors, 1):
            body = LossDSLError.__str__(e).replace("\n", "\n   ")
            items.append(f"{i}. {body}")
        return "\n\n".join(items)


def _rebuild_validation(
    fields: tuple[str, str | None, Span | None, str | None],
    errors: Sequence[LossDSLError],
    total: int,
) -> LossValidationError:
    message, source, span, hint = fields
    return LossValidationError(
        message, source=source, span=span, hint=hint, errors=errors, total=total
    )


class _NotShown(LossValidationError):
    """Stands for the problems past ``MAX_REPORTED`` that an error does not list."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count:,} more problems are not shown.")
        self.count = count

    def __reduce__(self) -> tuple[object, ...]:
        return (_NotShown, (self.count,))


class LossTypeError(LossValidationError, TypeError):
    """An argument of the wrong type, such as a formula that is not text: a
    ``LossValidationError``, and a ``TypeError`` as Python's own functions raise."""


class LossInputError(LossDSLError):
    """The tensors given to a compiled loss cannot be used with its formula:
    ``y_true`` and ``y_pred`` of different shapes, or no units axis."""
