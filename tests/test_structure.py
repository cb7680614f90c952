"""The shape of the package: small modules, no import cycle, one parse path through Lark's
public interface, and a spec checked once on its way to a compiled loss."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import lossdsl
from lossdsl import checker

PACKAGE = Path(lossdsl.__file__).resolve().parent
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every lossdsl module ``path`` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {_module_name(p) for p in MODULES}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {name for name in found if name in names}


@pytest.mark.parametrize("path", MODULES, ids=[_module_name(p) for p in MODULES])
def test_no_module_is_over_500_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_the_imports_between_modules_have_no_cycle() -> None:
    graph = {}
    for path in MODULES:
        name = _module_name(path)
        # A package's __init__ may re-export its modules; it is not a dependency of them.
        graph[name] = {
            m for m in _imports(path) if m not in (name, "lossdsl") and not name.startswith(m + ".")
        }
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for dependency in sorted(graph[name]):
            visit(dependency, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_no_module_is_shadowed_by_a_name_of_its_package() -> None:
    for path in MODULES:
        name = _module_name(path)
        if "." not in name or name.endswith("__main__"):
            continue
        parent, _, leaf = name.rpartition(".")
        module = importlib.import_module(name)
        assert getattr(importlib.import_module(parent), leaf, module) is module, name


def test_the_parser_uses_only_larks_public_interface() -> None:
    private = re.compile(r"parse_table|lexer_conf|lark\.parsers|_parse_table|\.parser\.parser")
    for path in MODULES:
        text = path.read_text(encoding="utf-8")
        assert not private.search(text), path


def test_a_spec_is_checked_once_on_its_way_to_a_loss_and_its_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = checker.check

    def counting(formula: lossdsl.Formula, **kwargs: object) -> checker.Checked:
        calls.append(str(formula))
        return real(formula, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checker, "check", counting)
    formula = "0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1  # counted"
    loss = lossdsl.compile_loss(formula, units={"presence": 0, "loc": 1}, params={})
    assert len(calls) == 1
    metrics = loss.term_metrics() + loss.term_metrics(weighted=True)
    assert len(metrics) == 4
    assert len(calls) == 1
    spec = lossdsl.LossSpec(expression="bce(u0) + mse(u1)  # a spec", units=2)
    assert len(calls) == 2
    lossdsl.compile_loss(spec).term_metrics()
    assert len(calls) == 2  # the spec was checked when it was made
