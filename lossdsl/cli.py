"""The ``lossdsl`` command line (also ``python -m lossdsl``).

    lossdsl check FORMULA [--units N|JSON] [--params JSON] [--json]
    lossdsl check --config FILE [--key K] [--json]
    lossdsl check --stdin [--units ...] [--params ...]     # one formula a line, JSON out
    lossdsl fmt FORMULA
    lossdsl explain FORMULA [--units ...] [--params ...]
    lossdsl schema
    lossdsl eval FORMULA --y-true a.npy --y-pred b.npy [--units ...] [--params ...]

Exit status: 0 valid, 1 invalid (the caret message on stderr), 2 usage error.
Only ``eval`` imports Keras.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from lossdsl import ast
from lossdsl.arguments import WHERE_MEANS
from lossdsl.catalog import Accessor, LossEntry, MathFunction, lookup
from lossdsl.config import load_spec
from lossdsl.errors import LossDSLError, LossValidationError
from lossdsl.levels import Level
from lossdsl.lints import lint
from lossdsl.validation import check

if TYPE_CHECKING:
    from lossdsl.spec import LossSpec

__all__ = ["main"]


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(f"{self.prog}: {message}")


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return int(text) if what == "units" and text.strip().isdigit() else json.loads(text)
    except json.JSONDecodeError as e:
        raise _Usage(f"--{what} must be JSON: {e}") from None


def _spec_from(args: argparse.Namespace) -> LossSpec:
    if args.config:
        if args.formula:
            raise _Usage("give a FORMULA or --config, not both")
        return load_spec(args.config, key=args.key)
    if not args.formula:
        raise _Usage("a FORMULA (or --config FILE, or --stdin) is needed")
    from lossdsl.spec import LossSpec  # pydantic, loaded only when needed

    return LossSpec.model_validate(
        {
            "expression": args.formula,
            "units": _json_arg(args.units, "units"),
            "params": _json_arg(args.params, "params") or {},
            "where_mean": args.where_mean,
        }
    )


def _error_json(e: LossDSLError) -> list[dict[str, Any]]:
    return [
        {
            "message": err.message,
            "line": err.line,
            "column": err.column,
            "end_column": err.end_column,
            "hint": err.hint,
        }
        for err in getattr(e, "errors", [e])
    ]


def _check_line(formula: str, units: Any, params: Any, strict: bool) -> dict[str, Any]:
    """One ``--stdin`` line's result."""
    try:
        checked = check(formula, units=units, params=params)
    except LossDSLError as e:
        return {"valid": False, "errors": _error_json(e), "warnings": []}
    lints = [item for e in lint(checked) for item in _error_json(e)]
    if strict and lints:
        return {"valid": False, "errors": lints, "warnings": []}
    return {"valid": True, "errors": [], "warnings": lints}


def _cmd_check(args: argparse.Namespace) -> int:
    if args.stdin:
        units, params = _json_arg(args.units, "units"), _json_arg(args.params, "params") or {}
        ok = True
        for line in sys.stdin:
            result = _check_line(line.rstrip("\n"), units, params, args.strict)
            ok = ok and result["valid"]
            print(json.dumps(result))
        return 0 if ok else 1
    try:
        spec = _spec_from(args)
        found = lint(spec.checked)
        if args.strict and found:
            raise LossValidationError.collect(found)
    except LossDSLError as e:
        if args.json:
            print(json.dumps({"valid": False, "errors": _error_json(e), "warnings": []}))
        else:
            print(e, file=sys.stderr)
        return 1
    if args.json:
        warned = [item for w in found for item in _error_json(w)]
        print(json.dumps({"valid": True, "errors": [], "warnings": warned}))
    else:
        for w in found:
            print(f"warning: {w}", file=sys.stderr)
        print("valid")
    return 0


def _cmd_fmt(args: argparse.Namespace) -> int:
    from lossdsl.parser import parse

    print(parse(args.formula))
    return 0


def _parenthesised(node: ast.Node) -> str:
    """Every operation in parentheses, so a reader sees exactly how it bound."""
    if isinstance(node, ast.Sum):
        out = _parenthesised(node.terms[0][1])
        for op, e in node.terms[1:]:
            out += f" {op} {_parenthesised(e)}"
        return f"({out})"
    if isinstance(node, ast.Product):
        out = _parenthesised(node.factors[0][1])
        for op, e in node.factors[1:]:
            out += f" {op} {_parenthesised(e)}"
        return f"({out})"
    if isinstance(node, ast.Where):
        return f"({_parenthesised(node.term)} where {_parenthesised(node.cond)})"
    if isinstance(node, ast.Neg):
        return f"(-{_parenthesised(node.operand)})"
    if isinstance(node, ast.Compare):
        return f"({_parenthesised(node.left)} {node.op} {_parenthesised(node.right)})"
    if isinstance(node, ast.And | ast.Or):
        word = " and " if isinstance(node, ast.And) else " or "
        return "(" + word.join(_parenthesised(c) for c in node.items) + ")"
    if isinstance(node, ast.Not):
        return f"(not {_parenthesised(node.operand)})"
    if isinstance(node, ast.Call):
        args = [_parenthesised(a) for a in node.args]
        args += [f"{k.name}={k.value}" for k in node.kwargs]
        return f"{node.name}({', '.join(args)})"
    return str(node)


_LEVELS = {
    Level.CONSTANT: "constant",
    Level.POSITION: "position",
    Level.EXAMPLE: "example",
    Level.BATCH: "batch",
}


def _explain_rows(spec: LossSpec) -> list[dict[str, str]]:
    rows = []
    checked = spec.checked
    samples = "examples" if checked.level is Level.EXAMPLE else "samples"
    for t, level in zip(checked.terms, checked.term_levels, strict=True):
        weight = t.weight(spec.params)
        calls = [n for n in ast.walk(t.body) if isinstance(n, ast.Call)]
        # The units a term reads: the selectors of its losses and of pred() and true().
        units = {str(c.args[0]) for c in calls if c.args and _reads_units(c)}
        rows.append(
            {
                "sign": "-" if weight < 0 else "+",
                "weight": ast.format_number(abs(weight)),
                "term": str(t.body),
                "value per": _LEVELS[level],
                "functions": ", ".join(sorted({c.name for c in calls})) or "-",
                "units": ", ".join(sorted(units)) or "-",
                "condition": str(t.cond) if t.cond is not None else "-",
                "normalisation": (
                    "mean over the batch"
                    if t.cond is None
                    else f"mean over selected {samples}"
                    if spec.where_mean == "selected"
                    else "sum / batch"
                ),
            }
        )
    return rows


def _reads_units(call: ast.Call) -> bool:
    return isinstance(lookup(call.name), LossEntry | Accessor)


def _legend(spec: LossSpec) -> list[str]:
    """One line per function the formula calls, from its catalogue entry."""
    names = sorted({n.name for n in ast.walk(spec.formula.expr) if isinstance(n, ast.Call)})
    lines = []
    for name in names:
        entry = lookup(name)
        if isinstance(entry, LossEntry) and entry.keras_name:
            lines.append(f"{name}: {entry.summary} (keras.losses.{entry.keras_name})")
        elif isinstance(entry, MathFunction):
            lines.append(f"{entry.signature}: {entry.summary}")
        elif entry is not None:
            lines.append(f"{name}: {entry.summary}")
    return lines


def _cmd_explain(args: argparse.Namespace) -> int:
    spec = _spec_from(args)
    print(_parenthesised(spec.formula.expr))
    rows = _explain_rows(spec)
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    print()
    print("  ".join(h.ljust(widths[h]) for h in headers).rstrip())
    for r in rows:
        print("  ".join(r[h].ljust(widths[h]) for h in headers).rstrip())
    print()
    print("\n".join(_legend(spec)))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from lossdsl.spec import LossSpec

    print(json.dumps(LossSpec.model_json_schema(), indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    spec = _spec_from(args)
    import numpy as np

    from lossdsl.api import compile_loss

    try:
        y_true, y_pred = np.load(args.y_true), np.load(args.y_pred)
    except (OSError, ValueError) as e:
        raise _Usage(f"cannot read the arrays: {e}") from None
    loss = compile_loss(spec)
    out = {"loss": float(loss(y_true, y_pred))}
    out.update({k: float(v) for k, v in loss.terms(y_true, y_pred).items()})
    print(json.dumps(out))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lossdsl", description="Check, format and explain lossdsl formulas.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def spec_args(p: argparse.ArgumentParser, config: bool = True) -> None:
        p.add_argument("formula", nargs="?", help="the formula text")
        p.add_argument("--units", help="output width (N) or JSON mapping of names")
        p.add_argument("--params", help="JSON mapping of parameter names to numbers")
        p.add_argument("--where-mean", default=WHERE_MEANS[0], choices=WHERE_MEANS)
        if config:
            p.add_argument("--config", help="a YAML, TOML or JSON file holding the spec")
            p.add_argument("--key", help="dotted path to the spec inside --config")

    p = sub.add_parser("check", help="validate a formula (exit 0 valid, 1 invalid)")
    spec_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--stdin", action="store_true", help="one formula per input line, JSON out")
    p.add_argument("--strict", action="store_true", help="treat lints (LD101 ...) as errors")
    p.set_defaults(run=_cmd_check)

    p = sub.add_parser("fmt", help="print the canonical text")
    p.add_argument("formula")
    p.set_defaults(run=_cmd_fmt)

    p = sub.add_parser("explain", help="show how the formula bound, term by term")
    spec_args(p)
    p.set_defaults(run=_cmd_explain)

    p = sub.add_parser("schema", help="print the JSON Schema of a loss spec")
    p.set_defaults(run=_cmd_schema)

    p = sub.add_parser("eval", help="the loss and each term on saved arrays (loads Keras)")
    spec_args(p)
    p.add_argument("--y-true", required=True)
    p.add_argument("--y-pred", required=True)
    p.set_defaults(run=_cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
        status: int = args.run(args)
        return status
    except _Usage as e:
        print(e, file=sys.stderr)
        return 2
    except LossDSLError as e:
        print(e, file=sys.stderr)
        return 1
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except BrokenPipeError:
        # The reader stopped early (lossdsl schema | head): the rest of the output has
        # nowhere to go. Point stdout at /dev/null so that Python's flush at exit is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
