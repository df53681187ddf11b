"""Choose a model's defaults from its dev-split answers and write them where the library finds them.

``python -m sra_rag.evaluation.defaults --model qwen2.5-coder-0.5b docs/eval/nq-open/qwen-dev.jsonl``
reads runs files of :mod:`~sra_rag.evaluation.nq_run` (answers of several settings on the same
prompts, paired against stock attention, ``off``) and writes
``sra_rag/data/defaults/<model>.json`` (:class:`~sra_rag.config.ModelDefaults`, read by
:func:`sra_rag.models.shipped_defaults`), with the evidence in its ``measured`` field.

The rule (:func:`choose`), the issue's targets restated:

1. **Safe**: a preset is eligible only if, on every gold position and pooled, it is at most
   :data:`MAX_LOSS_POINTS` points below stock.
2. **A lever becomes the default** only if it gains at least :data:`MIN_GAIN_POINTS` points pooled,
   with an exact sign test under :data:`MAX_P`, at most :data:`MAX_TIME_RATIO` times stock's median
   seconds per answer (paired on the same prompts).
3. Otherwise the **safe default**: ``recommended`` when it is eligible (the preset every other suite
   found safe), else stock attention (``off``).

A setting with attention-ordered stuffing (``recommended+first``) is a candidate like a plain preset
and ships as the preset and :attr:`~sra_rag.config.ModelDefaults.order`; its paired seconds include
the readout pass. Decoding stays the answers' policy (greedy, the loop guard, no repetition penalty).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sra_rag.config import SAFE_DEFAULTS, ModelDefaults
from sra_rag.evaluation.documents import sign_test
from sra_rag.evaluation.nq import GOLD_INDICES
from sra_rag.evaluation.nq_report import BASELINE, complete_records
from sra_rag.evaluation.nq_run import read_records
from sra_rag.models import DEFAULTS_FOLDER, PACKAGED_MODELS, profile_key

MAX_LOSS_POINTS = 2.0
MIN_GAIN_POINTS = 5.0
MAX_P = 0.05
MAX_TIME_RATIO = 1.3
SAFE_PRESET = "recommended"


@dataclass(frozen=True)
class Verdict:
    """One setting against stock on the same prompts: points per gold position and pooled, answers
    gained and lost, the sign test, and the median paired time ratio."""

    setting: str
    prompts: int
    points: dict[str, float]
    gained: int
    lost: int
    p: float
    time_ratio: float

    @property
    def safe(self) -> bool:
        return min(self.points.values()) >= -MAX_LOSS_POINTS

    @property
    def lever(self) -> bool:
        return (
            self.safe and self.points["all"] >= MIN_GAIN_POINTS and self.p < MAX_P and self.time_ratio <= MAX_TIME_RATIO
        )

    def describe(self) -> str:
        worst = min(self.points.values())
        return (
            f"{self.setting} {self.points['all']:+.1f} points pooled (+{self.gained}/-{self.lost}, p={self.p:.3f}, "
            f"worst position {worst:+.1f}, {self.time_ratio:.2f}x time)"
        )


def verdicts(records: Iterable[dict[str, Any]]) -> list[Verdict]:
    """Every non-stock setting of ``records`` against ``off`` on the prompts all settings answered."""
    settings, rows = complete_records(records)
    if BASELINE not in rows:
        raise ValueError(f"the records have no {BASELINE!r} answers to pair against; run that setting too")
    stock = rows[BASELINE]
    result = []
    for setting in settings:
        if setting == BASELINE:
            continue
        chosen = rows[setting]
        points: dict[str, float] = {}
        for index in GOLD_INDICES:
            keys = [key for key, record in chosen.items() if record["gold_index"] == index]
            points[f"gold at {index + 1}"] = _points(chosen, stock, keys)
        points["all"] = _points(chosen, stock, list(chosen))
        gained = sum(record["correct"] and not stock[key]["correct"] for key, record in chosen.items())
        lost = sum(not record["correct"] and stock[key]["correct"] for key, record in chosen.items())
        ratios = [record["seconds"] / stock[key]["seconds"] for key, record in chosen.items() if stock[key]["seconds"]]
        ratio = float(np.median(ratios)) if ratios else float("nan")
        result.append(Verdict(setting, len(chosen), points, gained, lost, sign_test(gained, lost), ratio))
    return result


def choose(found: Sequence[Verdict]) -> tuple[str, str]:
    """The setting to ship (``preset`` or ``preset+placement``) and why (see the module docstring)."""
    levers = sorted((verdict for verdict in found if verdict.lever), key=lambda verdict: -verdict.points["all"])
    if levers:
        return levers[0].setting, f"{levers[0].describe()}: a lever that met the bar"
    safe = next((verdict for verdict in found if verdict.setting == SAFE_PRESET and verdict.safe), None)
    if safe is not None:
        return SAFE_PRESET, f"no lever met the bar; {safe.describe()}: safe"
    return BASELINE, f"no lever met the bar and {SAFE_PRESET} was not safe here: stock attention"


def defaults_for(records: Iterable[dict[str, Any]], source: str) -> ModelDefaults:
    """The :class:`ModelDefaults` the rule picks from ``records`` (read from ``source``)."""
    found = verdicts(records)
    setting, why = choose(found)
    preset, _, placement = setting.partition("+")
    evidence = "; ".join(verdict.describe() for verdict in found)
    measured = f"{source}, {found[0].prompts if found else 0} prompts: {why}. All: {evidence}"
    return ModelDefaults.model_validate(
        {**SAFE_DEFAULTS.model_dump(), "preset": preset, "order": placement or None, "measured": measured}
    )


def _points(chosen: dict[str, dict[str, Any]], stock: dict[str, dict[str, Any]], keys: list[str]) -> float:
    if not keys:
        return 0.0
    difference = sum(chosen[key]["correct"] for key in keys) - sum(stock[key]["correct"] for key in keys)
    return 100.0 * difference / len(keys)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path, help="runs files of sra_rag.evaluation.nq_run (dev split)")
    parser.add_argument("--model", required=True, help="the PyPI model key the defaults are for")
    parser.add_argument("--out", type=Path, default=None, help="default: sra_rag/data/defaults/<model>.json")
    args = parser.parse_args(argv)
    key = profile_key(args.model)
    if key is None:
        parser.error(f"{args.model!r} is not a PyPI model key; write --out yourself for other models")
    names = (key, PACKAGED_MODELS[key].name)  # records name the engine; the key is accepted too
    records = [record for path in args.records for record in read_records(path) if record.get("model") in names]
    chosen = defaults_for(records, "NQ-Open dev, " + ", ".join(str(path) for path in args.records))
    target = args.out or Path(str(resources.files("sra_rag").joinpath(f"{DEFAULTS_FOLDER}/{key}.json")))
    if target.exists():  # the weight format is measured apart (docs/bench/cpu-weights.md): keep it
        kept = ModelDefaults.model_validate_json(target.read_text()).weights
        chosen = chosen.model_copy(update={"weights": kept})
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(chosen.model_dump_json(indent=1) + "\n")
    print(f"Wrote {target}: preset {chosen.preset}, order {chosen.order or 'retrieved'}.\n{chosen.measured}")


if __name__ == "__main__":
    main()
