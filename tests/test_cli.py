"""The command line: exit codes, JSON output, --stdin, fmt, explain, schema,
eval, and no Keras except for eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def lossdsl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lossdsl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
        check=False,
    )


def test_check_valid_and_invalid() -> None:
    ok = lossdsl("check", "bce(p) + mse(loc) where true(p) == 1", "--units", '{"p": 0, "loc": 1}')
    assert (ok.returncode, ok.stdout.strip()) == (0, "valid")
    bad = lossdsl("check", "bce(u0) + mse(u9)", "--units", "2")
    assert bad.returncode == 1
    assert bad.stderr.startswith("u9 is out of range: the output has 2 units (u0..u1).")
    assert "    bce(u0) + mse(u9)\n                  ^^" in bad.stderr


@pytest.mark.parametrize(
    "args",
    [(), ("check",), ("check", "mse(u0)", "--units", "{bad json"), ("nonsense",)],
    ids=["no-command", "no-formula", "bad-json", "unknown-command"],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    assert lossdsl(*args).returncode == 2


def test_check_json() -> None:
    out = lossdsl("check", "bec(u0) + huber(u1, delt=1)", "--units", "2", "--json")
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["valid"] is False
    assert result["errors"] == [
        {
            "message": "Unknown function 'bec'. Did you mean 'bce'?",
            "line": 1,
            "column": 1,
            "end_column": 4,
            "hint": result["errors"][0]["hint"],
        },
        {
            "message": "huber() has no keyword 'delt'. Did you mean 'delta'?",
            "line": 1,
            "column": 21,
            "end_column": 27,
            "hint": "huber() accepts: delta.",
        },
    ]


def test_check_stdin_one_json_object_per_line() -> None:
    formulas = ["mse(u0)", "bec(u0)", "mse(u0", "alpha*mse(u1)"]
    out = lossdsl(
        "check", "--stdin", "--units", "2", "--params", '{"alpha": 1}', stdin="\n".join(formulas)
    )
    assert out.returncode == 1
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["valid"] for r in results] == [True, False, False, True]
    assert results[2]["errors"][0]["message"] == "Unclosed '(': the formula ends before its ')'."


def test_check_config_file() -> None:
    out = lossdsl("check", "--config", "examples/config.yaml", "--key", "training.loss")
    assert (out.returncode, out.stdout.strip()) == (0, "valid")
    missing = lossdsl("check", "--config", "examples/config.yaml", "--key", "training.los")
    assert missing.returncode == 1 and "Did you mean 'loss'?" in missing.stderr


def test_fmt_and_explain() -> None:
    assert lossdsl("fmt", "0.7*bce(u0)+0.3*mse(u1)where pred(u0)>=.5").stdout == (
        "0.7 * bce(u0) + 0.3 * mse(u1) where pred(u0) >= 0.5\n"
    )
    out = lossdsl("explain", "0.7*bce(u0) + 0.3*mse(u1) where pred(u0) >= 0.5", "--units", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "((0.7 * bce(u0)) + ((0.3 * mse(u1)) where (pred(u0) >= 0.5)))"
    assert lines[2].split() == [
        "sign",
        "weight",
        "term",
        "value",
        "per",
        "functions",
        "units",
        "condition",
        "normalisation",
    ]
    assert lines[3].split()[:7] == ["+", "0.7", "bce(u0)", "position", "bce", "u0", "-"]
    assert "pred(u0) >= 0.5" in lines[4] and "mean over selected samples" in lines[4]
    # After the table, one line per function from its catalogue entry.
    assert lines[6:] == [
        "bce: binary crossentropy (keras.losses.binary_crossentropy)",
        "mse: mean squared error (keras.losses.mean_squared_error)",
        "pred: one unit of y_pred, one value per sample",
    ]


def test_explain_lists_the_units_each_term_reads() -> None:
    # The units of losses and of pred() and true(), never a math function's argument.
    out = lossdsl("explain", "sqrt(square(pred(u0))) + max(mse(u1), 1) - 2", "--units", "2")
    assert out.returncode == 0, out.stderr
    rows = [line.split("  ") for line in out.stdout.splitlines()[3:6]]
    units = [[cell.strip() for cell in row if cell.strip()][5] for row in rows]
    assert units == ["u0", "u1", "-"]


def test_explain_shows_what_each_term_gives_a_value_for() -> None:
    out = lossdsl("explain", "dice(m) + mean(bce(m)) + mean(bce(m), batch=true)", "--units",
                  '{"m": 0}')  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [line.split("  ") for line in out.stdout.splitlines()[3:6]]
    levels = [[cell.strip() for cell in row if cell.strip()][3] for row in rows]
    assert levels == ["example", "example", "batch"]


def test_schema() -> None:
    schema = json.loads(lossdsl("schema").stdout)
    assert set(schema["properties"]) >= {"expression", "units", "params"}


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path) -> None:
    # As in `lossdsl check --stdin < many.txt | head -1`: the pipe closes while lossdsl
    # still has far more to write than the pipe holds.
    formulas = tmp_path / "many.txt"
    formulas.write_text("mse(u0) + bce(u1)\n" * 20_000)
    with formulas.open() as stdin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lossdsl", "check", "--stdin", "--units", "2"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(1) == b"{"
        proc.stdout.close()
        assert proc.wait(timeout=300) == 1
        assert b"Traceback" not in proc.stderr.read()


def test_eval(tmp_path: Path) -> None:
    y_true = np.array([[1.0, 2.0], [0.0, 5.0], [1.0, 1.0]], "float32")
    y_pred = np.array([[0.8, 1.0], [0.3, 0.0], [0.6, 2.0]], "float32")
    np.save(tmp_path / "t.npy", y_true)
    np.save(tmp_path / "p.npy", y_pred)
    out = lossdsl(
        "eval", "bce(u0) + mse(u1) where true(u0) == 1", "--units", "2",
        "--y-true", str(tmp_path / "t.npy"), "--y-pred", str(tmp_path / "p.npy"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    p, t = y_pred[:, 0].astype("float64"), y_true[:, 0]
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    mse = ((y_true[[0, 2], 1] - y_pred[[0, 2], 1]) ** 2).mean()
    assert result["bce_u0"] == pytest.approx(bce, rel=1e-5)
    assert result["mse_u1"] == pytest.approx(mse, rel=1e-5)
    assert result["loss"] == pytest.approx(bce + mse, rel=1e-5)


def test_only_eval_imports_keras() -> None:
    code = """
import sys, io, contextlib
from lossdsl.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    main(["check", "mse(u0)", "--units", "1"])
    main(["check", "bec(u0)", "--json"])
    main(["fmt", "mse(u0)"])
    main(["explain", "mse(u0)"])
    main(["schema"])
print(sorted({m.split(".")[0] for m in sys.modules} & {"keras", "tensorflow", "jax", "torch"}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# Each limit for untrusted input, as a service meets it: one line of `check --stdin`.
LIMIT_CASES = {
    "longer than 10,000 characters": ("+".join(["mse(u0)"] * 1300), "the limit is 10,000"),
    "longer than 100,000 characters raw": (
        "mse(u0)" + " " * 100_000,
        "the limit is 100,000",
    ),
    "101 parentheses": ("(" * 101 + "mse(u0)" + ")" * 101, "nested more than 100 levels"),
    "101 calls": ("abs(" * 101 + "pred(u0)" + ")" * 101, "nested more than 100 levels"),
    "101 unary minuses": ("-" * 101 + "mse(u0)", "nested more than 100 levels"),
    "101 nots": ("mse(u0) where " + "not " * 101 + "pred(u0) > 0", "nested more than 100"),
    "1,001 terms": ("+".join(["mse(u0)"] * 1001), "more than 1,000 terms"),
    "a number beyond float64": ("1e999*mse(u0)", "too large to represent"),
    "a number beyond float32": ("1e39*mse(u0)", "outside the float32 range"),
}


def test_every_limit_through_check_stdin() -> None:
    """Each case is rejected with its own message and a position inside the line,
    and the process goes on to the next line (here, a valid formula)."""
    lines = [text for text, _ in LIMIT_CASES.values()] + ["mse(u0)"]
    done = lossdsl("check", "--stdin", "--units", "1", stdin="\n".join(lines) + "\n")
    assert done.returncode == 1, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(lines)
    for (name, (text, expected)), result in zip(LIMIT_CASES.items(), results, strict=False):
        assert result["valid"] is False, name
        (error,) = result["errors"]
        assert expected in error["message"], (name, error["message"])
        assert error["line"] == 1, name
        assert 1 <= error["column"] <= len(text) + 1, (name, error)
    assert results[-1] == {"valid": True, "errors": [], "warnings": []}


def test_a_limit_through_check_argument() -> None:
    text, expected = LIMIT_CASES["101 parentheses"]
    done = lossdsl("check", text, "--units", "1")
    assert done.returncode == 1
    assert expected in done.stderr
    assert "^" in done.stderr


# -- untrusted command lines: usage errors, one JSON document, a batch that goes on ----------

HUGE = "1" * 5_000
DEEP = "[" * 30_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--units", "²"), "--units takes the output width (a whole number, such as 2)"),
        (("--units", HUGE), "--units: the number '111"),
        (("--units", "two"), "--units takes the output width (a whole number, such as 2) or a"),
        (("--units", DEEP), "Received: JSON nested too deeply to read."),
        (("--params", DEEP), "--params takes a JSON mapping of parameter names to numbers"),
        (("--params", '{"alpha": ' + "1" * 400 + "}"), "too large for a float"),
        (("--units", '{"p": 0, "p": 1}'), "--units: the key 'p' appears twice."),
        (("--units", '{"p": ' + HUGE + "}"), "(5,000 digits) is too large"),
        (("--stdin",), "--stdin reads the formulas from standard input"),
        (("--key", "loss"), "--key names the spec inside a --config FILE"),
    ],
    ids=[
        "superscript-two",
        "5000-digits",
        "a-word",
        "deep-units",
        "deep-params",
        "400-digit-param",
        "duplicate-unit",
        "5000-digit-column",
        "formula-and-stdin",
        "key-without-config",
    ],
)
def test_unreadable_options_are_usage_errors(args: tuple[str, ...], message: str) -> None:
    out = lossdsl("check", "alpha*mse(u0)", *args, stdin="")
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_options_beside_a_config_file_are_usage_errors() -> None:
    config = "examples/config.yaml"
    for args in (
        ("--config", config, "--stdin"),
        ("--config", config, "--key", "training.loss", "--units", "2"),
        ("--config", config, "--key", "training.loss", "--where-mean", "batch"),
    ):
        out = lossdsl("check", *args, stdin="mse(u0)\n")
        assert (out.returncode, out.stdout) == (2, ""), args
        assert "Traceback" not in out.stderr


def _one_json_document(out: subprocess.CompletedProcess[str]) -> dict[str, object]:
    result = json.loads(out.stdout)
    assert isinstance(result, dict)
    assert set(result) == {"valid", "errors", "warnings"}
    return result


@pytest.mark.parametrize(
    "args",
    [
        ("check", "--json"),
        ("check", "mse(u0)", "--units", "two", "--json"),
        ("check", "mse(u0)", "--params", DEEP, "--json"),
        ("check", "mse(u0)", "--js", "--bogus"),
        ("check", "--config", "absent.yaml", "--json"),
    ],
    ids=["no-formula", "bad-units", "deep-params", "abbreviated", "absent-config"],
)
def test_json_output_is_one_document_whatever_happens(args: tuple[str, ...]) -> None:
    out = lossdsl(*args)
    assert out.returncode in (1, 2), out.stderr
    result = _one_json_document(out)
    assert result["valid"] is False
    (error,) = result["errors"]  # type: ignore[misc]
    assert set(error) == {"message", "line", "column", "end_column", "hint"}
    assert "Traceback" not in out.stderr


def test_a_yaml_key_that_is_not_a_string_in_json_output(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("expression: mse(u0)\n5: 1\n")
    out = lossdsl("check", "--config", str(spec), "--json")
    assert out.returncode == 1, out.stderr
    (error,) = _one_json_document(out)["errors"]  # type: ignore[misc]
    assert "the key '5' on line 2 is not a string" in error["message"]
    assert (error["line"], error["column"]) == (2, 1)


def test_an_internal_error_is_one_line_and_json_with_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lossdsl.cli

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(lossdsl.cli, "lint", broken)
    assert lossdsl.cli.main(["check", "mse(u0)", "--json"]) == 1
    out, err = capsys.readouterr()
    message = "Internal error in lossdsl (RuntimeError: a bug); please report it."
    assert json.loads(out)["errors"][0]["message"] == message
    assert err == message + "\n"


def test_the_config_hint_names_the_key_option() -> None:
    out = lossdsl("check", "--config", "examples/config.yaml")
    assert out.returncode == 1
    assert "Hint: pass --key training.loss to read the spec at training.loss." in out.stderr


def test_every_stdin_line_gets_its_own_result() -> None:
    lines = [
        "mse(u" + HUGE + ")",  # past Python's int-string digit limit
        "# a comment, only",
        "",
        "   ",
        "mse(u0)  # a formula and its comment",
        "mse(u0) + " * 20_000,  # 200,000 characters, past the raw limit: not read
        "bec(u0)",
    ]
    out = lossdsl("check", "--stdin", "--units", "1", stdin="\n".join(lines) + "\n")
    assert out.returncode == 1, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == len(lines)
    assert results[0]["valid"] is False
    assert "is too large" in results[0]["errors"][0]["message"]
    skipped = {"valid": None, "errors": [], "warnings": []}
    assert results[1:4] == [
        {**skipped, "skipped": "comment"},
        {**skipped, "skipped": "blank"},
        {**skipped, "skipped": "blank"},
    ]
    assert results[4] == {"valid": True, "errors": [], "warnings": []}
    (too_long,) = results[5]["errors"]
    assert too_long["message"].startswith("The line is more than 100,000 characters long")
    assert (too_long["line"], too_long["column"]) == (1, 100_001)
    assert results[6]["errors"][0]["message"].startswith("Unknown function 'bec'")
    only_comments = lossdsl("check", "--stdin", stdin="# nothing to check\n\n")
    assert only_comments.returncode == 0


def test_a_stdin_line_that_is_not_utf8_fails_alone() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lossdsl", "check", "--stdin", "--units", "1"],
        input=b"mse(u0) + \xff\nmse(u0)\n",
        capture_output=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["valid"] for r in results] == [False, True]
    (error,) = results[0]["errors"]
    assert error["message"] == "The line is not UTF-8 text: the byte 0xff cannot be decoded."
    assert error["column"] == 11


def test_a_stdin_line_is_read_in_bounded_pieces() -> None:
    import io

    from lossdsl.cli_input import read_lines

    class Counting(io.StringIO):
        longest = 0

        def readline(self, size: int | None = -1, /) -> str:
            line = super().readline(size)
            Counting.longest = max(Counting.longest, len(line))
            return line

    stream = Counting("a" * 1_000_000 + "\nmse(u0)\n" + "b" * 25)
    assert list(read_lines(stream, 100)) == [None, "mse(u0)", "b" * 25]
    assert Counting.longest == 101


def test_an_error_inside_lossdsl_fails_its_stdin_line_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    import lossdsl.cli

    real = lossdsl.cli.check

    def flaky(formula: str, **kwargs: object) -> object:
        if "u1" in formula:
            raise OverflowError("int too large to convert to float")
        return real(formula, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lossdsl.cli, "check", flaky)
    monkeypatch.setattr(sys, "stdin", io.StringIO("mse(u1)\nmse(u0)\n"))
    assert lossdsl.cli.main(["check", "--stdin", "--units", "2"]) == 1
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["errors"][0]["message"].startswith("Internal error in lossdsl (OverflowError")
    assert second["valid"] is True


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a.npz", "it is an .npz archive, not one array"),
        ("s.npy", "it holds values of type <U1"),
        ("c.csv", "cannot read it (This file contains pickled (object) data."),
        ("absent.npy", "cannot read it (No such file or directory)"),
    ],
)
def test_eval_reads_npy_files_of_numbers_only(tmp_path: Path, name: str, why: str) -> None:
    np.save(tmp_path / "p.npy", np.zeros((2, 2), "float32"))
    np.savez(tmp_path / "a.npz", x=np.zeros(2))
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    (tmp_path / "c.csv").write_text("1,2\n3,4\n")
    bad = str(tmp_path / name)
    out = lossdsl("eval", "mse(u0)", "--units", "2", "--y-true", bad, "--y-pred",
                  str(tmp_path / "p.npy"))  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"lossdsl: --y-true {bad}: {why}")
    assert out.stderr.rstrip().endswith(
        "eval reads arrays of numbers or booleans saved with numpy.save (.npy files)."
    )


def test_fmt_checks_the_syntax_only() -> None:
    # A constant after a condition is refused by the parser itself, so by fmt too.
    out = lossdsl("fmt", "bce(u0) + mse(u1) where pred(u0) > 1 - alpha")
    assert out.returncode == 1
    assert out.stderr.startswith("A constant follows a condition: '- alpha' is a term of its own")
    # An unknown function is a check's finding, not the syntax's.
    assert lossdsl("fmt", "bec(u9)").stdout == "bec(u9)\n"
