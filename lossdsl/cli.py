"""The ``lossdsl`` command line (also ``python -m lossdsl``).

    lossdsl check FORMULA [--units N|JSON] [--params JSON] [--json]
    lossdsl check --config FILE [--key K] [--json]
    lossdsl check --stdin [--units ...] [--params ...]     # one formula a line, JSON out
    lossdsl fmt FORMULA
    lossdsl explain FORMULA [--units ...] [--params ...]
    lossdsl schema
    lossdsl eval FORMULA --y-true a.npy --y-pred b.npy [--units ...] [--params ...]

Exit status: 0 valid, 1 invalid (the caret message on stderr), 2 usage error (a
one-line message on stderr), never a traceback. With ``--json`` standard output is one JSON
document, usage errors included. What the options and standard input hold is read by
``lossdsl.cli_input``. Only ``eval`` imports Keras.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from lossdsl import ast
from lossdsl.arguments import WHERE_MEANS
from lossdsl.catalog import Accessor, LossEntry, MathFunction, lookup
from lossdsl.cli_input import UsageError, load_array, params_arg, read_lines, units_arg
from lossdsl.config import read_spec
from lossdsl.errors import LossDSLError, LossSyntaxError, LossValidationError
from lossdsl.levels import Level
from lossdsl.lints import lint
from lossdsl.parser import MAX_RAW_LENGTH
from lossdsl.validation import check

if TYPE_CHECKING:
    from lossdsl.spec import LossSpec

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _spec_from(args: argparse.Namespace) -> LossSpec:
    if args.config:
        if args.formula:
            raise UsageError("give a FORMULA or --config, not both")
        options = {"--units": args.units, "--params": args.params, "--where-mean": args.where_mean}
        given = [name for name, value in options.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: with --config, the spec comes from the file")
        return read_spec(args.config, key=args.key, key_syntax="--key {}")
    if args.key:
        raise UsageError("--key names the spec inside a --config FILE")
    if not args.formula:
        raise UsageError("a FORMULA (or --config FILE, or --stdin) is needed")
    from lossdsl.spec import LossSpec  # pydantic, loaded only when needed

    return LossSpec.model_validate(
        {
            "expression": args.formula,
            "units": units_arg(args.units),
            "params": params_arg(args.params),
            "where_mean": args.where_mean or WHERE_MEANS[0],
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


def _plain_error(message: str) -> dict[str, Any]:
    """An error without a place in the text, shaped as every other one in ``--json``."""
    return {"message": message, "line": None, "column": None, "end_column": None, "hint": None}


def _internal(e: BaseException) -> str:
    return f"Internal error in lossdsl ({type(e).__name__}: {e}); please report it."


def _result(
    valid: bool | None, errors: list[dict[str, Any]], warnings: list[dict[str, Any]]
) -> dict[str, Any]:
    """The JSON object of ``check --json`` and of each ``--stdin`` line."""
    return {"valid": valid, "errors": errors, "warnings": warnings}


_UNDECODED = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of such a byte


def _check_line(line: str | None, units: Any, params: Any, strict: bool) -> dict[str, Any]:
    """One ``--stdin`` line's result (``None``: a line past the length limit)."""
    if line is None:
        too_long = LossSyntaxError(
            f"The line is more than {MAX_RAW_LENGTH:,} characters long; the limit is "
            f"{MAX_RAW_LENGTH:,}. The rest of the line was not read.",
            source=" " * MAX_RAW_LENGTH + "?",  # the line and column of the first one too many
            span=(MAX_RAW_LENGTH, MAX_RAW_LENGTH + 1),
        )
        return _result(False, _error_json(too_long), [])
    text = line.strip()
    if not text or text.startswith("#"):
        return {**_result(None, [], []), "skipped": "comment" if text else "blank"}
    undecoded = _UNDECODED.search(line)
    if undecoded is not None:  # a byte that is not UTF-8, read as a lone surrogate
        bad = undecoded.start()
        not_text = LossSyntaxError(
            f"The line is not UTF-8 text: the byte 0x{ord(line[bad]) - 0xDC00:02x} cannot be "
            "decoded.",
            source=line,
            span=(bad, bad + 1),
        )
        return _result(False, _error_json(not_text), [])
    try:
        checked = check(line, units=units, params=params)
        lints = [item for e in lint(checked) for item in _error_json(e)]
    except LossDSLError as e:
        return _result(False, _error_json(e), [])
    except Exception as e:  # a bug in lossdsl: this line's result says so, the batch goes on
        return _result(False, [_plain_error(_internal(e))], [])
    if strict and lints:
        return _result(False, lints, [])
    return _result(True, [], lints)


def _stdin_batch(args: argparse.Namespace) -> int:
    if args.formula or args.config:
        raise UsageError(
            "--stdin reads the formulas from standard input: give no FORMULA or --config"
        )
    if args.key:
        raise UsageError("--key names the spec inside a --config FILE")
    units, params = units_arg(args.units), params_arg(args.params)
    stream = sys.stdin
    if stream is None:
        raise UsageError("--stdin: there is no standard input")
    if hasattr(stream, "reconfigure"):  # bytes that are not UTF-8 fail their line only
        stream.reconfigure(encoding="utf-8", errors="surrogateescape")
    ok = True
    for line in read_lines(stream, MAX_RAW_LENGTH):
        result = _check_line(line, units, params, args.strict)
        ok = ok and result["valid"] is not False
        print(json.dumps(result))
    return 0 if ok else 1


def _cmd_check(args: argparse.Namespace) -> int:
    if args.stdin:
        return _stdin_batch(args)
    try:
        spec = _spec_from(args)
        found = lint(spec.checked)
        if args.strict and found:
            raise LossValidationError.collect(found)
    except LossDSLError as e:
        if args.json:
            print(json.dumps(_result(False, _error_json(e), [])))
        else:
            print(e, file=sys.stderr)
        return 1
    if args.json:
        warned = [item for w in found for item in _error_json(w)]
        print(json.dumps(_result(True, [], warned)))
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


def _finite(value: Any) -> float | None:
    """A value for JSON, which has no NaN or infinity: ``None`` for those."""
    number = float(value)
    return number if math.isfinite(number) else None


def _cmd_eval(args: argparse.Namespace) -> int:
    spec = _spec_from(args)
    y_true, y_pred = load_array(args.y_true, "--y-true"), load_array(args.y_pred, "--y-pred")
    from lossdsl.api import compile_loss

    loss = compile_loss(spec)
    out = {"loss": _finite(loss(y_true, y_pred))}
    out.update({k: _finite(v) for k, v in loss.terms(y_true, y_pred).items()})
    print(json.dumps(out))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lossdsl", description="Check, format and explain lossdsl formulas.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def spec_args(p: argparse.ArgumentParser, config: bool = True) -> None:
        p.add_argument("formula", nargs="?", help="the formula text")
        p.add_argument("--units", help="output width (N) or JSON mapping of names")
        p.add_argument("--params", help="JSON mapping of parameter names to numbers")
        p.add_argument("--where-mean", choices=WHERE_MEANS, help=f"default {WHERE_MEANS[0]}")
        if config:
            p.add_argument("--config", help="a YAML, TOML or JSON file holding the spec")
            p.add_argument("--key", help="dotted path to the spec inside --config")

    p = sub.add_parser("check", help="validate a formula (exit 0 valid, 1 invalid)")
    spec_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object, whatever happens")
    p.add_argument(
        "--stdin", action="store_true", help="one formula a line in, one JSON object a line out"
    )
    p.add_argument("--strict", action="store_true", help="treat lints (LD101 ...) as errors")
    p.set_defaults(run=_cmd_check)

    p = sub.add_parser(
        "fmt", help="print the canonical text (checks the syntax only; check validates)"
    )
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


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether ``--json`` (or an abbreviation argparse accepts) is among the options."""
    options = argv[: list(argv).index("--")] if "--" in argv else argv
    return any(len(a) > 2 and "--json".startswith(a) for a in options)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    With ``--json``, standard output is one JSON document whatever happens: a usage error
    (exit status 2) or an internal error (exit status 1) is an object with ``valid`` false
    and its message in ``errors``, as an invalid formula is.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
        status: int = args.run(args)
        return status
    except UsageError as e:
        message, status = str(e), 2
        if not message.startswith("lossdsl"):
            message = f"lossdsl: {message}"
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
    except Exception as e:  # a bug in lossdsl: a one-line message, never a traceback
        message, status = _internal(e), 1
    if _wants_json(argv):
        print(json.dumps(_result(False, [_plain_error(message)], [])))
    print(message, file=sys.stderr)
    return status
