"""``import sra_rag.eval``: the public API of :mod:`sra_rag.evaluation` under the name the issue uses."""

from sra_rag.evaluation import *  # noqa: F403
from sra_rag.evaluation import __all__  # noqa: F401
