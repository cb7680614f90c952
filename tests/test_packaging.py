"""The package as users get it: a light front end, and a wheel that carries its grammar."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("keras", "tensorflow", "jax", "torch")


def _run(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_front_end_imports_no_framework() -> None:
    code = f"""
import sys
import lossdsl
spec = lossdsl.LossSpec(expression="alpha*bce(p) + mse(loc) where true(p) == 1",
                        units={{"p": 0, "loc": 1}}, params={{"alpha": 0.5}})
lossdsl.validate(lossdsl.parse("mse(u0)"), units=1)
import pathlib, tempfile
cfg = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
cfg.write_text("loss: {{expression: 'mse(u0)', units: 1}}")
lossdsl.load_spec(cfg, key="loss")
try:
    lossdsl.validate("bec(u0)", units=1)
except lossdsl.LossValidationError as e:
    str(e)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({FRAMEWORKS!r}))
print("loaded:", loaded)
"""
    proc = _run(code, ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "loaded: []" in proc.stdout


def test_compiling_loads_keras_only_then() -> None:
    code = """
import sys
import lossdsl
assert "keras" not in sys.modules
loss = lossdsl.compile_loss("mse(u0)", units=1)
assert "keras" in sys.modules
print(type(loss).__mro__[1].__module__)
"""
    proc = _run(code, ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "keras" in proc.stdout


def test_wheel_carries_the_grammar(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            wheels,
            ROOT,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("lossdsl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lossdsl/lossdsl.lark" in names
    assert "lossdsl/py.typed" in names

    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", target, wheel],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    code = """
import lossdsl, lossdsl.parser
print(lossdsl.__file__)
print(lossdsl.parser.grammar_path())
print(lossdsl.parse("0.7*bce(u0)+0.3*mse(u1) where pred(u0)>=0.5"))
"""
    # Run outside the checkout, with the installed copy first on the path.
    proc = _run(code, tmp_path, PYTHONPATH=str(target))
    assert proc.returncode == 0, proc.stderr
    module_file, grammar, formula = proc.stdout.splitlines()
    assert module_file.startswith(str(target))
    assert grammar == str(target / "lossdsl" / "lossdsl.lark")
    assert formula == "0.7 * bce(u0) + 0.3 * mse(u1) where pred(u0) >= 0.5"
    packaged = (target / "lossdsl" / "lossdsl.lark").read_text()
    assert packaged == (ROOT / "grammar" / "lossdsl.lark").read_text()


def test_the_repository_has_one_grammar_file() -> None:
    grammars = [p.relative_to(ROOT) for p in ROOT.rglob("*.lark") if ".venv" not in p.parts]
    assert grammars == [Path("grammar/lossdsl.lark")]
