"""A lean driver for the LALR tables Lark builds from ``grammar/lossdsl.lark``.

For a formula of twenty tokens, Lark's own ``parse`` spends most of its time
in bookkeeping around each token and each reduction: the contextual lexer's
state, and a chain of wrapper objects (child filter, single-child expansion)
around every callback. This module reads Lark's parse table and rules once
and runs them in one loop, calling the same ``_Build`` methods with the same
children, so the grammar file stays the only definition of the syntax.

* The lexer is one regular expression made of the grammar's own terminals,
  in the order Lark's lexer tries them. A lexeme that several terminals match
  (``-`` is ``ADDOP`` or ``MINUS``, ``12`` is ``NUMBER`` or ``INT``, ``not`` is
  ``NOT`` or ``NAME``) carries all of them, and the parse table picks the one
  the current state accepts, which is what Lark's contextual lexer does.
* The tree is built as Lark builds it: filtered anonymous tokens dropped,
  ``None`` for an absent ``[optional]``, ``_helper`` rules spliced into their
  parent, a ``?rule`` with one child replaced by that child.

It only ever answers for text that parses. On any problem, a character no
terminal matches or a token the table rejects, it returns ``None`` and the
caller parses with Lark, whose exceptions become the errors users see.
``tests/test_parse.py`` checks that both give the same trees and spans.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lark import Lark
from lark.lexer import PatternStr
from lark.parsers.lalr_analysis import Shift

__all__ = ["Driver", "UnsupportedGrammar"]

_END = "$END"
_NO_TERMINAL = "lossdsl_no_terminal"


class UnsupportedGrammar(Exception):
    """The grammar uses a Lark feature this driver does not reproduce."""


class _Token(str):
    """The text of a token and what the transformer reads of it: ``type``,
    ``start_pos`` and ``end_pos``, as on a Lark ``Token`` (which costs several
    times as much to make)."""

    __slots__ = ("end_pos", "start_pos", "type")

    start_pos: int
    end_pos: int
    type: str


class _Spliced(list[Any]):
    """The children of a ``_helper`` rule (Lark's ``x*`` expansions), which
    the parent rule takes as its own."""


class Driver:
    """Parses with ``lark``'s LALR tables and calls ``transformer``'s methods."""

    def __init__(self, lark: Lark, transformer: object) -> None:
        if lark.options.parser != "lalr" or lark.options.keep_all_tokens:
            raise UnsupportedGrammar("only LALR without keep_all_tokens")
        table = lark.parser.parser.parser.parse_table
        ignore = frozenset(lark.lexer_conf.ignore)
        # The order Lark's basic lexer tries terminals in.
        every = sorted(
            lark.terminals,
            key=lambda t: (-t.priority, -t.pattern.max_width, -len(t.pattern.value), t.name),
        )
        self._lexer = re.compile(
            "|".join(f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in every)
            + f"|(?P<{_NO_TERMINAL}>(?s:.))"
        )
        self._ignore = ignore
        self._terminals = [t.name for t in every if t.name not in ignore]
        self._fullmatch = {
            name: re.compile(f"(?:{t.pattern.to_regexp()})\\Z")
            for t in every
            if (name := t.name) not in ignore
        }
        self._strings = {t.name for t in every if isinstance(t.pattern, PatternStr)}
        self._kinds_cache: dict[tuple[str, str], tuple[str, ...]] = {}
        self._chains: dict[tuple[int, int, tuple[str, ...]], int] = {}

        rules: list[Any] = []
        index: dict[Any, int] = {}
        self._actions: dict[int, dict[str, int]] = {}
        self._gotos: dict[int, dict[str, int]] = {}
        for state, row in table.states.items():
            acts: dict[str, int] = {}
            gotos: dict[str, int] = {}
            for symbol, (action, arg) in row.items():
                symbol = str(symbol)  # noqa: PLW2901 - Lark's names may be Tokens, slow dict keys
                if action is Shift:
                    (acts if symbol.isupper() or symbol == _END else gotos)[symbol] = arg
                else:
                    if arg not in index:
                        index[arg] = len(rules)
                        rules.append(arg)
                    acts[symbol] = ~index[arg]
            self._actions[state] = acts
            self._gotos[state] = gotos
        self._start = table.start_states["start"]
        self._accept = table.end_states["start"]
        self._rules = [self._reducer(rule, transformer) for rule in rules]
        self._kept = {
            sym.name
            for rule in rules
            for sym in rule.expansion
            if sym.is_term and not sym.filter_out
        }

    # -- building ----------------------------------------------------------------

    @staticmethod
    def _reducer(
        rule: Any, transformer: object
    ) -> tuple[int, str, Callable[[list[Any]], Any] | None]:
        """``(size, goto symbol, build)`` for one rule; ``build`` takes the
        values on the stack and returns the rule's value, as Lark would, and
        is ``None`` for a rule whose value is its one child."""
        opts = rule.options
        if opts.keep_all_tokens or opts.template_source:
            raise UnsupportedGrammar(f"rule options of {rule}")
        # Which stack positions become children, which are spliced, and how
        # many ``None`` placeholders go before each (Lark's maybe_placeholders).
        empty = list(opts.empty_indices) or [False] * len(rule.expansion)
        nones_before: list[int] = [0]
        for is_empty in empty:
            if is_empty:
                nones_before[-1] += 1
            else:
                nones_before.append(0)
        plan: list[tuple[int, bool, int]] = []
        pending = 0
        for i, sym in enumerate(rule.expansion):
            pending += nones_before[i]
            if not (sym.is_term and sym.filter_out):
                splice = not sym.is_term and sym.name.startswith("_")
                plan.append((i, splice, pending))
                pending = 0
        trailing = pending + nones_before[len(rule.expansion)]
        name = rule.alias or rule.origin.name
        helper = rule.origin.name.startswith("_")
        method = getattr(transformer, name, None)
        if method is None and not helper and not opts.expand1:
            raise UnsupportedGrammar(f"no transformer method for {name}")
        single = opts.expand1 and not rule.alias
        size, origin = len(rule.expansion), str(rule.origin.name)
        if single and size == 1 and plan == [(0, False, 0)] and not trailing:
            return 1, origin, None  # a ?rule passing its one child through
        simple = not trailing and all(not splice and not nones for _, splice, nones in plan)
        if simple and method is not None and not helper and not single:
            keep = [i for i, _, _ in plan]
            if keep == list(range(size)):
                return size, origin, method  # every value is a child, in order
            return size, origin, lambda values: method([values[i] for i in keep])

        def build(values: list[Any]) -> Any:
            children: list[Any] = []
            for i, splice, nones in plan:
                if nones:
                    children.extend([None] * nones)
                if splice:
                    children.extend(values[i])
                else:
                    children.append(values[i])
            if trailing:
                children.extend([None] * trailing)
            if helper:
                return _Spliced(children)
            if single and len(children) == 1:
                return children[0]
            if method is None:
                raise UnsupportedGrammar(f"no transformer method for {name}")
            return method(children)

        return size, origin, build

    def _kinds(self, kind: str, value: str) -> tuple[str, ...]:
        """Every terminal that matches ``value`` exactly: string terminals
        (keywords) first, as Lark's lexer prefers them, then the one matched."""
        key = (kind, value)
        kinds = self._kinds_cache.get(key)
        if kinds is None:
            others = [
                name
                for name in self._terminals
                if name != kind and self._fullmatch[name].match(value)
            ]
            strings = [k for k in others if k in self._strings]
            kinds = (*strings, kind, *(k for k in others if k not in self._strings))
            if len(self._kinds_cache) > 4096:
                self._kinds_cache.clear()
            self._kinds_cache[key] = kinds
        return kinds

    # -- parsing -----------------------------------------------------------------

    def _tokens(self, text: str) -> list[tuple[tuple[str, ...], str, int, int]] | None:
        """``(terminals it may be, text, start, end)`` per token, then ``$END``;
        ``None`` at a character no terminal matches."""
        ignore, cache, kinds_of = self._ignore, self._kinds_cache, self._kinds
        out = []
        end = 0
        # Every position matches: a terminal, or the catch-all that ends the lexing.
        for m in self._lexer.finditer(text):
            kind = m.lastgroup
            if kind == _NO_TERMINAL:
                return None
            assert kind is not None
            start, end = m.span()
            if kind not in ignore:
                value = m.group()
                kinds = cache.get((kind, value)) or kinds_of(kind, value)
                out.append((kinds, value, start, end))
        out.append(((_END,), "", end, end))
        return out

    def _chain(self, below: int, top: int, kinds: tuple[str, ...]) -> int:
        """The top state after every pass-through reduction that follows one,
        with ``below`` under it and the lookahead ``kinds``."""
        while top != self._accept:
            row = self._actions[top]
            code = next((row[k] for k in kinds if k in row), None)
            if code is None or code >= 0:
                break
            _, origin, build = self._rules[~code]
            if build is not None:
                break
            top = self._gotos[below][origin]
        return top

    def parse(self, text: str) -> Any:
        """The transformer's value for ``text``, or ``None`` if it does not parse."""
        tokens = self._tokens(text)
        if tokens is None:
            return None
        actions, gotos, rules, kept = self._actions, self._gotos, self._rules, self._kept
        accept, chains = self._accept, self._chains
        states = [self._start]
        values: list[Any] = []
        for kinds, value, start, end in tokens:
            while True:
                row = actions[states[-1]]
                for kind in kinds:
                    code = row.get(kind)
                    if code is not None:
                        break
                else:
                    return None  # a syntax error: Lark will say which
                if code >= 0:  # shift; a token no rule keeps is never looked at
                    if kind in kept:
                        token = str.__new__(_Token, value)
                        token.type, token.start_pos, token.end_pos = kind, start, end
                        values.append(token)
                    else:
                        values.append(None)
                    states.append(code)
                    break
                size, origin, build = rules[~code]
                if build is None:  # pass-through rules: only the top state changes
                    below = states[-2]
                    key = (below, states[-1], kinds)
                    target = chains.get(key)
                    if target is None:
                        target = self._chain(below, gotos[below][origin], kinds)
                        chains[key] = target
                    if target == accept:
                        return values[-1]
                    states[-1] = target
                    continue
                children = values[-size:] if size else []
                if size:
                    del states[-size:]
                    del values[-size:]
                result = build(children)
                target = gotos[states[-1]][origin]
                if target == accept:
                    return result
                states.append(target)
                values.append(result)
        return None  # pragma: no cover - $END is always reduced to the start rule or rejected
