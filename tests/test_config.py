"""Loss specs in config files: YAML, TOML and JSON, a dotted key, the bare
formula or a mapping, and errors that name the file, the key and the line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LESION, LESION_UNITS

import lossdsl
from lossdsl import LossSyntaxError, LossValidationError

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_toml_and_json_give_the_same_spec(tmp_path: Path) -> None:
    yaml_file = _write(
        tmp_path,
        "c.yaml",
        f"training:\n  loss:\n    expression: '{LESION}'\n    units: {{presence: 0, loc: 1}}\n",
    )
    toml_file = _write(
        tmp_path,
        "c.toml",
        f'[training.loss]\nexpression = "{LESION}"\nunits = {{ presence = 0, loc = 1 }}\n',
    )
    json_file = _write(
        tmp_path,
        "c.json",
        json.dumps({"training": {"loss": {"expression": LESION, "units": LESION_UNITS}}}),
    )
    expected = lossdsl.LossSpec(expression=LESION, units=LESION_UNITS)
    for path in (yaml_file, toml_file, json_file):
        spec = lossdsl.load_spec(path, key="training.loss")
        assert spec == expected, path
    assert isinstance(lossdsl.compile_loss(spec), lossdsl.FormulaLoss)


def test_a_bare_formula_string(tmp_path: Path) -> None:
    formula = "0.7*bce(u0) + 0.3*mse(u1) where true(u0) == 1"
    path = _write(tmp_path, "c.yml", f"loss: '{formula}'\n")
    assert lossdsl.load_spec(path, key="loss").expression == formula
    top = _write(tmp_path, "top.json", json.dumps(formula))
    assert lossdsl.load_spec(top).expression == formula


def test_errors_name_the_file_key_and_line(tmp_path: Path) -> None:
    text = (
        "# comment\n"
        "training:\n"
        "  loss:\n"
        "    expression: |\n"
        "      0.7 * bce(presence)\n"
        "      + 0.3 * mse(lco)\n"
        "    units: {presence: 0, loc: 1}\n"
    )
    path = _write(tmp_path, "c.yaml", text)
    with pytest.raises(LossValidationError) as info:
        lossdsl.load_spec(path, key="training.loss")
    err = info.value
    assert err.message == "Unknown unit 'lco'. Did you mean 'loc'?"
    shown = str(err)
    # Line 6 of the file holds the formula's second line; the caret is under "lco".
    assert f"{path}, key training.loss, line 6 of the file; formula line 2, column 13:" in shown
    assert "    + 0.3 * mse(lco)\n                ^^^" in shown


def test_syntax_errors_in_toml_point_at_the_formula_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.toml", '[a]\nx = 1\n[a.loss]\nexpression = "bce(u0) +"\nunits = 1\n')
    with pytest.raises(LossSyntaxError) as info:
        lossdsl.load_spec(path, key="a.loss")
    assert f"{path}, key a.loss, line 4 of the file; formula line 1, column 10:" in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "key", "message"),
    [
        ("c.yaml", "training:\n  loss: 'mse(u0)'\n", "training.los", "Did you mean 'loss'?"),
        ("c.yaml", "training: 3\n", "training.loss", "It is not a mapping."),
        ("c.yaml", "loss: [1, 2]\n", "loss", "must be the formula text or a mapping"),
        ("c.yaml", "loss: {expression: 'mse(u0)', unit: 1}\n", "loss", "Did you mean 'units'?"),
        ("c.yaml", "loss: [unclosed\n", "loss", "is not valid YAML"),
        ("c.toml", "loss = \n", "loss", "is not valid TOML"),
        ("c.json", "{", None, "is not valid JSON"),
        ("c.ini", "x", None, "Cannot tell the format"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, text: str, key: str | None, message: str) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(LossValidationError) as info:
        lossdsl.load_spec(path, key=key)
    assert message in str(info.value)
    assert info.value.__cause__ is None


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LossValidationError, match="Cannot read"):
        lossdsl.load_spec(tmp_path / "absent.yaml")


def test_the_example_config_trains() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_from_config.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 4
    first, last = (float(line.split()[3]) for line in (lines[0], lines[-1]))
    assert last < first
    assert "bce_presence" in lines[0] and "mse_loc" in lines[0]
