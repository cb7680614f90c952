"""A lean driver for the LALR tables Lark builds from ``grammar/lossdsl.lark``.

For a formula of twenty tokens, Lark's own ``parse`` spends most of its time
in bookkeeping around each token and each reduction: the contextual lexer's
state, and a chain of wrapper objects (child filter, single-child expansion)
around every callback. This module reads Lark's parse table and rules once
and runs them in one loop, calling the same ``_Build`` methods with the same
children, so the grammar file stays the only definition of the syntax.

* The lexer is one regular expression made of the grammar's own terminals,
  in the order Lark's lexer tries them, each match one token together with
  the ignored text (whitespace, comments) before it. Skipping that text first
  is what Lark does too as long as no kept terminal can start where an ignored
  one does, as in this grammar (``tests/test_parse.py`` compares the two on
  text with whitespace and comments). A lexeme that several terminals match
  (``-`` is ``ADDOP`` or ``MINUS``, ``12`` is ``NUMBER`` or ``INT``, ``not`` is
  ``NOT`` or ``NAME``) carries all of them, and the parse table picks the one
  the current state accepts, which is what Lark's contextual lexer does.
* The tree is built as Lark builds it: filtered anonymous tokens dropped,
  ``None`` for an absent ``[optional]``, ``_helper`` rules spliced into their
  parent, a ``?rule`` with one child replaced by that child.
* What repeats is looked up, not recomputed: the set of terminals a lexeme may
  be is a small integer (one per set, the same for every ``+``), the action of
  a state on such a set is a list entry, and a reduction's goto with the
  chain of pass-through reductions after it (``atom`` to ``unary`` to
  ``product`` ...) is one lookup.

It only ever answers for text that parses. On any problem, a character no
terminal matches or a token the table rejects, it returns ``None`` and the
caller parses with Lark, whose exceptions become the errors users see.
``tests/test_parse.py`` checks that both give the same trees and spans.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from lark import Lark
from lark.lexer import PatternStr
from lark.parsers.lalr_analysis import Shift

__all__ = ["Driver", "UnsupportedGrammar"]

_END = "$END"
_NO_TERMINAL = -2  # the catch-all group: a character no terminal matches
_BY_VALUE = -3  # a group whose terminals depend on the lexeme (``not`` is NOT or NAME)
_ERROR = (None, None)
_KID_BITS = 16


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


Build = Callable[[list[Any]], Any]


class Driver:
    """Parses with ``lark``'s LALR tables and calls ``transformer``'s methods."""

    def __init__(self, lark: Lark, transformer: object) -> None:
        if lark.options.parser != "lalr" or lark.options.keep_all_tokens:
            raise UnsupportedGrammar("only LALR without keep_all_tokens")
        self._lock = threading.Lock()
        # (code, kind kept as a token or None) per state and kinds id, filled on use.
        self._act: list[list[tuple[int | None, str | None] | None]] = []
        self._init_lexer(lark)
        rules = self._init_table(lark.parser.parser.parser.parse_table)
        self._rules = [self._reducer(rule, transformer) for rule in rules]
        self._kept = {
            sym.name
            for rule in rules
            for sym in rule.expansion
            if sym.is_term and not sym.filter_out
        }
        self._act = [[None] * len(self._kinds_of) for _ in self._actions]
        # Memos: the state a pass-through chain ends in, by (state below, top
        # state, kinds id), and where a reduction lands after its goto and the
        # pass-through chain that follows, by (state below, rule, kinds id).
        self._chains: dict[int, int] = {}
        self._landings: dict[int, int] = {}

    def _init_lexer(self, lark: Lark) -> None:
        ignore = frozenset(lark.lexer_conf.ignore)
        # The order Lark's basic lexer tries terminals in.
        every = sorted(
            lark.terminals,
            key=lambda t: (-t.priority, -t.pattern.max_width, -len(t.pattern.value), t.name),
        )
        kept = [t for t in every if t.name not in ignore]
        self._strings = {t.name for t in kept if isinstance(t.pattern, PatternStr)}
        skipped = "|".join(t.pattern.to_regexp() for t in every if t.name in ignore)
        # One match per token: what the grammar ignores (whitespace, comments)
        # first, then one group per terminal, the end of the text, or any other
        # character (which ends the lexing). A group's number is the match's
        # ``lastindex``, the outermost group that matched; a terminal's own
        # groups push the next ones up.
        self._lexer = re.compile(
            (f"(?:{skipped})*" if skipped else "")
            + "(?:"
            + "".join(f"({t.pattern.to_regexp()})|" for t in kept)
            + "(\\Z)|((?s:.)))"
        )
        # What else a lexeme may be (see _kinds): a string terminal matches its
        # own text only, looked up; any other terminal, or every one when a string
        # has flags (such as "not"i), whatever its regex matches in full.
        by_text = not any(isinstance(t.pattern, PatternStr) and t.pattern.flags for t in kept)
        self._literals: dict[str, list[str]] = {}
        self._regexes: list[tuple[str, Callable[[str], Any]]] = []
        for t in kept:
            if by_text and t.name in self._strings:
                self._literals.setdefault(t.pattern.value, []).append(t.name)
            else:
                regex = re.compile(f"(?:{t.pattern.to_regexp()})\\Z")
                self._regexes.append((t.name, regex.match))
        self._kid_of: dict[tuple[str, ...], int] = {}
        self._kinds_of: list[tuple[str, ...]] = []
        groups = self._lexer.groups + 1
        # Per lexer group: its kinds id, _NO_TERMINAL or _BY_VALUE.
        self._group_kid = [_NO_TERMINAL] * groups
        self._group_term: list[str | None] = [None] * groups
        self._by_value: list[dict[str, int]] = [{} for _ in range(groups)]
        group = 1
        for t in kept:
            self._group_term[group] = t.name
            if t.name in self._strings:
                self._group_kid[group] = self._kid(self._kinds(t.name, t.pattern.value))
            else:
                self._group_kid[group] = _BY_VALUE
            group += 1 + re.compile(t.pattern.to_regexp()).groups
        self._group_kid[group] = self._kid((_END,))  # the catch-all, group + 1, stays

    def _init_table(self, table: Any) -> list[Any]:
        """Read Lark's parse table; returns the rules, numbered as the codes say."""
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
        if sorted(self._actions) != list(range(len(self._actions))):
            raise UnsupportedGrammar("parse states are not numbered 0..n-1")
        self._state_bits = max(len(self._actions), len(rules)).bit_length()
        self._start = table.start_states["start"]
        self._accept = table.end_states["start"]
        return rules

    # -- lexemes ------------------------------------------------------------------

    def _kinds(self, kind: str, value: str) -> tuple[str, ...]:
        """Every terminal that matches ``value`` exactly: string terminals
        (keywords) first, as Lark's lexer prefers them, then the one matched,
        then the other regex terminals, each in the order Lark tries them."""
        matched = [name for name, match in self._regexes if name != kind and match(value)]
        strings = [name for name in self._literals.get(value, ()) if name != kind]
        strings += [name for name in matched if name in self._strings]
        return (*strings, kind, *(name for name in matched if name not in self._strings))

    def _kid(self, kinds: tuple[str, ...]) -> int:
        kid = self._kid_of.get(kinds)
        if kid is None:
            with self._lock:  # parses in other threads may meet a new set at the same time
                kid = self._kid_of.get(kinds)
                if kid is None:
                    kid = len(self._kinds_of)
                    if kid >= 1 << _KID_BITS:  # pragma: no cover - far more than any grammar has
                        raise UnsupportedGrammar("too many terminal sets")
                    for row in self._act:  # every row has a slot before the id is used
                        row.append(None)
                    self._kinds_of.append(kinds)
                    self._kid_of[kinds] = kid
        return kid

    def _value_kid(self, group: int, value: str) -> int:
        """The kinds id of a lexeme whose terminals depend on its text."""
        kind = self._group_term[group]
        assert kind is not None
        kid = self._kid(self._kinds(kind, value))
        cache = self._by_value[group]
        if len(cache) > 4096:
            cache.clear()
        cache[value] = kid
        return kid

    def _entry(self, state: int, kid: int) -> tuple[int | None, str | None]:
        """What ``state`` does on a lexeme of kinds ``kid``: ``(code, kind)``
        with ``code`` a shift target (``>= 0``) or a reduction (``~rule``), and
        ``kind`` the terminal shifted when a rule keeps it."""
        row = self._actions[state]
        entry: tuple[int | None, str | None] = _ERROR
        for kind in self._kinds_of[kid]:
            code = row.get(kind)
            if code is not None:
                entry = (code, kind if code >= 0 and kind in self._kept else None)
                break
        self._act[state][kid] = entry
        return entry

    # -- building ----------------------------------------------------------------

    @staticmethod
    def _reducer(rule: Any, transformer: object) -> tuple[int, str, Build | None]:
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
        fast = _fast_build(plan, size, trailing, method, helper=helper, single=single)
        if fast is not None:
            return size, origin, fast

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

    # -- parsing -----------------------------------------------------------------

    def _chain(self, below: int, top: int, kid: int) -> int:
        """The top state after every pass-through reduction that follows one,
        with ``below`` under it and the lookahead of kinds ``kid``."""
        while top != self._accept:
            code, _ = self._act[top][kid] or self._entry(top, kid)
            if code is None or code >= 0:
                break
            _, origin, build = self._rules[~code]
            if build is not None:
                break
            top = self._gotos[below][origin]
        return top

    def parse(self, text: str) -> Any:  # noqa: PLR0915 - one loop, for speed
        """The transformer's value for ``text``, or ``None`` if it does not parse."""
        act, gotos, rules = self._act, self._gotos, self._rules
        chains, landings = self._chains, self._landings
        group_kid, by_value, entry_of = self._group_kid, self._by_value, self._entry
        accept = self._accept
        state_bits = self._state_bits
        new_token = str.__new__
        states = [self._start]
        values: list[Any] = []
        # The last match is the end of the text, which is always accepted or rejected.
        for m in self._lexer.finditer(text):
            group: int = m.lastindex  # type: ignore[assignment]  # every match has a group
            kid = group_kid[group]
            if kid < 0:
                if kid == _NO_TERMINAL:
                    return None
                value = m.group(group)
                known = by_value[group].get(value)
                kid = self._value_kid(group, value) if known is None else known
            while True:
                top = states[-1]
                code, kind = act[top][kid] or entry_of(top, kid)
                if code is None:
                    return None  # a syntax error: Lark will say which
                if code >= 0:  # shift; a token no rule keeps is never looked at
                    if kind is not None:
                        token = new_token(_Token, m.group(group))
                        token.type = kind
                        token.start_pos, token.end_pos = m.span(group)
                        values.append(token)
                    else:
                        values.append(None)
                    states.append(code)
                    break
                size, origin, build = rules[~code]
                if build is None:  # pass-through rules: only the top state changes
                    below = states[-2]
                    key = (((below << state_bits) | top) << _KID_BITS) | kid
                    target = chains.get(key)
                    if target is None:
                        target = self._chain(below, gotos[below][origin], kid)
                        chains[key] = target
                    if target == accept:
                        return values[-1]
                    states[-1] = target
                    continue
                if size:
                    children = values[-size:]
                    del states[-size:]
                    del values[-size:]
                else:
                    children = []
                result = build(children)
                # The goto, and the pass-through reductions that follow it.
                below = states[-1]
                key = (((below << state_bits) | ~code) << _KID_BITS) | kid
                target = landings.get(key)
                if target is None:
                    target = self._chain(below, gotos[below][origin], kid)
                    landings[key] = target
                if target == accept:
                    return result
                states.append(target)
                values.append(result)
        return None  # pragma: no cover - a text always ends with its end


def _fast_build(
    plan: list[tuple[int, bool, int]],
    size: int,
    trailing: int,
    method: Build | None,
    *,
    helper: bool,
    single: bool,
) -> Build | None:
    """A build for the common shapes of rule, without the general loop, or ``None``."""
    if trailing or any(nones for _, _, nones in plan):
        return None
    keep = [i for i, _, _ in plan]
    spliced = [i for i, splice, _ in plan if splice]
    if helper and not spliced:
        return lambda values: _Spliced([values[i] for i in keep])
    if helper and spliced == [0] and keep[0] == 0:
        # ``_x: _x A B``, a repetition growing by one: extend the list in place
        # (it is only ever on this parse's stack).
        rest = keep[1:]

        def grow(values: list[Any]) -> Any:
            head: list[Any] = values[0]
            head.extend([values[i] for i in rest])
            return head

        return grow
    if method is None or helper:
        return None
    if not spliced and not single:
        if keep == list(range(size)):
            return method  # every value is a child, in order
        return lambda values: method([values[i] for i in keep])
    if spliced == [size - 1] and keep == list(range(size)):
        # ``rule: a _x``: the children are ``a``, then the repetition's.
        def prepend(values: list[Any]) -> Any:
            children = values[:-1]
            children.extend(values[-1])
            if single and len(children) == 1:
                return children[0]
            return method(children)

        return prepend
    return None
