from __future__ import annotations

import pytest

from carbontop.config import RunConfig, from_mapping, load_toml, parse_batch_sizes, validate
from carbontop.errors import ConfigError


def test_batch_sizes() -> None:
    assert parse_batch_sizes("auto") is None
    assert parse_batch_sizes("8, 1,2,2") == [1, 2, 8]
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_batch_sizes("1,x")
    with pytest.raises(ConfigError, match="at least|1 or more"):
        parse_batch_sizes("0,2")


def test_flags_override_toml(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('model = "gpt2"\nnum_prompts = 50\nbatch_sizes = [1, 4]\npue = 1.1\n')
    cfg = load_toml(path)
    assert (cfg.model, cfg.num_prompts, cfg.batch_sizes, cfg.pue) == ("gpt2", 50, [1, 4], 1.1)
    cfg = from_mapping({"num_prompts": "7", "batch_sizes": "auto"}, cfg)
    assert cfg.num_prompts == 7 and cfg.batch_plan() is None and cfg.model == "gpt2"


def test_run_toml_section_is_read(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[run]\nmodel = "tiny"\nseed = 3\n[environment]\nhost = "x"\n')
    assert load_toml(path).seed == 3


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"engine": "vllm"}, "engine"),
        ({"pue": 0.9}, "pue"),
        ({"num_prompts": 0}, "num_prompts"),
        ({"engine": "openai"}, "url"),
        ({"url": "localhost:8000"}, "url"),
        ({"max_input_len": 2}, "max_input_len"),
        ({"kv_cache_fraction": 1.5}, "kv_cache_fraction"),
        ({"intensity": -1.0}, "intensity"),
    ],
)
def test_validation_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(RunConfig(**changes))
    assert info.value.field == field
    assert str(info.value).endswith(".")


def test_bad_toml_and_unknown_keys(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="Unknown setting 'colour'"):
        from_mapping({"colour": "red"})
    with pytest.raises(ConfigError, match="whole number"):
        from_mapping({"num_prompts": "many"})


def test_secrets_never_in_dict() -> None:
    assert "emaps_token" not in RunConfig(emaps_token="s3cret").to_dict()


def test_pue_presets_by_name() -> None:
    assert from_mapping({"pue": "hyperscale"}).pue == 1.10
    assert from_mapping({"pue": "industry"}).pue == 1.58
    assert from_mapping({"pue": "1.2"}).pue == 1.2
    with pytest.raises(ConfigError, match="preset|one of"):
        from_mapping({"pue": "green"})
