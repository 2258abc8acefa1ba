"""CurationConfig: defaults, parsing errors that name the key, language validation."""

from __future__ import annotations

import pytest

from m2l_ray.curation.config import CurationConfig
from m2l_ray.errors import ConfigError


def test_defaults_and_round_trip():
    cfg = CurationConfig.from_dict(None)
    assert cfg.lid.model == "lid176" and cfg.lid.resolved_family() == "lid176"
    assert cfg.dedup.threshold == 0.8 and cfg.dedup.verify == "exact"
    assert cfg.lid.model_path().endswith("lid.176.ftz")
    d = {"annotate_only": True, "lid": {"thresholds": {"sw": 0.3}, "roles": ["assistant"],
                                        "also_accept": {"ms": ["id"]}},
         "heuristics": {"min_chars": {"user": 5}, "overrides": {"zh": {"max_repeat_ratio": 0.7}}},
         "dedup": {"field": "first_user_turn", "num_perm": 64, "bands": 16, "rows": 4}}
    cfg = CurationConfig.from_dict(d, source="job.yaml")
    assert cfg.lid.roles == ("assistant",)
    again = CurationConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("d, key", [
    ({"bogus": 1}, "curation.bogus"),
    ({"lid": {"treshold": 0.5}}, "curation.lid.treshold"),
    ({"lid": {"threshold": 1.5}}, "curation.lid.threshold"),
    ({"lid": {"threshold": "high"}}, "curation.lid.threshold"),
    ({"lid": {"thresholds": {"sw": "low"}}}, "curation.lid.thresholds.sw"),
    ({"lid": {"unsupported_policy": "drop"}}, "curation.lid.unsupported_policy"),
    ({"lid": {"policies": {"ha": "maybe"}}}, "curation.lid.policies.ha"),
    ({"lid": {"model": "/no/such/model.bin"}}, "curation.lid.model"),
    ({"lid": {"roles": ["system"]}}, "curation.lid.roles[0]"),
    ({"heuristics": {"max_chars": {"bot": 5}}}, "curation.heuristics.max_chars.bot"),
    ({"heuristics": {"template_patterns": ["("]}}, "curation.heuristics.template_patterns[0]"),
    ({"heuristics": {"overrides": {"en": {"refusal_window": 3}}}},
     "curation.heuristics.overrides.en.refusal_window"),
    ({"dedup": {"threshold": 1.0}}, "curation.dedup.threshold"),
    ({"dedup": {"verify": "maybe"}}, "curation.dedup.verify"),
    ({"dedup": {"bands": 4}}, "curation.dedup.bands"),
    ({"dedup": {"num_perm": 16, "bands": 8, "rows": 4}}, "curation.dedup.bands"),
    ({"dedup": {"enabled": "yes"}}, "curation.dedup.enabled"),
    ({"dedup": "on"}, "curation.dedup"),
])
def test_bad_values_name_their_key(d, key):
    with pytest.raises(ConfigError) as e:
        CurationConfig.from_dict(d, source="job.yaml")
    assert e.value.key == key
    assert "job.yaml" in str(e.value)


def test_family_inferred_from_model_path(tmp_path):
    model = tmp_path / "glotlid-v3-model.bin"
    model.write_bytes(b"x")
    cfg = CurationConfig.from_dict({"lid": {"model": str(model)}})
    assert cfg.lid.resolved_family() == "glotlid"
    assert CurationConfig.from_dict(
        {"lid": {"model": str(model), "family": "lid176"}}).lid.resolved_family() == "lid176"


def test_language_the_model_cannot_identify_is_an_error_without_policy(registry):
    cfg = CurationConfig()
    with pytest.raises(ConfigError) as e:
        cfg.validate_languages(registry, ["en", "ha", "zu"])
    assert e.value.key == "curation.lid.unsupported_policy"
    assert "ha (Hausa)" in e.value.problem and "zu" in e.value.problem
    assert cfg.validate_languages(registry, ["en", "sw", "zh"]) == []


def test_policy_turns_the_error_into_a_warning(registry):
    cfg = CurationConfig.from_dict({"lid": {"unsupported_policy": "script_only",
                                            "policies": {"zu": "skip"}}})
    warnings = cfg.validate_languages(registry, ["en", "ha", "zu"])
    assert len(warnings) == 2
    assert any("ha (Hausa)" in w and "script_only" in w for w in warnings)
    assert any("zu" in w and "skip" in w for w in warnings)
    # GlotLID has a label for Hausa: no warning for it there
    glot = CurationConfig.from_dict({"lid": {"family": "glotlid"}})
    assert glot.validate_languages(registry, ["ha", "sw"]) == []


def test_unknown_codes_in_per_language_settings(registry):
    cfg = CurationConfig.from_dict({"lid": {"thresholds": {"xx-nope": 0.2}}})
    with pytest.raises(ConfigError) as e:
        cfg.validate_languages(registry, ["en"])
    assert e.value.key == "curation.lid.thresholds.xx-nope"
    with pytest.raises(ConfigError):
        CurationConfig().validate_languages(registry, ["not-a-language"])


def test_disabled_lid_needs_no_policy(registry):
    cfg = CurationConfig.from_dict({"lid": {"enabled": False}})
    assert cfg.validate_languages(registry, ["ha"]) == []
