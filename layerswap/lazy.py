"""Names of a package that load on first use: the one mechanism behind every lazy ``__init__``.

``import layerswap.cli`` must not pay for torch or pandas (the help lists the registries at
start-up), so a package's ``__init__`` names what it exports and where each lives, and
:func:`lazy_exports` resolves a name the first time it is read (PEP 562's module ``__getattr__``).
With ``call=``, the package is also callable as that function: ``layerswap.finetune(cfg)``,
``layerswap.merge(config, out)``, ``layerswap.evaluate(model, tasks, langs)``.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any


class _CallableModule(types.ModuleType):
    """A package that calls one of its names when called itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__dict__["__lazy_call__"])(*args, **kwargs)


def lazy_exports(module_name: str, homes: Mapping[str, str], *, call: str | None = None) -> list[str]:
    """Make each name of ``homes`` (name -> module that defines it) an attribute of ``module_name``
    loaded on first use, and return the names (the module's ``__all__``).

    A home ending in ``:`` stands for the module itself (the root's ``"finetune": "layerswap.finetune:"``
    is the package). ``call`` names the function the module runs when called.
    """
    module = sys.modules[module_name]
    table = dict(homes)

    def __getattr__(name: str) -> Any:
        home = table.get(name)
        if home is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        loaded = importlib.import_module(home.rstrip(":"))
        value = loaded if home.endswith(":") else getattr(loaded, name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(table))

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__dir__ = __dir__  # type: ignore[method-assign]
    if call is not None:
        module.__lazy_call__ = call  # type: ignore[attr-defined]
        module.__class__ = _CallableModule
    return sorted(table)
