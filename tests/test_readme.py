"""Every snippet in the README runs: Python blocks execute (and a ``text`` block
right after one is its expected output), and every ``lossdsl`` block validates
in the context the README's language section states."""

from __future__ import annotations

import contextlib
import doctest
import io
import re
from pathlib import Path

import pytest

import lossdsl

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", README, re.S)]
UNITS = {"presence": 0, "loc": 1, "box": [2, 6], "cls": [6, 9]}
PARAMS = {"alpha": 0.7, "beta": 0.5}


def test_the_readme_states_the_context_used_here() -> None:
    assert '`units={"presence": 0, "loc": 1, "box": [2, 6], "cls": [6, 9]}`' in README
    assert '`params={"alpha": 0.7, "beta": 0.5}`' in README


FORMULAS = [code for lang, code in BLOCKS if lang == "lossdsl"]


@pytest.mark.parametrize("formula", FORMULAS, ids=[f"formula-{i}" for i in range(len(FORMULAS))])
def test_formula_snippet_validates_and_computes(formula: str) -> None:
    import numpy as np

    f = lossdsl.validate(formula, units=UNITS, params=PARAMS)
    assert lossdsl.parse(str(f)) == f
    loss = lossdsl.compile_loss(formula, units=UNITS, params=PARAMS)
    rng = np.random.default_rng(0)
    y_true = (rng.uniform(size=(8, 9)) > 0.5).astype("float32")
    y_pred = rng.uniform(0.05, 0.95, size=(8, 9)).astype("float32")
    values = np.asarray(loss.call(y_true, y_pred))
    assert values.shape == (8,)
    assert np.isfinite(values).all()


PYTHON = [
    (i, code, BLOCKS[i + 1][1] if i + 1 < len(BLOCKS) and BLOCKS[i + 1][0] == "text" else None)
    for i, (lang, code) in enumerate(BLOCKS)
    if lang == "python"
]


@pytest.mark.parametrize(
    ("index", "code", "expected"), PYTHON, ids=[f"python-{p[0]}" for p in PYTHON]
)
def test_python_snippet_runs(index: int, code: str, expected: str | None) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md block {index}", "exec"), {"__name__": f"readme_{index}"})
    if expected is not None:
        checker = doctest.OutputChecker()
        assert checker.check_output(expected, out.getvalue(), doctest.ELLIPSIS), out.getvalue()


def test_every_builtin_loss_is_documented() -> None:
    for name in lossdsl.catalog.BUILTIN_LOSSES:
        assert f"| `{name}` |" in README, name
    for name in lossdsl.catalog.MATH:
        assert name in README, name
