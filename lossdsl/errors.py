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

from collections.abc import Sequence

__all__ = [
    "LossDSLError",
    "LossInputError",
    "LossSyntaxError",
    "LossValidationError",
    "Span",
    "render_caret",
]

Span = tuple[int, int]
"""A half-open range ``[start, end)`` of character offsets into the source."""


def _line_col(source: str, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset`` in ``source``."""
    offset = max(0, min(offset, len(source)))
    line = source.count("\n", 0, offset) + 1
    line_start = source.rfind("\n", 0, offset) + 1
    return line, offset - line_start + 1


def render_caret(source: str, span: Span) -> str:
    """The source line holding ``span`` with ``^`` under the spanned text.

    >>> print(render_caret("bce(u0) + mse(u9)", (14, 16)))
        bce(u0) + mse(u9)
                      ^^
    """
    start, end = span
    start = max(0, min(start, len(source)))
    line_start = source.rfind("\n", 0, start) + 1
    line_end = source.find("\n", start)
    if line_end == -1:
        line_end = len(source)
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
    text = source[line_start:line_end]
    # Keep tabs so the caret lines up under tab-indented config text.
    pad = " " * len(prefix) + "".join("\t" if c == "\t" else " " for c in source[line_start:start])
    shown = prefix + text if suffix else prefix + text.rstrip()
    return f"    {shown}{suffix}\n    {pad}{'^' * max(1, end - start)}"


_LONG_LINE = 100  # characters of one line shown at most around a caret
_CONTEXT = 40  # of which, before the span and after it


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
    ) -> None:
        super().__init__(message, source=source, span=span, hint=hint)
        self.errors: list[LossDSLError] = list(errors) or [self]

    @classmethod
    def collect(cls, errors: Sequence[LossDSLError]) -> LossDSLError:
        """One error standing for ``errors`` (which must not be empty)."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        return cls(
            first.message, source=first.source, span=first.span, hint=first.hint, errors=errors
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_validation,
            (
                self.message,
                self.source,
                self.span,
                self.hint,
                self.errors if len(self.errors) > 1 else [],
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
        items = [f"{len(self.errors)} problems in the loss specification:"]
        for i, e in enumerate(self.errors, 1):
            body = LossDSLError.__str__(e).replace("\n", "\n   ")
            items.append(f"{i}. {body}")
        return "\n\n".join(items)


def _rebuild_validation(
    message: str,
    source: str | None,
    span: Span | None,
    hint: str | None,
    errors: Sequence[LossDSLError],
) -> LossValidationError:
    return LossValidationError(message, source=source, span=span, hint=hint, errors=errors)


class LossInputError(LossDSLError):
    """The tensors given to a compiled loss cannot be used with its formula:
    ``y_true`` and ``y_pred`` of different shapes, or no units axis."""
