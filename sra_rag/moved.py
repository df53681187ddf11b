"""Import paths of the modules that moved when the package took its present layout
(``docs/architecture.md``). ``import sra_rag.tools`` and the like keep working: the old name is a
module holding the new one's names, and importing it warns (``DeprecationWarning``) with the new path."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "sra_rag.benchmark": "sra_rag.bench.engine",
    "sra_rag.calibration": "sra_rag.readout.calibration",
    "sra_rag.chat": "sra_rag.generation.chat",
    "sra_rag.embeddings": "sra_rag.rag.embeddings",
    "sra_rag.eval": "sra_rag.evaluation",
    "sra_rag.evaluation.commands": "sra_rag.cli.evaluation",
    "sra_rag.inspector": "sra_rag.evaluation.inspector",
    "sra_rag.rag.benchmark": "sra_rag.bench.ingest",
    "sra_rag.rag.commands": "sra_rag.cli.rag",
    "sra_rag.request": "sra_rag.generation.request",
    "sra_rag.sampling": "sra_rag.generation.sampling",
    "sra_rag.scheduler": "sra_rag.generation.scheduler",
    "sra_rag.server.benchmark": "sra_rag.bench.server",
    "sra_rag.server.commands": "sra_rag.cli.serve",
    "sra_rag.streaming": "sra_rag.generation.streaming",
    "sra_rag.structured": "sra_rag.generation.structured",
    "sra_rag.structured_benchmark": "sra_rag.bench.structured",
    "sra_rag.tools": "sra_rag.generation.tools",
}
"""Old module name -> where it lives now."""


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old names of :data:`MOVED` (and only those, after every other finder failed)."""

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def exec_module(self, module: ModuleType) -> None:
        new_name = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new_name}; import it from there.", DeprecationWarning, stacklevel=2)
        new = importlib.import_module(new_name)
        module.__dict__.update({name: value for name, value in vars(new).items() if not name.startswith("__")})
        if hasattr(new, "__all__"):
            module.__dict__["__all__"] = list(new.__all__)
        module.__doc__ = f"Moved: see :mod:`{new_name}`."


def install() -> None:
    """Put the finder at the end of ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
