"""Lark's syntax errors in words: ``translate(error, text) -> LossSyntaxError``.

Lark reports the terminal it did not expect and the terminals it would have taken, by their
grammar names (``RPAR``, ``$END``). This module says the same in the user's terms, points at
the offending text, and adds a hint for the usual slips (``=`` for ``==``, ``^`` for a power, a
missing operator, a keyword glued to a name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lark import Token, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from lossdsl.errors import LossSyntaxError
from lossdsl.suggest import did_you_mean

__all__ = ["KEYWORDS", "Parens", "paren_scan", "strip_comments", "translate"]

KEYWORDS = frozenset({"where", "and", "or", "not"})
_KEYWORD_TERMINALS = (("where", "_WHERE"), ("and", "_AND"), ("or", "_OR"), ("not", "NOT"))
_PAREN_OR_COMMENT = re.compile(r"[()]|#[^\n]*")
_COMMENT = re.compile(r"#[^\n]*")


@dataclass(frozen=True)
class Parens:
    """Where the parentheses of a text do not match, and where they nest too deep."""

    unmatched: tuple[int, ...]
    """Offsets of each ``)`` that closes no ``(``."""
    unclosed: tuple[int, ...]
    """Offsets of each ``(`` never closed."""
    too_deep: int | None
    """Offset of the first ``(`` nested deeper than the limit, or ``None``."""


def paren_scan(text: str, limit: int) -> Parens:
    """The parentheses of ``text`` outside comments, against a nesting ``limit``."""
    opened: list[int] = []
    unmatched: list[int] = []
    too_deep: int | None = None
    for m in _PAREN_OR_COMMENT.finditer(text):
        if m.group() == "(":
            opened.append(m.start())
            if too_deep is None and len(opened) > limit:
                too_deep = m.start()
        elif m.group() == ")":
            if opened:
                opened.pop()
            else:
                unmatched.append(m.start())
    return Parens(tuple(unmatched), tuple(opened), too_deep)


def strip_comments(text: str) -> str:
    return _COMMENT.sub("", text)


_TERMINALS = {
    "NUMBER": "a number",
    "INT": "a whole number",
    "NAME": "a name",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "MINUS": "'-'",
    "OPERATOR": "an operator (+, -, *, /)",
    "ADDOP": "'+' or '-'",
    "MULOP": "'*' or '/'",
    "CMPOP": "a comparison (<, <=, >, >=, ==, !=)",
    "_WHERE": "'where'",
    "_AND": "'and'",
    "_OR": "'or'",
    "NOT": "'not'",
    "$END": "the end of the formula",
}
_ORDER = list(_TERMINALS)
_TERM_START = {"NUMBER", "NAME", "LPAR"}


def _expected(names: set[str]) -> str:
    if names >= _TERM_START and not names & {"ADDOP", "MULOP", "RPAR", "$END", "CMPOP"}:
        if "NOT" in names:
            return "a condition: a comparison such as pred(u0) >= 0.5, 'not' or '('"
        return "a term: a number, a name, a call or '('"
    if "MULOP" in names:
        # After a complete operand: '(' and '[' would only continue a call or a slice, which
        # is never what the user was missing.
        names = names - {"LPAR", "LSQB", "EQUAL"}
        if "ADDOP" in names:
            names = (names - {"ADDOP", "MULOP"}) | {"OPERATOR"}
    words = [_TERMINALS[n] for n in sorted(names, key=_rank) if n in _TERMINALS]
    if not words:
        return "something else"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _rank(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def _describe(tok: Token) -> str:
    if tok.type == "NAME":
        return f"name '{tok}'"
    if tok.type in ("NUMBER", "INT"):
        return f"number {tok}"
    return f"'{tok}'"


def _unmatched_paren(text: str, at: int) -> LossSyntaxError:
    return LossSyntaxError(
        "Unexpected ')': it closes no '('.",
        source=text,
        span=(at, at + 1),
        hint="remove it or add the matching '('.",
    )


def translate(e: UnexpectedInput, text: str, parens: Parens) -> LossSyntaxError:
    """The ``LossSyntaxError`` that says what Lark's ``e`` means for ``text``."""
    if isinstance(e, UnexpectedCharacters):
        return _unexpected_character(e, text, parens)
    if not isinstance(e, UnexpectedToken):  # pragma: no cover - Lark's LALR raises only these
        return LossSyntaxError(f"Invalid formula: {e}", source=text, span=(0, 1))
    # ``accepts`` is what the parser would really take here; ``expected`` may hold extra
    # terminals from merged LALR states.
    names = set(e.accepts or e.expected)
    tok = e.token
    if tok.type == "$END":
        if parens.unclosed:
            at = parens.unclosed[-1]
            return LossSyntaxError(
                "Unclosed '(': the formula ends before its ')'.",
                source=text,
                span=(at, at + 1),
                hint="add the missing ')' or remove this '('.",
            )
        hint = None
        if strip_comments(text).rstrip().endswith("where"):
            hint = "'where' needs a condition: T where true(u0) == 1."
        elif names >= _TERM_START:
            hint = "the formula ends with an operator; remove it or add the missing term."
        return LossSyntaxError(
            f"Unexpected end of formula. Expected {_expected(names)}.",
            source=text,
            span=(len(text), len(text) + 1),
            hint=hint,
        )
    start = tok.start_pos or 0
    if tok.type == "RPAR" and start in parens.unmatched:
        return _unmatched_paren(text, start)
    return LossSyntaxError(
        f"Unexpected {_describe(tok)}. Expected {_expected(names)}.",
        source=text,
        span=(start, tok.end_pos if tok.end_pos is not None else start + 1),
        hint=_token_hint(text, tok, names),
    )


def _unexpected_character(e: UnexpectedCharacters, text: str, parens: Parens) -> LossSyntaxError:
    pos = e.pos_in_stream or 0
    ch = text[pos] if pos < len(text) else ""
    if ch == ")" and pos in parens.unmatched:
        return _unmatched_paren(text, pos)
    names = set(e.allowed or ())
    shown = repr(ch) if not ch.isprintable() or not ch.isascii() else f"'{ch}'"
    return LossSyntaxError(
        f"Unexpected character {shown}. Expected {_expected(names)}.",
        source=text,
        span=(pos, pos + 1),
        hint=_char_hint(text, pos),
    )


def _token_hint(text: str, tok: Token, expected: set[str]) -> str | None:
    if tok.type == "EQUAL":
        return _equal_hint(text, tok.start_pos or 0)
    if tok.type == "MULOP" and tok.start_pos and text[tok.start_pos - 1] == "*":
        return "there is no power operator; use square(x), sqrt(x) or exp(k * log(x))."
    if tok.type == "ADDOP" and "CMPOP" in expected:
        return (
            "a comparison operand cannot contain a top-level + or -, because a condition "
            "ends at the next + or -; parenthesise it: (pred(u0) - true(u0)) > 0.1."
        )
    if tok.type == "CMPOP":
        return "comparisons only appear in a condition: T where pred(u0) >= 0.5."
    if tok.type == "_WHERE":
        return "a term takes one 'where'; combine conditions with 'and': T where A and B."
    if tok.type == "NAME":
        for word, terminal in _KEYWORD_TERMINALS:
            rest = tok[len(word) :]
            if tok.startswith(word) and rest and terminal in expected:
                return (
                    f"'{tok}' is one name: a keyword is a whole word. For '{word}' followed "
                    f"by '{rest}', write '{word} {rest}'."
                )
        near = did_you_mean(str(tok), [w for w, t in _KEYWORD_TERMINALS if t in expected])
        if near:
            return f"{near[1:]} A keyword is expected here, not a name."
    if tok.type in ("NAME", "NUMBER", "LPAR") and expected & {"ADDOP", "MULOP"}:
        return "an operator is missing between two terms: write '*' to multiply, '+' to add."
    return None


def _equal_hint(text: str, at: int) -> str:
    """The hint for a ``=`` where it cannot stand: ``=>`` and ``=<`` are ``>=`` and ``<=``
    written backwards, otherwise ``==`` was meant."""
    after = text[at + 1 : at + 2]
    if after in ("<", ">"):
        return f"did you mean '{after}='? The comparison is written '{after}=', not '={after}'."
    return (
        "compare with '=='; a single '=' only sets a keyword argument, as in huber(u1, delta=1.0)."
    )


def _char_hint(text: str, pos: int) -> str | None:
    ch = text[pos] if pos < len(text) else ""
    if ch == "=":
        return _equal_hint(text, pos)
    if ch.isdigit():  # a digit, but not 0-9
        return "numbers are written with the ASCII digits 0-9."
    if ch == "^":
        return "there is no power operator; use square(x), sqrt(x) or exp(k * log(x))."
    if ch in ("&", "|", "!"):
        return "combine conditions with the words 'and', 'or' and 'not'."
    return None
