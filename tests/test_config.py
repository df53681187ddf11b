import math

import pytest
from pydantic import ValidationError

from sra_rag import SRAConfig


def test_defaults_match_the_spec_table():
    config = SRAConfig()
    assert config.model_dump() == {
        "enabled": True,
        "begin_length": 100,
        "tail_length": 200,
        "dynamic_tail": False,
        "tail_divisor": 20,
        "alpha_inner": 0.5,
        "alpha_outer": 0.3,
        "beta_inner": 4.0,
        "beta_outer": 4.0,
        "inner": True,
        "outer": True,
        "outer_target": "schedule",
        "renormalize": False,
        "outer_layers": (0.0, 1.0),
        "tail": "fixed",
        "document_boost": 1.0,
        "document_top_k": 1,
    }


def test_frozen_and_unknown_fields_rejected():
    config = SRAConfig()
    with pytest.raises(ValidationError):
        config.beta_inner = 2.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="beta"):
        SRAConfig(beta=3.0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("begin_length", -1),
        ("tail_length", -5),
        ("alpha_inner", 0.0),
        ("alpha_outer", -0.1),
        ("beta_inner", -1.0),
        ("beta_outer", -0.5),
        ("tail_divisor", 0),
        ("outer_target", "nearest"),
        ("tail", "middle"),
        ("beta_outer", float("inf")),
        ("alpha_inner", float("nan")),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        SRAConfig(**{field: value})
    assert field in str(info.value)


def test_dynamic_tail():
    assert SRAConfig(dynamic_tail=True, tail_divisor=20).tail_for(1000) == 50
    assert SRAConfig(dynamic_tail=False, tail_length=7).tail_for(1000) == 7


def test_question_tail_starts_at_the_question_and_falls_back_without_one():
    question = SRAConfig(tail="question", tail_length=7)
    assert question.tail_for(1000, question_start=900) == 100
    assert question.tail_for(1000) == 7  # a raw prompt has no question: the fixed tail
    assert SRAConfig(tail_length=7).tail_for(1000, question_start=900) == 7  # the spec ignores the question
    assert SRAConfig.preset("recommended").tail == "question" and SRAConfig().tail == "fixed"


def test_one_type_check_for_configs():
    from sra_rag.config import as_sra_config

    config = SRAConfig()
    assert as_sra_config(config) is config
    with pytest.raises(TypeError, match="sra must be an SRAConfig, got dict"):
        as_sra_config({"beta_outer": 2.0})


def test_presets():
    assert SRAConfig.preset("paper") == SRAConfig()
    assert SRAConfig.preset("off").enabled is False
    demo = SRAConfig.preset("demo")
    assert (demo.begin_length, demo.tail_length, demo.alpha_outer, demo.beta_inner) == (5, 50, 0.5, 5.0)
    assert isinstance(SRAConfig.preset("recommended"), SRAConfig)
    assert "recommended" in SRAConfig.preset_names()
    with pytest.raises(ValueError, match="unknown SRA preset 'best'"):
        SRAConfig.preset("best")


def test_model_copy_derives_a_variant():
    config = SRAConfig().model_copy(update={"tail_length": 12})
    assert config.tail_length == 12 and SRAConfig().tail_length == 200


NUMERIC_FIELDS = [name for name, field in SRAConfig.model_fields.items() if field.annotation in (int, float)]


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_numeric_field_rejects_nan_and_infinity(field, value):
    # beta_outer=inf used to be accepted and gave NaN logits (an empty answer).
    with pytest.raises(ValidationError) as info:
        SRAConfig(**{field: value})
    assert field in str(info.value)


@pytest.mark.parametrize("band", [(0.0, math.inf), (math.nan, 1.0), (0.5, math.nan)])
def test_outer_layer_band_rejects_nan_and_infinity(band):
    with pytest.raises(ValidationError, match="outer_layers"):
        SRAConfig(outer_layers=band)
