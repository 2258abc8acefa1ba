"""Script detection on real sentences: the per-turn check that runs before fastText LID."""

from __future__ import annotations

import time
import unicodedata

import pytest

from m2l_ray import scripts
from m2l_ray.errors import ConfigError
from m2l_ray.scripts import covers, dominant_script, known_scripts, script_ratio

# (expected script, what dominant_script says, sentence)
SENTENCES = [
    ("Latn", "Latn", "The museum is closed on Mondays, so let's go on Tuesday instead."),
    ("Latn", "Latn", "Hà Nội là thủ đô của Việt Nam và là một thành phố rất lâu đời."),
    ("Latn", "Latn", "Toshkent Oʻzbekistonning poytaxti va eng katta shahri hisoblanadi."),
    ("Latn", "Latn", "Ọmọ ilé-ìwé náà ń ka ìwé ní ilé-ìkàwé."),
    ("Cyrl", "Cyrl", "Москва — столица России и самый большой город страны."),
    ("Cyrl", "Cyrl", "Київ є столицею України з давньою історією."),
    ("Arab", "Arab", "القاهرة هي عاصمة مصر وأكبر مدنها من حيث عدد السكان."),
    ("Deva", "Deva", "भारत एक विशाल देश है और इसकी राजधानी नई दिल्ली है।"),
    ("Beng", "Beng", "বাংলাদেশের রাজধানী ঢাকা একটি বড় শহর।"),
    ("Hans", "Hani", "北京是中华人民共和国的首都，也是一座历史悠久的城市。"),
    ("Jpan", "Jpan", "東京は日本の首都で、とても大きな都市です。"),
    ("Kore", "Kore", "서울은 대한민국의 수도이며 매우 큰 도시입니다."),
    ("Thai", "Thai", "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย"),
    ("Ethi", "Ethi", "አዲስ አበባ የኢትዮጵያ ዋና ከተማ ናት።"),
    ("Grek", "Grek", "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας."),
    ("Taml", "Taml", "சென்னை தமிழ்நாட்டின் தலைநகரம் ஆகும்."),
    ("Khmr", "Khmr", "ភ្នំពេញគឺជារាជធានីនៃប្រទេសកម្ពុជា។"),
    ("Hebr", "Hebr", "ירושלים היא עיר עתיקה מאוד."),
    ("Geor", "Geor", "თბილისი საქართველოს დედაქალაქია."),
    ("Armn", "Armn", "Երևանը Հայաստանի մայրաքաղաքն է։"),
    ("Mymr", "Mymr", "ရန်ကုန်မြို့သည် မြန်မာနိုင်ငံ၏ အကြီးဆုံးမြို့ ဖြစ်သည်။"),
    ("Sinh", "Sinh", "කොළඹ ශ්‍රී ලංකාවේ විශාලතම නගරයයි."),
]


@pytest.mark.parametrize(("script", "dominant", "text"), SENTENCES)
def test_sentence_is_wholly_in_its_script(script: str, dominant: str, text: str) -> None:
    assert script_ratio(text, script) == 1.0
    assert dominant_script(text) == dominant
    assert covers(script, dominant)


@pytest.mark.parametrize(("script", "dominant", "text"), SENTENCES)
def test_sentence_fails_a_foreign_script(script: str, dominant: str, text: str) -> None:
    other = "Cyrl" if script == "Latn" else "Latn"
    assert script_ratio(text, other) == 0.0


def test_composites_follow_their_parts() -> None:
    zh = "北京是中华人民共和国的首都。"
    ja = "東京は日本の首都です。"
    ko = "서울은 대한민국의 수도입니다."
    # Han counts for every Han-based writing system...
    for s in ("Hans", "Hant", "Jpan", "Kore"):
        assert script_ratio(zh, s) == 1.0
    # ...but kana and Hangul do not belong to Chinese.
    assert script_ratio(ja, "Hans") == pytest.approx(6 / 10)  # 東京 日本 首都 vs は の で す
    assert script_ratio(ko, "Hans") == 0.0
    assert script_ratio(ko, "Jpan") == 0.0
    assert covers("Hans", "Hani") and covers("Kore", "Hang") and covers("Jpan", "Hira")
    assert not covers("Hans", "Hant") and not covers("Hani", "Jpan")
    assert not covers("Latn", "Cyrl")


def test_mixed_text_counts_foreign_letters_against_it() -> None:
    assert script_ratio("我喜欢Python编程", "Hans") == pytest.approx(5 / 11)
    assert script_ratio("我喜欢Python编程", "Latn") == pytest.approx(6 / 11)
    assert script_ratio("Hello, мир!", "Latn") == pytest.approx(5 / 8)
    # Romanised Hindi in a Hindi answer is what the check is for.
    mixed = "मेरा नाम राम है. Main Delhi mein rehta hoon."
    assert 0.2 < script_ratio(mixed, "Deva") < 0.5
    assert dominant_script(mixed) == "Latn"
    # A Chinese text quoting one kana word stays Chinese.
    assert dominant_script("我们今天学习了很多新的汉字和词语，其中有一个是「の」。") == "Hani"


def test_only_letters_count() -> None:
    assert script_ratio("Москва, 2024!!! 🎉 (test?)", "Cyrl") == pytest.approx(6 / 10)
    assert script_ratio("Москва, 2024!!! 🎉", "Cyrl") == 1.0
    assert script_ratio("12345 ... !!! 😀 ٣٤٥", "Arab") == 1.0  # no letters at all
    assert script_ratio("", "Latn") == 1.0
    assert dominant_script("12345 !!! 😀") is None
    assert dominant_script("") is None
    # Decomposed Vietnamese: combining marks are not letters and must not count against it.
    nfd = unicodedata.normalize("NFD", "Việt Nam có nhiều đảo đẹp.")
    assert script_ratio(nfd, "Latn") == 1.0


def test_unknown_script_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown script 'Latin'"):
        script_ratio("abc", "Latin")
    assert {"Latn", "Hans", "Hant", "Jpan", "Kore", "Ethi", "Tibt"} <= known_scripts()
    assert scripts.script_name("Deva") == "Devanagari"


def test_fast_enough_for_every_turn() -> None:
    text = ("Một đoạn văn bản dài. " * 40 + "这是一个很长的句子。" * 40 + "Длинный текст. " * 40)
    assert len(text) > 1500
    start = time.perf_counter()
    for _ in range(200):
        script_ratio(text, "Latn")
        dominant_script(text)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"400 checks of {len(text)} chars took {elapsed:.2f}s"


def test_bad_scripts_data_fails_loudly() -> None:
    good = {"Latn": {"ranges": [[0x41, 0x5A]]}, "Grek": {"ranges": [[0x370, 0x3FF]]}}
    assert scripts._build(good).tables["Latn"].starts == (0x41,)
    overlap = {**good, "Copt": {"ranges": [[0x3E2, 0x3EF]]}}
    with pytest.raises(ConfigError, match="overlaps Grek"):
        scripts._build(overlap)
    with pytest.raises(ConfigError, match="Zzzz"):
        scripts._build({**good, "Jpan": {"includes": ["Zzzz"]}})
    with pytest.raises(ConfigError, match=r"Latn.ranges\[0\]"):
        scripts._build({"Latn": {"ranges": [[0x5A, 0x41]]}})
