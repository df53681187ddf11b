"""The ``sra-rag`` command line (``python -m sra_rag.cli``): every command and the options they share.
Library modules never import this package; it composes :mod:`sra_rag.rag`, :mod:`sra_rag.evaluation`
and :mod:`sra_rag.server` by plain imports."""

from sra_rag.cli.app import build_app, main

__all__ = ["build_app", "main"]
