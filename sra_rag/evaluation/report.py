"""Accuracy with Wilson intervals, markdown tables, JSON and PNG plots of evaluation records.

Accuracy is the share of scored answers found (one per example, except ``summary``: one per planted
fact, so its intervals treat facts as independent, which makes them somewhat too narrow). The
``reader`` suite's size is a number of retrieved documents, shown as ``10 docs``; its replies are
also checked for a citation of the gold source (:func:`citation_table`).
Plots use matplotlib's Agg backend (``pip install 'sra-rag[eval]'``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sra_rag.evaluation.runner import Record
from sra_rag.evaluation.suites import SIZED_BY_DOCUMENTS

Z_95 = 1.959963984540054
POSITION_BINS = 5  # answer depths are grouped into this many equal bins for the per-position views


@dataclass(frozen=True)
class Score:
    """``hits`` of ``total`` answers; ``accuracy`` and the Wilson interval ``[low, high]`` in [0, 1]."""

    hits: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.hits / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.hits, self.total)

    def cell(self) -> str:
        """``"45 [30-61]"``: accuracy and 95% interval in percent."""
        low, high = self.interval
        return f"{100 * self.accuracy:.0f} [{100 * low:.0f}-{100 * high:.0f}]"


def wilson_interval(hits: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95%); ``(0, 1)`` when ``total`` is 0."""
    if hits < 0 or total < 0 or hits > total:
        raise ValueError(f"need 0 <= hits <= total, got hits={hits}, total={total}")
    if total == 0:
        return 0.0, 1.0
    p = hits / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def position_bin(position: float, bins: int = POSITION_BINS) -> float:
    """The centre of the depth bin that ``position`` (in [0, 1]) falls in."""
    index = min(bins - 1, int(position * bins))
    return (index + 0.5) / bins


def settings_of(records: Iterable[Record]) -> list[str]:
    return list(dict.fromkeys(record.setting for record in records))


def scores(records: Iterable[Record], *, by_position: bool = False) -> dict[tuple[Any, ...], Score]:
    """``(suite, setting, length)`` -> :class:`Score`; with ``by_position`` the key gains the
    depth bin of each answer: ``(suite, setting, length, bin)``."""
    counts: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        for hit, position in zip(record.hits, record.positions, strict=True):
            key: tuple[Any, ...] = (record.suite, record.setting, record.length)
            if by_position:
                key = (*key, position_bin(position))
            counts[key][0] += int(hit)
            counts[key][1] += 1
    return {key: Score(hits, total) for key, (hits, total) in counts.items()}


def prefill_ratios(records: Sequence[Record], baseline: str) -> dict[str, float]:
    """Median, over examples, of each setting's prefill time divided by the baseline's on the same example."""
    times = {(record.example_id, record.setting): record.prefill_s for record in records}
    ratios: dict[str, list[float]] = defaultdict(list)
    for (example_id, setting), seconds in times.items():
        base = times.get((example_id, baseline))
        if base:
            ratios[setting].append(seconds / base)
    return {setting: statistics.median(values) for setting, values in ratios.items()}


def size_label(suite: str, length: int) -> str:
    """How a suite's size reads in tables: tokens, or retrieved documents (``"10 docs"``)."""
    return f"{length} docs" if suite in SIZED_BY_DOCUMENTS else str(length)


def markdown_table(records: Sequence[Record], baseline: str | None = None) -> str:
    """One row per (suite, length), one column per setting: ``accuracy [95% CI]`` in percent and,
    for non-baseline settings, the difference to the baseline in points."""
    settings = settings_of(records)
    baseline = baseline if baseline is not None else settings[0]
    table = scores(records)
    prompt_sizes: dict[tuple[str, int], list[int]] = defaultdict(list)
    for record in records:
        prompt_sizes[(record.suite, record.length)].append(record.prompt_tokens)
    lines = [
        "| suite | length (prompt tokens) | n | " + " | ".join(f"`{s}`" for s in settings) + " |",
        "|---|---|---|" + "---|" * len(settings),
    ]
    for suite, length in sorted(prompt_sizes, key=lambda key: (key[0], key[1])):
        base = table.get((suite, baseline, length))
        cells = []
        for setting in settings:
            score = table.get((suite, setting, length))
            if score is None:
                cells.append("-")
                continue
            text = score.cell()
            if setting != baseline and base is not None:
                text += f" ({100 * (score.accuracy - base.accuracy):+.0f})"
            cells.append(text)
        total = (
            base.total
            if base is not None
            else max(s.total for (su, _, n), s in table.items() if (su, n) == (suite, length))
        )
        mean_tokens = round(statistics.mean(prompt_sizes[(suite, length)]))
        lines.append(f"| {suite} | {size_label(suite, length)} ({mean_tokens}) | {total} | " + " | ".join(cells) + " |")
    ratios = prefill_ratios(records, baseline)
    lines.append("")
    lines.append(
        "Prefill time relative to `"
        + baseline
        + "` (median over prompts): "
        + ", ".join(f"`{s}` {ratios[s]:.2f}x" for s in settings if s in ratios)
    )
    return "\n".join(lines)


def save_records(records: Sequence[Record], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([record.to_dict() for record in records], indent=1))


def load_records(path: Path) -> list[Record]:
    """Records from :func:`save_records` (a JSON list) or from a JSON-lines file."""
    text = Path(path).read_text()
    rows = (
        json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line]
    )
    return [Record(**row) for row in rows]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("Plots need matplotlib: pip install 'sra-rag[eval]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmaps(records: Sequence[Record], out_dir: Path) -> list[Path]:
    """One PNG per suite: a length x depth accuracy heatmap per setting. Returns the files written."""
    plt = _pyplot()
    table = scores(records, by_position=True)
    settings = settings_of(records)
    written = []
    for suite in dict.fromkeys(record.suite for record in records):
        lengths = sorted({key[2] for key in table if key[0] == suite})
        bins = sorted({key[3] for key in table if key[0] == suite})
        figure, axes = plt.subplots(
            1, len(settings), figsize=(2.2 * len(settings) + 0.8, 0.5 * len(lengths) + 1.6), squeeze=False
        )
        image = None
        for axis, setting in zip(axes[0], settings, strict=True):
            grid = [
                [
                    table[(suite, setting, n, b)].accuracy if (suite, setting, n, b) in table else float("nan")
                    for b in bins
                ]
                for n in lengths
            ]
            image = axis.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            axis.set_title(_short(setting), fontsize=7)
            axis.set_xticks(range(len(bins)), [f"{b:.0%}" for b in bins], fontsize=6)
            axis.set_yticks(range(len(lengths)), [str(n) for n in lengths] if axis is axes[0][0] else [], fontsize=6)
            axis.set_xlabel("depth", fontsize=7)
        axes[0][0].set_ylabel("documents" if suite in SIZED_BY_DOCUMENTS else "length (tokens)", fontsize=7)
        size = "documents" if suite in SIZED_BY_DOCUMENTS else "length"
        figure.suptitle(f"{suite}: accuracy by {size} and depth", fontsize=9)
        figure.subplots_adjust(top=0.78, bottom=0.22, left=0.1, right=0.86, wspace=0.15)
        if image is not None:
            figure.colorbar(image, cax=figure.add_axes((0.89, 0.22, 0.015, 0.56)), label="accuracy")
        path = Path(out_dir) / f"heatmap_{suite}.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    return written


def plot_positions(records: Sequence[Record], out_dir: Path) -> list[Path]:
    """One PNG per suite: accuracy against the gold item's depth, a line per setting, a panel per length."""
    plt = _pyplot()
    table = scores(records, by_position=True)
    settings = settings_of(records)
    written = []
    for suite in dict.fromkeys(record.suite for record in records):
        lengths = sorted({key[2] for key in table if key[0] == suite})
        figure, axes = plt.subplots(1, len(lengths), figsize=(3.2 * len(lengths), 2.8), squeeze=False, sharey=True)
        for axis, length in zip(axes[0], lengths, strict=True):
            for setting in settings:
                points = sorted((key[3], score) for key, score in table.items() if key[:3] == (suite, setting, length))
                if not points:
                    continue
                xs = [x for x, _ in points]
                axis.plot(xs, [s.accuracy for _, s in points], marker="o", label=_short(setting))
                axis.fill_between(
                    xs, [s.interval[0] for _, s in points], [s.interval[1] for _, s in points], alpha=0.12
                )
            unit = "documents" if suite in SIZED_BY_DOCUMENTS else "tokens"
            axis.set_title(f"{length} {unit}", fontsize=8)
            axis.set_xlabel("gold depth", fontsize=7)
            axis.set_ylim(-0.02, 1.02)
        axes[0][0].set_ylabel("accuracy", fontsize=7)
        axes[0][-1].legend(fontsize=6)
        figure.suptitle(f"{suite}: accuracy by position (95% Wilson bands)", fontsize=9)
        figure.tight_layout()
        path = Path(out_dir) / f"positions_{suite}.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    return written


def _short(setting: str, width: int = 40) -> str:
    return setting if len(setting) <= width else setting[: width - 1] + "…"


def _pairs(
    records: Sequence[Record], baseline: str, measured: Callable[[Record], bool]
) -> dict[tuple[str, int, str], list[tuple[Record, Record]]]:
    """``(suite, length, setting)`` -> per prompt: (the setting's record, the baseline's record on
    the same prompt); prompts where either record is not ``measured`` are left out."""
    by_prompt = {(record.example_id, record.setting): record for record in records}
    cells: dict[tuple[str, int, str], list[tuple[Record, Record]]] = defaultdict(list)
    for record in records:
        base = by_prompt.get((record.example_id, baseline))
        if record.setting != baseline and base is not None and measured(record) and measured(base):
            cells[(record.suite, record.length, record.setting)].append((record, base))
    return cells


def _mean_interval(deltas: Sequence[float]) -> str:
    """``"+0.50 [-0.10, +1.10]"``: mean and 95% normal interval."""
    mean = statistics.fmean(deltas)
    half = Z_95 * statistics.stdev(deltas) / math.sqrt(len(deltas)) if len(deltas) > 1 else float("inf")
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def _paired_table(
    records: Sequence[Record],
    baseline: str | None,
    heading: str,
    cell: Callable[[list[tuple[Record, Record]]], str],
    measured: Callable[[Record], bool] = lambda record: True,
) -> str:
    settings = settings_of(records)
    baseline = baseline if baseline is not None else settings[0]
    cells = _pairs(records, baseline, measured)
    if not cells:
        return ""
    others = [s for s in settings if s != baseline]
    lines = [
        heading.format(baseline=baseline),
        "",
        "| suite | length | " + " | ".join(f"`{s}`" for s in others) + " |",
        "|---|---|" + "---|" * len(others),
    ]
    for suite, length in sorted({(suite, length) for suite, length, _ in cells}):
        row = [cell(cells[(suite, length, s)]) if (suite, length, s) in cells else "-" for s in others]
        lines.append(f"| {suite} | {size_label(suite, length)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_table(records: Sequence[Record], baseline: str | None = None) -> str:
    """Paired comparison against the baseline on the same prompts, per (suite, length) and setting,
    answer by answer (one per prompt; one per planted fact for summaries): the change in points,
    how many answers the setting gained (missed by the baseline, found by the setting) and lost,
    the 95% Wilson upper bound of the share of answers lost, and how many replies differ from the
    baseline's at all. The bound is the instrument for "no worse than the baseline by more than k
    points": the net loss is at most the share of answers lost."""

    def cell(pairs: list[tuple[Record, Record]]) -> str:
        gained = lost = total = 0
        for record, base in pairs:
            for mine, theirs in zip(record.hits, base.hits, strict=True):
                gained += mine and not theirs
                lost += theirs and not mine
                total += 1
        bound = 100 * wilson_interval(lost, total)[1]
        changed = sum(record.output != base.output for record, base in pairs)
        change = 100 * (gained - lost) / total
        return f"{change:+.0f}: +{gained} -{lost} of {total} (lost <= {bound:.0f}%); {changed} differ"

    return _paired_table(
        records,
        baseline,
        "Paired against `{baseline}`, answer by answer: change in points: answers gained and lost of n "
        "(95% upper bound of the share lost); replies that differ at all:",
        cell,
    )


def likelihood_table(records: Sequence[Record], baseline: str | None = None) -> str:
    """Paired change of the first answer's log-probability against the baseline, per (suite,
    length) and setting: mean in nats with a 95% normal interval over prompts, and how many prompts
    moved towards the answer. Empty when no record carries ``answer_logprob``."""

    def cell(pairs: list[tuple[Record, Record]]) -> str:
        # Only pairs with both log-probabilities measured reach here (``measured`` below).
        deltas = [cast(float, record.answer_logprob) - cast(float, base.answer_logprob) for record, base in pairs]
        return f"{_mean_interval(deltas)} {sum(delta > 0 for delta in deltas)}/{len(deltas)}"

    return _paired_table(
        records,
        baseline,
        "Change of the answer's log-probability against `{baseline}` (nats, mean [95% CI], prompts improved):",
        cell,
        measured=lambda record: record.answer_logprob is not None,
    )


def citation_table(records: Sequence[Record]) -> str:
    """Share of replies that cite the gold source's number, per (suite, size) and setting, in
    percent with a 95% Wilson interval: all replies, and the replies that answered right. Empty
    when no record carries ``cited``."""
    checked = [record for record in records if record.cited is not None]
    if not checked:
        return ""
    settings = settings_of(checked)
    counts: dict[tuple[str, int, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for record in checked:
        count = counts[(record.suite, record.length, record.setting)]
        count[0] += int(bool(record.cited))
        count[1] += 1
        if all(record.hits):
            count[2] += int(bool(record.cited))
            count[3] += 1
    lines = [
        "Replies citing the gold source's number: all replies; replies that answered right (percent [95% CI], n):",
        "",
        "| suite | size | " + " | ".join(f"`{s}` all | `{s}` right" for s in settings) + " |",
        "|---|---|" + "---|---|" * len(settings),
    ]
    for suite, length in sorted({(suite, length) for suite, length, _ in counts}):
        cells = []
        for setting in settings:
            cited, total, cited_right, right = counts.get((suite, length, setting), [0, 0, 0, 0])
            cells += [
                f"{Score(cited, total).cell()} n={total}" if total else "-",
                f"{Score(cited_right, right).cell()} n={right}" if right else "-",
            ]
        lines.append(f"| {suite} | {size_label(suite, length)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    records: Sequence[Record], out_dir: Path, *, plots: bool = True, title: str = "SRA evaluation"
) -> Path:
    """Write ``results.json`` (raw records), ``report.md`` (table) and, with ``plots``, the PNGs
    into ``out_dir``. Returns the markdown file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_records(records, out_dir / "results.json")
    parts = [f"# {title}", "", markdown_table(records)]
    for table in (citation_table(records), paired_table(records), likelihood_table(records)):
        if table:
            parts += ["", table]
    if plots:
        images = plot_heatmaps(records, out_dir) + plot_positions(records, out_dir)
        parts += ["", *(f"![{image.stem}]({image.name})" for image in images)]
    path = out_dir / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
