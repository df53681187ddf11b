"""Choosing a model's defaults from paired dev answers: the safety bar, the lever bar, the fall-backs,
and the written file the library reads."""

from __future__ import annotations

import json

import pytest

from sra_rag.config import ModelDefaults
from sra_rag.evaluation.defaults import choose, defaults_for, main, verdicts
from sra_rag.evaluation.nq import GOLD_INDICES
from sra_rag.models import shipped_defaults


def records(setting: str, right: list[bool], seconds: float = 1.0) -> list[dict]:
    """One answer per prompt: prompt i is question i // 3 at gold position GOLD_INDICES[i % 3]."""
    return [
        {
            "id": f"{i // 3}@{GOLD_INDICES[i % 3]}",
            "gold_index": GOLD_INDICES[i % 3],
            "setting": setting,
            "model": "Qwen2.5-Coder-0.5B-Instruct",
            "correct": correct,
            "seconds": seconds,
        }
        for i, correct in enumerate(right)
    ]


STOCK = [False] * 30 + [True] * 30  # 60 prompts, 20 per gold position


def flipped(indices: range, to: bool = True) -> list[bool]:
    return [to if i in indices else value for i, value in enumerate(STOCK)]


def test_a_lever_that_gains_enough_significantly_and_cheaply_becomes_the_default() -> None:
    lever = records("documents", flipped(range(0, 12)), seconds=1.2)  # +12 / -0: +20 points, p < 0.001
    found = verdicts(records("off", STOCK) + records("recommended", STOCK) + lever)
    assert choose(found)[0] == "documents"
    slow = records("documents", flipped(range(0, 12)), seconds=1.5)  # over 1.3x the time
    assert choose(verdicts(records("off", STOCK) + records("recommended", STOCK) + slow))[0] == "recommended"


def test_a_setting_that_loses_anywhere_is_not_safe() -> None:
    # Gains 12 at gold positions 1 and 5 but loses 2 of 20 at position 10: -10 points there.
    mixed = [True if i < 18 and i % 3 != 2 else value for i, value in enumerate(STOCK)]  # +12 at 1 and 5
    mixed = [False if i in (32, 35) else value for i, value in enumerate(mixed)]  # 32 and 35: gold at 10
    found = verdicts(records("off", STOCK) + records("paper", mixed))
    assert not found[0].safe and found[0].points["gold at 10"] < -2
    preset, why = choose(found)
    assert preset == "off" and "not safe" in why  # recommended was not run: stock attention
    lost_one = [False if i == 59 else value for i, value in enumerate(STOCK)]  # -1 of 20 at one position: -5
    assert choose(verdicts(records("off", STOCK) + records("recommended", lost_one)))[0] == "off"
    with pytest.raises(ValueError, match="'off'"):
        verdicts(records("recommended", STOCK))


def test_an_ordering_lever_ships_as_the_preset_and_the_order() -> None:
    runs = records("off", STOCK) + records("recommended", STOCK) + records("recommended+first", flipped(range(20)))
    assert choose(verdicts(runs))[0] == "recommended+first"
    chosen = defaults_for(runs, "dev")
    assert (chosen.preset, chosen.order) == ("recommended", "first") and "a lever that met the bar" in chosen.measured
    plain = defaults_for(records("off", STOCK) + records("recommended", STOCK), "dev")
    assert (plain.preset, plain.order) == ("recommended", None)


def test_the_written_defaults_are_what_the_library_reads(tmp_path) -> None:
    runs = tmp_path / "dev.jsonl"
    lines = records("off", STOCK) + records("recommended", flipped(range(1)))
    runs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "qwen.json"
    main([str(runs), "--model", "qwen2.5-coder-0.5b", "--out", str(out)])
    written = ModelDefaults.model_validate_json(out.read_text())
    assert written.preset == "recommended" and "no lever met the bar" in written.measured
    assert defaults_for(lines, "x").loop_guard == 16 and written.repetition_penalty == 1.0
    shipped = shipped_defaults("qwen2.5-coder-0.5b")  # the file in sra_rag/data/defaults
    assert shipped.preset == "recommended" and shipped.order is None and "NQ-Open dev" in shipped.measured


def test_rewriting_the_defaults_keeps_the_separately_measured_weight_format(tmp_path) -> None:
    runs = tmp_path / "dev.jsonl"
    runs.write_text("".join(json.dumps(line) + "\n" for line in records("off", STOCK) + records("recommended", STOCK)))
    out = tmp_path / "qwen.json"
    out.write_text(ModelDefaults(preset="paper", weights="int8", measured="old").model_dump_json())
    main([str(runs), "--model", "qwen2.5-coder-0.5b", "--out", str(out)])
    written = ModelDefaults.model_validate_json(out.read_text())
    assert (written.preset, written.weights) == ("recommended", "int8") and written.measured != "old"
