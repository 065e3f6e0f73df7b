"""One lazy-export mechanism (:mod:`layerswap.lazy`) behind every package's public names."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from layerswap.lazy import lazy_exports

PACKAGES = ("layerswap", "layerswap.sweep", "layerswap.evaluate", "layerswap.finetune", "layerswap.merge", "layerswap.pipeline")


def test_packages_import_light_and_resolve_each_name_on_first_use():
    code = (
        "import sys, importlib\n"
        f"for name in {PACKAGES!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", "importing the packages must not import torch or pandas"
    import importlib

    for name in PACKAGES:
        package = importlib.import_module(name)
        for attr in package.__all__:
            assert getattr(package, attr) is not None, f"{name}.{attr}"
            assert attr in dir(package)
        with pytest.raises(AttributeError, match="has no attribute 'nope'"):
            package.nope  # noqa: B018


def test_analysis_loads_importance_and_the_lenses_when_asked():
    """In a fresh process (``layerswap.analysis.importance`` is also a module: once something imports
    that module by its dotted name first, the package attribute is the module, as for any package)."""
    code = (
        "import layerswap, layerswap.analysis as a\n"
        "assert callable(a.importance) and callable(a.run_lenses) and callable(a.lens_recommendations)\n"
        "assert layerswap.importance is a.importance and {'importance', 'run_lenses', 'analyze'} <= set(a.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_callable_packages_call_their_function():
    import layerswap

    assert all(callable(getattr(layerswap, name)) for name in ("finetune", "merge", "evaluate"))
    assert layerswap.finetune is sys.modules["layerswap.finetune"]  # the package itself, callable


def test_lazy_exports_on_a_module_of_ours(monkeypatch):
    module = types.ModuleType("toy_lazy")
    monkeypatch.setitem(sys.modules, "toy_lazy", module)
    names = lazy_exports("toy_lazy", {"dumps": "json", "sqrt": "math", "json": "json:"}, call="sqrt")
    assert names == ["dumps", "json", "sqrt"] and "dumps" not in vars(module)
    assert module.json is sys.modules["json"]  # a home ending in ':' is the module itself
    assert module(16.0) == 4.0 and module.dumps([1]) == "[1]" and "dumps" in vars(module)  # cached after first use
