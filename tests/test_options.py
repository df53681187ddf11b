"""The adapters' shared settings mixin: fields mirror SRAConfig over the model's default, per-call
settings merge over them."""

import pytest
from pydantic import ValidationError

from sra_rag import SRAConfig, SRAEngine, SRAOptions
from sra_rag.models import shipped_defaults
from sra_rag.options import SRA_FIELDS

DEFAULT = shipped_defaults("smollm2-135m").sra  # the embedded model's default, as the engine reads it


def test_every_sra_setting_is_mirrored_and_unset_means_the_models_default() -> None:
    assert set(SRA_FIELDS) <= set(SRAOptions.model_fields)
    for name, field in SRAConfig.model_fields.items():
        mirrored = SRAOptions.model_fields[name]
        assert mirrored.default is None and mirrored.description.startswith(field.description), name
    assert SRAOptions().sra_config == DEFAULT != SRAConfig()  # the engine's default, not the spec's
    assert SRAOptions(model="qwen2.5-coder-0.5b").sra_config == shipped_defaults("qwen2.5-coder-0.5b").sra


def test_construction_from_a_config_or_fields_and_validation() -> None:
    recommended = SRAConfig.preset("recommended")
    assert SRAOptions(sra=recommended).sra_config == recommended
    assert SRAOptions(beta_outer=2.0, inner=False).sra_config == DEFAULT.override(beta_outer=2.0, inner=False)
    with pytest.raises(TypeError, match="not both"):
        SRAOptions(sra=recommended, beta_outer=3.0)
    with pytest.raises(TypeError, match="SRAConfig"):
        SRAOptions(sra={"beta_outer": 2.0})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SRAEngine"):
        SRAOptions(engine="smollm2-135m")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="alpha_outer"):
        SRAOptions(alpha_outer=0.0)
    for name, value in [("temperature", float("nan")), ("temperature", float("inf")), ("top_k", -1), ("min_p", 2.0)]:
        with pytest.raises(ValidationError, match=name):
            SRAOptions(**{name: value})


def test_call_settings_merge_over_the_objects() -> None:
    options = SRAOptions(max_new_tokens=32, stop=["\n\n"], beta_outer=2.0, seed=3)
    settings = options.call_settings({"inner": False, "max_tokens": 8, "tail_from": "Question:"})
    assert settings == {
        "max_new_tokens": 8,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "penalize_prompt": True,
        "loop_guard": 0,
        "seed": 3,
        "stop": ["\n\n"],
        "tail_from": "Question:",
        "sra": DEFAULT.override(beta_outer=2.0, inner=False),
    }
    # A whole config replaces the object's SRA settings; single fields still go over it.
    replaced = options.call_settings({"sra": SRAConfig.preset("off"), "stop": ["."]})
    assert replaced["sra"] == SRAConfig.preset("off") and replaced["stop"] == ["."]
    assert options.call_settings({"sra": SRAConfig(), "beta_outer": 3.0})["sra"] == SRAConfig(beta_outer=3.0)


def test_bad_call_settings_say_what_is_accepted() -> None:
    options = SRAOptions()
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['num_beams'\].*tail_from"):
        options.call_settings({"num_beams": 4})
    with pytest.raises(TypeError, match="not both"):
        options.call_settings({"max_tokens": 4, "max_new_tokens": 8})
    with pytest.raises(ValidationError, match="beta_outer"):
        options.call_settings({"beta_outer": -1.0})


def test_engine_is_loaded_lazily_or_given(embedded_engine: SRAEngine) -> None:
    options = SRAOptions()
    assert options._engine is None
    assert options.engine is embedded_engine
    assert SRAOptions(engine=embedded_engine, model="elsewhere").engine is embedded_engine
