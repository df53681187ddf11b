"""Search SRA settings on a dev split, confirm the best on a separate test split.

The dev and test splits are generated from different seeds (``seed`` and ``seed + TEST_SEED_OFFSET``),
so they share no pass key, UUID or biography. Candidates come from :data:`SEARCH_SPACE` (a grid, or
a seeded random sample of it). Every candidate is scored by its gain over stock attention per
(suite, length) cell, in accuracy points: the ranking puts the *worst* cell first (a setting must
not hurt anywhere), then the mean gain. Cost is the prefill-time ratio to stock attention measured
in the same run.
"""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sra_rag.evaluation import report, suites
from sra_rag.evaluation.runner import Record, Setting, parse_setting, parse_settings, run

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine

TEST_SEED_OFFSET = 1000

# Settings confirmed on the test split beside the dev finalists: the shipped presets, so the report
# says how the search's best compares with what a user gets by name.
REFERENCE: tuple[str, ...] = ("paper", "recommended")

# The searched dimensions. ``loops``: which SRA loops run; ``tail``: the question-aware tail or the
# config's fixed tail_length (spec: 200 tokens); ``beta``/``alpha``: strength and elimination
# factors, applied to every loop that runs; ``outer_target``: the spec's sliding block or the
# variant that follows the tail's attention; ``renormalize``: the spec's unnormalised rows or the
# variant that keeps edited rows a distribution; ``layers``: the outer loop in every layer the spec
# names, only in the upper half of the model or only in its top quarter (``outer_layers``).
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "loops": ("outer", "inner", "both"),
    "tail": ("question", "fixed"),
    "beta": (1.5, 2.0, 4.0),
    "alpha": (0.3, 0.5, 1.0),
    "outer_target": ("schedule", "attention"),
    "renormalize": (False, True),
    "layers": ((0.0, 1.0), (0.5, 1.0), (0.75, 1.0)),
}


def candidate_spec(
    loops: str,
    tail: str,
    beta: float,
    alpha: float,
    outer_target: str,
    renormalize: bool = False,
    layers: tuple[float, float] = (0.0, 1.0),
) -> str:
    """The setting string of one point of the search space (based on the ``paper`` preset)."""
    if loops not in {"outer", "inner", "both"}:
        raise ValueError(f"loops must be 'outer', 'inner' or 'both', got {loops!r}")
    parts = []
    if loops == "outer":
        parts.append("inner=false")
    if loops == "inner":
        parts.append("outer=false")
    if loops != "outer":
        parts += [f"beta_inner={beta:g}", f"alpha_inner={alpha:g}"]
    if loops != "inner":
        parts += [f"beta_outer={beta:g}", f"alpha_outer={alpha:g}", f"outer_target={outer_target}"]
        if tuple(layers) != (0.0, 1.0):
            parts.append(f"outer_layers={layers[0]:g}/{layers[1]:g}")
    if renormalize:
        parts.append("renormalize=true")
    parts.append(f"tail={tail}")
    return "paper:" + ",".join(parts)


def candidates(limit: int | None = None, seed: int = 0, space: dict[str, tuple[Any, ...]] | None = None) -> list[str]:
    """The distinct setting strings of the search space (dimensions that do not apply to a point,
    like the outer target of an inner-only setting, collapse); a seeded random sample of ``limit``
    of them when ``limit`` is given."""
    space = space or SEARCH_SPACE
    specs = list(dict.fromkeys(itertools.starmap(candidate_spec, itertools.product(*space.values()))))
    if limit is not None and limit < len(specs):
        specs = random.Random(seed).sample(specs, limit)
    return specs


@dataclass(frozen=True)
class Ranking:
    """A setting's gains over the baseline in accuracy points: ``mean_gain`` over (suite, length)
    cells, ``worst_gain`` the lowest cell; ``cost`` the median prefill-time ratio."""

    setting: str
    mean_gain: float
    worst_gain: float
    cost: float


def rank(records: Sequence[Record], baseline: str = "off") -> list[Ranking]:
    """Rank every non-baseline setting of ``records``: highest worst-cell gain first, then mean gain."""
    table = report.scores(records)
    cells = sorted({(suite, length) for suite, setting, length in table if setting == baseline})
    if not cells:
        raise ValueError(f"the records have no baseline setting {baseline!r} to compare with")
    ratios = report.prefill_ratios(records, baseline)
    rankings = []
    for setting in report.settings_of(records):
        if setting == baseline:
            continue
        gains = [
            100 * (table[(suite, setting, length)].accuracy - table[(suite, baseline, length)].accuracy)
            for suite, length in cells
            if (suite, setting, length) in table
        ]
        rankings.append(Ranking(setting, statistics.mean(gains), min(gains), ratios.get(setting, float("nan"))))
    return sorted(rankings, key=lambda r: (-r.worst_gain, -r.mean_gain, r.cost))


def ranking_table(rankings: Sequence[Ranking]) -> str:
    lines = ["| setting | mean gain (points) | worst cell (points) | prefill time vs no SRA |", "|---|---|---|---|"]
    lines += [f"| `{r.setting}` | {r.mean_gain:+.1f} | {r.worst_gain:+.1f} | {r.cost:.2f}x |" for r in rankings]
    return "\n".join(lines)


def plot_gain_cost(rankings: Sequence[Ranking], path: Path) -> Path:
    """Scatter of mean gain against prefill cost, one point per setting."""
    plt = report._pyplot()
    figure, axis = plt.subplots(figsize=(4.5, 3.2))
    axis.scatter([r.cost for r in rankings], [r.mean_gain for r in rankings], s=14)
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xlabel("prefill time / no SRA")
    axis.set_ylabel("mean gain (accuracy points)")
    axis.set_title("SRA settings on the dev split", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


@dataclass
class TuneResult:
    dev_records: list[Record]
    dev_ranking: list[Ranking]
    test_records: list[Record]
    test_ranking: list[Ranking]

    @property
    def best(self) -> Ranking:
        """The best setting on the test split (by the same rule as the dev ranking)."""
        return self.test_ranking[0]


def search(
    engine: SRAEngine,
    suite_names: Sequence[str],
    lengths: Sequence[int],
    specs: Sequence[str],
    *,
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    dev_per_cell: int = 1,
    test_per_cell: int = 2,
    top_k: int = 3,
    seed: int = 0,
    reference: Sequence[str] = REFERENCE,
    progress: bool = True,
    documents: Sequence[int] = suites.DEFAULT_DOCUMENTS,
) -> TuneResult:
    """Run every candidate of ``specs`` on the dev split, then the ``top_k`` best (plus the
    ``reference`` settings, by default the shipped presets) on the test split; both splits include
    stock attention (``off``). ``documents`` sizes the ``reader`` suite."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    candidates_ = parse_settings(specs)
    dev = _examples(engine, suite_names, lengths, depths, dev_per_cell, seed, documents)
    dev_records = run(engine, dev, candidates_, progress=progress)
    dev_ranking = rank(dev_records)
    finalists: list[Setting] = [parse_setting("off")]
    finalists += [parse_setting(r.setting) for r in dev_ranking[:top_k]]
    finalists += [parse_setting(spec) for spec in reference]
    finalists = list({s.name: s for s in finalists}.values())
    test = _examples(engine, suite_names, lengths, depths, test_per_cell, seed + TEST_SEED_OFFSET, documents)
    test_records = run(engine, test, finalists, progress=progress)
    return TuneResult(dev_records, dev_ranking, test_records, rank(test_records))


def _examples(
    engine: SRAEngine,
    suite_names: Sequence[str],
    lengths: Sequence[int],
    depths: Sequence[float],
    per_cell: int,
    seed: int,
    documents: Sequence[int] = suites.DEFAULT_DOCUMENTS,
) -> list[suites.Example]:
    examples = []
    for name in suite_names:
        examples += suites.build(name, engine.count_tokens, lengths, depths, per_cell, seed, documents)
    return examples


def write_tune_report(result: TuneResult, out_dir: Path) -> Path:
    """``tune.md`` with the dev ranking, the test ranking and table, the raw records as JSON and a
    gain-vs-cost plot. Returns the markdown file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.save_records(result.dev_records, out_dir / "tune_dev.json")
    report.save_records(result.test_records, out_dir / "tune_test.json")
    image = plot_gain_cost(result.dev_ranking, out_dir / "tune_gain_cost.png")
    text = "\n".join(
        [
            "# SRA settings search",
            "",
            "## Dev split (ranking: worst cell first, then mean gain over no SRA)",
            "",
            ranking_table(result.dev_ranking),
            "",
            f"![gain vs cost]({image.name})",
            "",
            "## Test split (held out)",
            "",
            ranking_table(result.test_ranking),
            "",
            report.markdown_table(result.test_records, baseline="off"),
            "",
            f"Best on test: `{result.best.setting}` (mean {result.best.mean_gain:+.1f} points, "
            f"worst cell {result.best.worst_gain:+.1f}, prefill {result.best.cost:.2f}x).",
        ]
    )
    path = out_dir / "tune.md"
    path.write_text(text + "\n")
    return path
