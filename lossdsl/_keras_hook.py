"""Register lossdsl's Keras classes as soon as Keras is imported.

``keras.saving.load_model`` finds a custom class only through Keras's registry,
which a class joins when its module runs. ``import lossdsl`` must stay free of
Keras, yet a model saved with a ``FormulaLoss`` must load after only
``import lossdsl``. So: if Keras is already imported, register now; otherwise
put a finder on ``sys.meta_path`` that, when ``keras`` itself is next imported,
lets it load normally and then imports ``lossdsl.keras.loss`` (which registers the
classes). The finder removes itself after that one use.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["install"]

# The modules that register classes with Keras (loss imports metrics; model imports loss).
_BACKEND_MODULES = ("lossdsl.keras.metrics", "lossdsl.keras.loss", "lossdsl.keras.model")


def _register() -> None:
    if any(name in sys.modules for name in _BACKEND_MODULES):
        return  # Keras was imported by one of them, which registers itself as it ends
    for name in _BACKEND_MODULES:
        importlib.import_module(name)


class _AfterKeras(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)  # one use; the real finders take it from here
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            _register()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Make sure lossdsl's Keras classes are registered whenever Keras is in use."""
    if "keras" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKeras())
