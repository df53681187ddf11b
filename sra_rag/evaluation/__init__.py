"""Offline, seeded long-context evaluation of SRA settings (``sra-rag eval``, ``sra-rag tune``).

Suites (:mod:`~sra_rag.evaluation.suites`) generate prompts with planted answers; the runner
(:mod:`~sra_rag.evaluation.runner`) runs stock attention and any number of SRA settings on the same
prompts; :mod:`~sra_rag.evaluation.report` turns the records into tables with Wilson intervals and
plots; :mod:`~sra_rag.evaluation.tune` searches settings on a dev split and checks them on a test split.
"""

from sra_rag.evaluation.report import Score, likelihood_table, markdown_table, scores, wilson_interval, write_report
from sra_rag.evaluation.runner import Record, Setting, parse_setting, parse_settings, run, run_one
from sra_rag.evaluation.suites import SUITES, Answer, Example, build
from sra_rag.evaluation.tune import SEARCH_SPACE, Ranking, TuneResult, candidates, rank, search, write_tune_report

__all__ = [
    "SEARCH_SPACE",
    "SUITES",
    "Answer",
    "Example",
    "Ranking",
    "Record",
    "Score",
    "Setting",
    "TuneResult",
    "build",
    "candidates",
    "likelihood_table",
    "markdown_table",
    "parse_setting",
    "parse_settings",
    "rank",
    "run",
    "run_one",
    "scores",
    "search",
    "wilson_interval",
    "write_report",
    "write_tune_report",
]
