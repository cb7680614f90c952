"""Loss specs in config files: YAML, TOML and JSON, a dotted key, the bare
formula or a mapping, and errors that name the file, the key and the line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LESION, LESION_UNITS

import lossdsl
import lossdsl.config
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


# -- untrusted files: what is read, and how each problem is told --------------------------------


def _error(path: Path, key: str | None = None) -> LossValidationError:
    with pytest.raises(LossValidationError) as info:
        lossdsl.load_spec(path, key=key)
    assert info.value.__cause__ is None
    return info.value


def test_a_file_that_is_not_utf8_names_the_byte_and_its_line(tmp_path: Path) -> None:
    utf16 = tmp_path / "b.yaml"
    utf16.write_bytes(b"\xff\xfe")  # a UTF-16 byte order mark
    err = _error(utf16)
    assert err.message == (
        f"{utf16} is not UTF-8 text: the byte 0xff at offset 0 (line 1) cannot be decoded."
    )
    assert err.hint == "save the file as UTF-8."
    later = tmp_path / "c.yaml"
    later.write_bytes(b"expression: mse(u0)\nunits: \xe9\n")  # Latin-1
    err = _error(later)
    assert "the byte 0xe9 at offset 27 (line 2)" in err.message
    assert (err.line, err.column) == (2, 8)
    assert "    units: \ufffd\n           ^" in str(err)


def test_a_byte_order_mark_is_allowed(tmp_path: Path) -> None:
    for name in ("c.yaml", "c.json", "c.toml"):
        path = tmp_path / name
        text = {"c.yaml": "expression: mse(u0)\n", "c.json": '{"expression": "mse(u0)"}'}.get(
            name, 'expression = "mse(u0)"\n'
        )
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert lossdsl.load_spec(path).expression == "mse(u0)", name


def _load_in_a_process(path: Path) -> subprocess.CompletedProcess[str]:
    # In a process of its own, so that a read that blocks fails the test instead of hanging it.
    code = (
        f"import lossdsl\ntry:\n    lossdsl.load_spec({str(path)!r})\n"
        "except lossdsl.LossDSLError as e:\n    print(e)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_a_device_is_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)
    zero = tmp_path / "z.yaml"
    zero.symlink_to("/dev/zero")
    for path, kind in ((fifo, "a FIFO (named pipe)"), (zero, "a character device")):
        done = _load_in_a_process(path)
        assert done.returncode == 0, done.stderr
        expected = f"Cannot read {path}: it is {kind}; a config file must be a regular file."
        assert done.stdout.strip() == expected
    folder = tmp_path / "d.yaml"
    folder.mkdir()
    assert "it is a directory" in _error(folder).message


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("expression: mse(u0)\n" + "#" * lossdsl.config.MAX_CONFIG_BYTES)
    err = _error(path)
    size = path.stat().st_size
    assert err.message == (
        f"{path} is {size:,} bytes long; a config file may hold at most 1,048,576 bytes."
    )
    fits = tmp_path / "fits.yaml"
    fits.write_text("expression: mse(u0)\n" + "#" * (lossdsl.config.MAX_CONFIG_BYTES - 21) + "\n")
    assert fits.stat().st_size == lossdsl.config.MAX_CONFIG_BYTES
    assert lossdsl.load_spec(fits).expression == "mse(u0)"


DUPLICATES = {
    "yaml": (
        "c.yaml",
        "expression: mse(u0) - 0.5*mse(u0)\nallow_negative: false\nallow_negative: true\n",
        "the key 'allow_negative' appears twice in one mapping, on lines 2 and 3.",
        (3, 1, "    allow_negative: true\n    ^^^^^^^^^^^^^^"),
    ),
    "yaml, nested": (
        "c.yaml",
        "loss:\n  expression: mse(u0)\n  units: {a: 0, b: 1, a: 2}\n",
        "the key 'a' appears twice in one mapping, on line 3.",
        (3, 23, "      units: {a: 0, b: 1, a: 2}\n                          ^"),
    ),
    "yaml, 1 and true are one key": (
        "c.yaml",
        "other: {1: x, true: y}\nexpression: mse(u0)\n",
        "the keys '1' and 'true' are one key in one mapping, on line 1.",
        (1, 15, None),
    ),
    "json": (
        "c.json",
        '{\n  "expression": "mse(u0) - 0.5*mse(u0)",\n  "allow_negative": false,\n'
        '  "allow_negative": true\n}',
        "the key 'allow_negative' appears twice in one object, on lines 3 and 4.",
        (4, 3, '      "allow_negative": true\n      ^^^^^^^^^^^^^^^^'),
    ),
    "json, in a string and nested": (
        "c.json",
        '{"note": "\\"units\\": 1", "loss": {"units": 1, "x": {"units": 2}, "units": 3}}',
        "the key 'units' appears twice in one object, on line 1.",
        (1, 66, None),
    ),
}


@pytest.mark.parametrize("case", DUPLICATES.values(), ids=list(DUPLICATES))
def test_a_key_twice_is_an_error_naming_it_and_its_lines(
    tmp_path: Path, case: tuple[str, str, str, tuple[int, int, str | None]]
) -> None:
    name, text, message, (line, column, caret) = case
    path = _write(tmp_path, name, text)
    err = _error(path)
    kind = "YAML" if name.endswith(".yaml") else "JSON"
    assert err.message == f"{path} is not valid {kind}: {message}"
    assert (err.line, err.column) == (line, column)
    if caret is not None:
        assert caret in str(err)


def test_a_key_twice_in_toml_is_a_clean_error_with_a_caret(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.toml", 'expression = "mse(u0)"\nunits = 1\nunits = 2\n')
    err = _error(path)
    assert err.message == f"{path} is not valid TOML: Cannot overwrite a value."
    assert err.line == 3
    assert "    units = 2\n" in str(err)
    assert err.hint == "a key or a table may be set once; this line sets it again."


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = "base: &base {expression: 'mse(u0)', units: 1}\nloss:\n  <<: *base\n  units: 2\n"
    spec = lossdsl.load_spec(_write(tmp_path, "c.yaml", text), key="loss")
    assert spec.units == 2


@pytest.mark.parametrize(
    ("text", "written", "kind", "place"),
    [
        ("expression: mse(u0)\n5: 1\n", "5", "an integer", (2, 1)),
        ("expression: mse(u0)\n~: 1\n", "~", "null", (2, 1)),
        ("expression: mse(u0)\nunits: {a: 0, true: 1}\n", "true", "true or false", (2, 15)),
        ("expression: 'a*mse(u0)'\nparams: {1.5: 2}\n", "1.5", "a number", (2, 10)),
    ],
)
def test_a_yaml_key_that_is_not_a_string_is_named(
    tmp_path: Path, text: str, written: str, kind: str, place: tuple[int, int]
) -> None:
    line, column = place
    path = _write(tmp_path, "s.yaml", text)
    err = _error(path)
    assert err.message.startswith(
        f"{path}: the key {written!r} on line {line} is not a string: YAML reads it as {kind}."
    )
    assert (err.line, err.column) == (line, column)


def test_keys_that_are_not_strings_elsewhere_in_the_config_are_fine(tmp_path: Path) -> None:
    text = "class_weights: {0: 1.0, 1: 3.0}\nloss: {expression: 'mse(u0)'}\n"
    assert lossdsl.load_spec(_write(tmp_path, "c.yaml", text), key="loss").expression == "mse(u0)"


def test_yaml_errors_show_the_line_and_column_of_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.yaml", "loss:\n  expression: [mse(u0)\n  units: 1\n")
    err = _error(path, key="loss")
    assert err.message.startswith(f"{path} is not valid YAML: ")
    assert err.line is not None and err.line >= 2
    assert str(err).count("^") == 1


def test_the_docs_layout_in_a_yaml_block_is_a_yaml_error_with_a_hint(tmp_path: Path) -> None:
    # The layout of docs/language.md ("Comments and layout"), its first line indented past
    # the + of the second, in a | block: the block ends at the + line.
    text = (
        "loss:\n"
        "  expression: |\n"
        "      0.7 * bce(presence)\n"
        "    + 0.3 * mse(loc)\n"
        "  units: {presence: 0, loc: 1}\n"
    )
    err = _error(_write(tmp_path, "c.yaml", text), key="loss")
    assert (err.line, err.column) == (4, 5)
    assert "    + 0.3 * mse(loc)\n        ^" in str(err)
    assert err.hint is not None and "indented less on a later line" in err.hint


def test_json_errors_show_the_line_and_column_of_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.json", '{\n  "expression": "mse(u0)",\n}')
    err = _error(path)
    assert err.message.startswith(f"{path} is not valid JSON: ")
    assert (err.line, err.column) == (3, 1)  # where a key was expected after the comma
    assert str(err).endswith("  line 3, column 1:\n    }\n    ^")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.yaml", "[" * 100_000),
        ("c.json", "[" * 100_000 + "]" * 100_000),
        ("c.toml", "a = " + "[" * 100_000 + "]" * 100_000),
    ],
)
def test_deep_nesting_is_a_clean_error(tmp_path: Path, name: str, text: str) -> None:
    assert "is not valid" in _error(_write(tmp_path, name, text)).message


def test_yaml_aliases_cannot_make_a_huge_spec(tmp_path: Path) -> None:
    # Nine levels of ten aliases each: a billion values from a few hundred bytes.
    lines = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    lines += ["loss:", "  expression: mse(u0)", "  units: *a9"]
    err = _error(_write(tmp_path, "c.yaml", "\n".join(lines) + "\n"), key="loss")
    assert "holds more than 100,000 values" in err.message
    recursive = _write(tmp_path, "r.yaml", "expression: mse(u0)\nunits: &u [*u]\n")
    assert "holds more than 100,000 values" in _error(recursive).message


def test_a_spec_under_another_key_gets_a_hint_naming_it(tmp_path: Path) -> None:
    config = ROOT / "examples" / "config.yaml"
    err = _error(config)
    assert err.message == (
        f"{config} has no loss spec at the top level: there is no 'expression' there, "
        "but training.loss has one."
    )
    assert err.hint == 'pass key="training.loss" to read the spec at training.loss.'
    assert _error(config, key="training").hint == (
        'pass key="training.loss" to read the spec at training.loss.'
    )
    deep = _write(tmp_path, "c.json", json.dumps({"a": {"b": {"c": {"d": {"expression": "x"}}}}}))
    assert _error(deep).hint == 'pass key="a.b.c.d" to read the spec at a.b.c.d.'
    deeper = _write(
        tmp_path, "d.json", json.dumps({"a": {"b": {"c": {"d": {"e": {"expression": "x"}}}}}})
    )
    assert (
        _error(deeper).hint
        == "the fields are expression, units, params, where_mean, allow_negative, learned."
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.yaml", "expression: mse(u0)\nunits: " + "1" * 5_000 + "\n"),
        ("c.json", '{"expression": "mse(u0)", "units": ' + "1" * 5_000 + "}"),
        ("c.toml", 'expression = "mse(u0)"\nunits = ' + "1" * 5_000 + "\n"),
    ],
)
def test_an_integer_past_pythons_digit_limit_is_a_clean_error(
    tmp_path: Path, name: str, text: str
) -> None:
    path = _write(tmp_path, name, text)
    assert _error(path).message == (
        f"{path} holds an integer of more than {sys.get_int_max_str_digits():,} digits, "
        "too long to read."
    )
