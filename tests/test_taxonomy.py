"""Tests for the Evol taxonomy data files and their loader (m2l_ray.taxonomy)."""

from __future__ import annotations

import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from m2l_ray.errors import ConfigError
from m2l_ray.languages import LanguageRegistry
from m2l_ray.prompts import instruction_problem, next_user_messages, prompt_book
from m2l_ray.taxonomy import DEFAULT_DIRECTORY, ORIGINS, Evol, Taxonomy, template_placeholders

FILES = ("tasks.yaml", "general_evols.yaml", "multiturn_evols.yaml")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

TASK_IDS = {
    "question_answering", "summarization", "translation", "natural_language_inference",
    "paraphrase", "sentiment_analysis", "text_classification", "commonsense_reasoning",
    "story_completion", "math_word_problems", "dialogue", "creative_writing",
    "named_entity_recognition", "grammar_correction", "text_simplification",
    "reading_comprehension", "title_generation", "keyword_extraction", "question_generation",
}
GENERAL_NAMES = {
    "ADD_CONSTRAINTS", "DEEPENING", "CONCRETIZING", "INCREASE_REASONING_STEPS",
    "COMPLICATE_INPUT", "BREADTH",
}
MULTITURN_NAMES = {
    "RECALL_INFORMATION", "FOLLOW_UP", "CLARIFICATION", "REFINEMENT", "EXPANSION",
    "SIMPLIFICATION", "COUNTERFACTUAL", "CHANGE_OF_PERSPECTIVE", "SUMMARIZE_CONVERSATION",
    "FORMAT_CHANGE", "ERROR_CORRECTION", "COMPARISON", "EXAMPLE_REQUEST", "JUSTIFICATION",
    "STEP_BY_STEP", "CRITIQUE", "ROLE_PLAY", "SENSITIVITY_CHECK", "CONSTRAINT_ADDITION",
    "APPLICATION", "CONTRADICTION_CHECK",
}
# The multi-turn evol types seen in the paper's released data (ServiceNow-AI/M2Lingual).
M2LINGUAL_MULTITURN = {
    "REFOCUS_QUERIES", "RECALL_INFORMATION", "FEEDBACK_HANDLING_FOLLOW_UP",
    "PERSONA_REWRITING_FOLLOW_UP", "CLARIFICATION", "GENERIC_REWRITING_FOLLOW_UP",
    "OPEN_ENDED_QUESTIONS", "AMBIGUOUS_FOLLOW_UP", "COMPLEX_QUERIES", "REDIRECTION_FOLLOW_UP",
    "CHALLENGING_FOLLOW_UP", "RANDOM_FOLLOW_UP", "PRONOUNS",
}
NEW_MULTITURN = M2LINGUAL_MULTITURN - {"RECALL_INFORMATION", "CLARIFICATION"}
STEP1_VALUES = {"language": "Yoruba", "task": "Summarization", "seed": "Ṣe akopọ {ọrọ} yii."}
MT_VALUES = {
    "language": "Hindi",
    "history": "User: नमस्ते\nAssistant: नमस्ते! मैं कैसे मदद करूँ?",
    "last_user": "नमस्ते",
    "last_assistant": "नमस्ते! मैं कैसे मदद करूँ?",
}


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return Taxonomy.load()


def all_evols(t: Taxonomy) -> list[Evol]:
    task_evols = [e for task in t.tasks.values() if not task.uses_general for e in task.evols]
    return task_evols + list(t.general_evols) + list(t.multiturn_evols)


def write_taxonomy(tmp_path: Path, mutate: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Copy the default taxonomy to tmp_path (re-dumped as YAML), after ``mutate`` edits it."""
    data = {f: yaml.load((DEFAULT_DIRECTORY / f).read_text("utf-8"), _LOADER) for f in FILES}
    if mutate is not None:
        mutate(data)
    out = tmp_path / "taxonomy"
    out.mkdir()
    for name, content in data.items():
        text = yaml.dump(content, Dumper=_DUMPER, allow_unicode=True, sort_keys=False, width=1000)
        (out / name).write_text(text, "utf-8")
    return out


# -- the shipped data -----------------------------------------------------------------------


def test_tasks_are_exactly_the_19_plus_open_ended(tax: Taxonomy) -> None:
    assert set(tax.tasks) == TASK_IDS | {"open_ended"}
    for task_id in TASK_IDS:
        task = tax.task(task_id)
        assert len(task.evols) >= 9, task_id
        assert not task.uses_general
        assert all(e.kind == "task" for e in task.evols)
        assert task.display_name.strip() and task.description.strip()


def test_open_ended_uses_the_general_evols(tax: Taxonomy) -> None:
    open_ended = tax.task("open_ended")
    assert open_ended.uses_general
    assert open_ended.evols == tax.general_evols
    assert tax.evols_for("open_ended") == tax.general_evols
    assert all(e.kind == "general" for e in tax.general_evols)


def test_general_and_multiturn_counts_and_names(tax: Taxonomy) -> None:
    assert len(tax.general_evols) >= 9
    assert GENERAL_NAMES <= {e.name for e in tax.general_evols}
    assert len(tax.multiturn_evols) >= 21
    assert MULTITURN_NAMES <= {e.name for e in tax.multiturn_evols}
    assert all(e.kind == "multiturn" for e in tax.multiturn_evols)


def test_every_template_follows_the_output_contract(tax: Taxonomy) -> None:
    for evol in all_evols(tax):
        where = f"{evol.kind}:{evol.name}"
        assert "{language}" in evol.prompt, where
        assert re.search(r"\bin \{language\}", evol.prompt), where  # tells the model to write in it
        assert "ONLY" in evol.prompt and "no preface" in evol.prompt, where
        assert "self-contained" in evol.prompt or "from this conversation alone" in evol.prompt
        assert len(evol.prompt) <= 900, where
        assert evol.description.strip().endswith("."), where
        if evol.kind == "multiturn":
            assert "{history}" in evol.prompt, where
        else:
            assert "{seed}" in evol.prompt, where


def test_names_are_upper_snake_and_unique_per_list(tax: Taxonomy) -> None:
    lists = [t.evols for t in tax.tasks.values()] + [tax.general_evols, tax.multiturn_evols]
    for evols in lists:
        names = [e.name for e in evols]
        assert len(names) == len(set(names))
        assert all(re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", n) for n in names)


# -- rendering ------------------------------------------------------------------------------


def test_render_task_evol_inserts_values_verbatim(tax: Taxonomy) -> None:
    evol = tax.evols_for("summarization")[0]
    text = evol.render(**STEP1_VALUES)
    assert STEP1_VALUES["seed"] in text  # braces inside a seed survive untouched
    assert "in Yoruba" in text and "Task type: Summarization" in text
    assert "{language}" not in text and "{seed}" not in text


def test_render_reference_defaults_to_empty(tax: Taxonomy) -> None:
    evol = tax.task("math_word_problems").evol("ADD_STEPS")
    assert "reference" in evol.placeholders
    without = evol.render(**STEP1_VALUES)
    with_ref = evol.render(**STEP1_VALUES, reference="42 apples")
    assert "42 apples" in with_ref and "42 apples" not in without
    assert "{reference}" not in without


def test_render_missing_value_names_it(tax: Taxonomy) -> None:
    evol = tax.evols_for("translation")[0]
    with pytest.raises(KeyError, match="seed"):
        evol.render(language="French", task="Translation")


def test_render_rejects_placeholders_of_the_other_step(tax: Taxonomy) -> None:
    with pytest.raises(TypeError, match="history"):
        tax.evols_for("dialogue")[0].render(**STEP1_VALUES, history="User: hi")
    with pytest.raises(TypeError, match="seed"):
        tax.multiturn("FOLLOW_UP").render(**MT_VALUES, seed="x")


def test_render_multiturn_evol(tax: Taxonomy) -> None:
    text = tax.multiturn("RECALL_INFORMATION").render(**MT_VALUES)
    assert MT_VALUES["history"] in text and "in Hindi" in text
    with pytest.raises(KeyError, match="history"):
        tax.multiturn("RECALL_INFORMATION").render(language="Hindi")


def test_every_default_template_renders(tax: Taxonomy) -> None:
    for evol in all_evols(tax):
        values = MT_VALUES if evol.kind == "multiturn" else STEP1_VALUES
        out = evol.render(**values)
        assert "{" not in out.replace(STEP1_VALUES["seed"], ""), evol.name


def test_doubled_braces_are_literal() -> None:
    assert template_placeholders("JSON like {{\"a\": 1}} for {seed}") == {"seed"}
    evol = Evol("X", "d.", "Use {{braces}} in {language}: {seed}", "general")
    assert evol.render(language="Igbo", task="t", seed="s") == "Use {braces} in Igbo: s"


# -- lookups --------------------------------------------------------------------------------


def test_unknown_task_suggests_close_match(tax: Taxonomy) -> None:
    with pytest.raises(KeyError, match="summarization"):
        tax.task("summarisation")
    with pytest.raises(KeyError, match="RECALL_INFORMATION"):
        tax.multiturn("RECALL")
    with pytest.raises(KeyError, match="LENGTH_LIMIT"):
        tax.task("summarization").evol("LENGTH_LIMT")


def test_taxonomy_pickles_for_ray(tax: Taxonomy) -> None:
    copy = pickle.loads(pickle.dumps(tax))
    assert copy == tax and copy.fingerprint() == tax.fingerprint()
    assert copy.multiturn("CRITIQUE") == tax.multiturn("CRITIQUE")


# -- validation on load ---------------------------------------------------------------------


def _set_prompt(file: str, task: str | None, index: int, prompt: str):
    def mutate(data: dict[str, Any]) -> None:
        evols = data[file]["tasks"][task]["evols"] if task else data[file]["evols"]
        evols[index]["prompt"] = prompt
    return mutate


def test_unknown_placeholder_is_a_config_error_with_its_location(tmp_path: Path) -> None:
    bad = "Rewrite {seed} in {language} for {audience}."
    directory = write_taxonomy(tmp_path, _set_prompt("tasks.yaml", "summarization", 1, bad))
    with pytest.raises(ConfigError) as info:
        Taxonomy.load(directory)
    err = info.value
    name = yaml.safe_load((DEFAULT_DIRECTORY / "tasks.yaml").read_text("utf-8"))
    evol_name = name["tasks"]["summarization"]["evols"][1]["name"]
    assert err.key == f"taxonomy.tasks.summarization.{evol_name}.prompt"
    assert "{audience}" in err.problem
    assert err.source == str(directory / "tasks.yaml")


@pytest.mark.parametrize(
    ("file", "task", "prompt", "problem"),
    [
        ("tasks.yaml", "translation", "Use a { json } object for {seed} in {language}", "plain"),
        ("tasks.yaml", "translation", "Stray } brace {seed} {language}", "brace"),
        ("tasks.yaml", "translation", "Pad {seed:>20} in {language}", "format spec"),
        ("tasks.yaml", "translation", "Attr {seed.upper} in {language}", "plain name"),
        ("tasks.yaml", "translation", "Positional {} {seed} in {language}", "plain name"),
        ("tasks.yaml", "translation", "No seed here, in {language}", "{seed}"),
        ("general_evols.yaml", None, "{history} {seed} in {language}", "{history}"),
        ("multiturn_evols.yaml", None, "{history} in {language} about {seed}", "{seed}"),
        ("multiturn_evols.yaml", None, "Next user turn in {language}", "{history}"),
    ],
)
def test_bad_templates_are_rejected(
    tmp_path: Path, file: str, task: str | None, prompt: str, problem: str
) -> None:
    directory = write_taxonomy(tmp_path, _set_prompt(file, task, 0, prompt))
    with pytest.raises(ConfigError) as info:
        Taxonomy.load(directory)
    assert info.value.key.startswith(f"taxonomy.{Path(file).stem}.")
    assert info.value.key.endswith(".prompt")
    assert problem in info.value.problem
    assert info.value.source == str(directory / file)


def _edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return fn


@pytest.mark.parametrize(
    ("mutate", "key_part", "problem"),
    [
        (_edit(lambda d: d["tasks.yaml"]["tasks"]["paraphrase"]["evols"][0].update(
            name="style_shift")), "taxonomy.tasks.paraphrase", "UPPER_SNAKE_CASE"),
        (_edit(lambda d: d["tasks.yaml"]["tasks"]["paraphrase"]["evols"][1].update(
            name=d["tasks.yaml"]["tasks"]["paraphrase"]["evols"][0]["name"])),
         "taxonomy.tasks.paraphrase.", "duplicate"),
        (_edit(lambda d: d["multiturn_evols.yaml"]["evols"][2].pop("description")),
         "taxonomy.multiturn_evols", "missing field(s) description"),
        (_edit(lambda d: d["general_evols.yaml"]["evols"][0].update(promt="typo")),
         "taxonomy.general_evols", "unknown field(s) promt"),
        (_edit(lambda d: d["tasks.yaml"]["tasks"]["dialogue"].update(evols=[])),
         "taxonomy.tasks.dialogue", "non-empty list"),
        (_edit(lambda d: d["tasks.yaml"]["tasks"]["open_ended"].update(evols="generall")),
         "taxonomy.tasks.open_ended.evols", "generall"),
        (_edit(lambda d: d["tasks.yaml"]["tasks"].update(
            {"Bad Task": d["tasks.yaml"]["tasks"]["dialogue"]})),
         "taxonomy.tasks.Bad Task", "snake_case"),
        (_edit(lambda d: d["tasks.yaml"]["tasks"]["dialogue"].update(display_name="  ")),
         "taxonomy.tasks.dialogue.display_name", "non-empty"),
        (_edit(lambda d: d["multiturn_evols.yaml"].update(extra=1)),
         "taxonomy.multiturn_evols", "single key 'evols'"),
    ],
)
def test_structural_errors_are_rejected(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], key_part: str, problem: str
) -> None:
    directory = write_taxonomy(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        Taxonomy.load(directory)
    assert info.value.key.startswith(key_part), info.value.key
    assert problem in info.value.problem


def test_duplicate_yaml_key_is_rejected(tmp_path: Path) -> None:
    directory = write_taxonomy(tmp_path)
    path = directory / "tasks.yaml"
    text = path.read_text("utf-8")
    dialogue = text[text.index("  dialogue:\n"): text.index("  creative_writing:\n")]
    path.write_text(text + dialogue, "utf-8")  # the same task id twice
    with pytest.raises(ConfigError, match="duplicate key 'dialogue'"):
        Taxonomy.load(directory)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    directory = write_taxonomy(tmp_path)
    (directory / "multiturn_evols.yaml").unlink()
    with pytest.raises(ConfigError) as info:
        Taxonomy.load(directory)
    assert info.value.key == "taxonomy.multiturn_evols" and "not found" in info.value.problem
    with pytest.raises(ConfigError, match="directory not found"):
        Taxonomy.load(tmp_path / "nope")


# -- restrict -------------------------------------------------------------------------------


def test_restrict_subsets(tax: Taxonomy) -> None:
    sub = tax.restrict(
        tasks=["summarization", "open_ended"],
        task_evols=["LENGTH_LIMIT", "AUDIENCE", "DEEPENING"],
        multiturn_evols=["RECALL_INFORMATION", "FOLLOW_UP"],
    )
    assert list(sub.tasks) == ["summarization", "open_ended"]
    assert [e.name for e in sub.evols_for("summarization")] == ["LENGTH_LIMIT", "AUDIENCE"]
    assert [e.name for e in sub.evols_for("open_ended")] == ["DEEPENING"]
    assert [e.name for e in sub.general_evols] == ["DEEPENING"]
    assert [e.name for e in sub.multiturn_evols] == ["RECALL_INFORMATION", "FOLLOW_UP"]
    assert sub.fingerprint() != tax.fingerprint()
    with pytest.raises(KeyError):
        sub.task("translation")
    # the original is untouched
    assert len(tax.evols_for("summarization")) >= 9 and len(tax.multiturn_evols) >= 21


def test_restrict_none_keeps_everything(tax: Taxonomy) -> None:
    assert tax.restrict() == tax
    assert tax.restrict(tasks=["translation"]).evols_for("translation") == tax.evols_for(
        "translation"
    )


def test_restrict_unknown_names_raise_value_error(tax: Taxonomy) -> None:
    with pytest.raises(ValueError, match="summarisation.*summarization"):
        tax.restrict(tasks=["summarisation"])
    with pytest.raises(ValueError, match="NO_SUCH_EVOL"):
        tax.restrict(tasks=["translation"], task_evols=["NO_SUCH_EVOL"])
    with pytest.raises(ValueError, match="LENGTH_LIMIT"):  # not an evol of translation
        tax.restrict(tasks=["translation"], task_evols=["LENGTH_LIMIT"])
    with pytest.raises(ValueError, match="RECALL"):
        tax.restrict(multiturn_evols=["RECALL"])
    with pytest.raises(ValueError, match="empty"):
        tax.restrict(tasks=[])
    with pytest.raises(TypeError):
        tax.restrict(tasks="translation")  # type: ignore[arg-type]


def test_restrict_that_empties_a_task_is_refused(tax: Taxonomy) -> None:
    with pytest.raises(ValueError, match="translation"):
        tax.restrict(tasks=["summarization", "translation"], task_evols=["LENGTH_LIMIT"])


# -- fingerprint ----------------------------------------------------------------------------


def test_fingerprint_is_stable(tax: Taxonomy, tmp_path: Path) -> None:
    fp = tax.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert Taxonomy.load().fingerprint() == fp
    assert Taxonomy.load(DEFAULT_DIRECTORY).fingerprint() == fp
    copied = tmp_path / "copied"
    shutil.copytree(DEFAULT_DIRECTORY, copied)
    assert Taxonomy.load(copied).fingerprint() == fp
    # comments, quoting and layout do not count; content does
    assert Taxonomy.load(write_taxonomy(tmp_path)).fingerprint() == fp


def test_fingerprint_changes_on_edit(tax: Taxonomy, tmp_path: Path) -> None:
    def edit_description(data: dict[str, Any]) -> None:
        data["multiturn_evols.yaml"]["evols"][0]["description"] += " Edited."

    def edit_prompt(data: dict[str, Any]) -> None:
        data["tasks.yaml"]["tasks"]["translation"]["evols"][0]["prompt"] += "\n"

    def swap_order(data: dict[str, Any]) -> None:
        evols = data["general_evols.yaml"]["evols"]
        evols[0], evols[1] = evols[1], evols[0]

    fingerprints = {tax.fingerprint()}
    for i, mutate in enumerate((edit_description, edit_prompt, swap_order)):
        sub = tmp_path / str(i)
        sub.mkdir()
        fingerprints.add(Taxonomy.load(write_taxonomy(sub, mutate)).fingerprint())
    assert len(fingerprints) == 4


# -- origin ---------------------------------------------------------------------------------


def _raw_entries(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(file, raw entry) for every evol in the raw YAML data, task evols included."""
    entries = [("general_evols.yaml", e) for e in data["general_evols.yaml"]["evols"]]
    entries += [("multiturn_evols.yaml", e) for e in data["multiturn_evols.yaml"]["evols"]]
    for task in data["tasks.yaml"]["tasks"].values():
        if isinstance(task["evols"], list):
            entries += [("tasks.yaml", e) for e in task["evols"]]
    return entries


def test_released_multiturn_types_are_present_with_origin_m2lingual(tax: Taxonomy) -> None:
    assert len(M2LINGUAL_MULTITURN) == 13
    for name in sorted(M2LINGUAL_MULTITURN):
        assert tax.multiturn(name).origin == "m2lingual", name
    marked = {e.name for e in tax.multiturn_evols if e.origin == "m2lingual"}
    assert marked == M2LINGUAL_MULTITURN  # and nothing else claims to be the paper's


def test_every_entry_has_a_valid_origin(tax: Taxonomy) -> None:
    # in the files themselves (the Evol dataclass default must not hide a missing field) ...
    data = {f: yaml.load((DEFAULT_DIRECTORY / f).read_text("utf-8"), _LOADER) for f in FILES}
    entries = _raw_entries(data)
    assert len(entries) == len(all_evols(tax))
    for file, raw in entries:
        assert raw.get("origin") in ORIGINS, (file, raw["name"])
    # ... and on the loaded objects, where only released multi-turn types are m2lingual
    for evol in all_evols(tax):
        expected = (
            "m2lingual"
            if evol.kind == "multiturn" and evol.name in M2LINGUAL_MULTITURN
            else "m2l-ray"
        )
        assert evol.origin == expected, (evol.kind, evol.name)
        assert evol.as_dict()["origin"] == expected


def test_every_file_explains_origin_in_its_header() -> None:
    for file in FILES:
        header = (DEFAULT_DIRECTORY / file).read_text("utf-8").split("\n\n", 1)[0]
        assert header.startswith("#"), file
        assert "origin" in header and "m2lingual" in header and "m2l-ray" in header, file


def _set_origin(file: str, task: str | None, index: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        evols = data[file]["tasks"][task]["evols"] if task else data[file]["evols"]
        if value is None:
            del evols[index]["origin"]
        else:
            evols[index]["origin"] = value
    return mutate


def _entry_name(file: str, task: str | None, index: int) -> str:
    data = yaml.load((DEFAULT_DIRECTORY / file).read_text("utf-8"), _LOADER)
    evols = data["tasks"][task]["evols"] if task else data["evols"]
    return str(evols[index]["name"])


@pytest.mark.parametrize(
    ("file", "task", "index"),
    [
        ("multiturn_evols.yaml", None, 3),
        ("general_evols.yaml", None, 0),
        ("tasks.yaml", "summarization", 2),
    ],
)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "missing field origin; must be m2lingual or m2l-ray"),
        ("M2Lingual", "'M2Lingual' is not one of m2lingual or m2l-ray"),
        ("paper", "'paper' is not one of m2lingual or m2l-ray"),
        ("", "'' is not one of m2lingual or m2l-ray"),
        (["m2lingual"], "['m2lingual'] is not one of m2lingual or m2l-ray"),
    ],
)
def test_missing_or_invalid_origin_is_a_config_error_naming_file_entry_and_field(
    tmp_path: Path, file: str, task: str | None, index: int, value: Any, problem: str
) -> None:
    directory = write_taxonomy(tmp_path, _set_origin(file, task, index, value))
    with pytest.raises(ConfigError) as info:
        Taxonomy.load(directory)
    err = info.value
    entry = _entry_name(file, task, index)
    where = f"taxonomy.{Path(file).stem}." + (f"{task}." if task else "")
    assert err.key == f"{where}{entry}.origin"
    assert err.source == str(directory / file)
    assert problem in err.problem


def test_evol_rejects_an_unknown_origin() -> None:
    assert Evol("X", "d.", "{history} in {language}", "multiturn").origin == "m2l-ray"
    with pytest.raises(ValueError, match="origin"):
        Evol("X", "d.", "{history} in {language}", "multiturn", origin="paper")


def test_restrict_to_m2lingual_leaves_exactly_the_released_multiturn_types(tax: Taxonomy) -> None:
    sub = tax.restrict(origin="m2lingual")
    assert {e.name for e in sub.multiturn_evols} == M2LINGUAL_MULTITURN
    assert len(sub.multiturn_evols) == 13
    assert all(e.origin == "m2lingual" for e in sub.multiturn_evols)
    # file order is kept
    order = [e.name for e in tax.multiturn_evols if e.name in M2LINGUAL_MULTITURN]
    assert [e.name for e in sub.multiturn_evols] == order
    # step-1 evols are untouched: none of them is m2lingual, the filter is for multi-turn only
    assert sub.tasks == tax.tasks
    assert sub.general_evols == tax.general_evols
    assert sub.fingerprint() != tax.fingerprint()
    with pytest.raises(KeyError, match="FOLLOW_UP"):
        sub.multiturn("FOLLOW_UP")


def test_restrict_to_project_origin_is_the_complement(tax: Taxonomy) -> None:
    ours = {e.name for e in tax.restrict(origin="m2l-ray").multiturn_evols}
    assert ours and not ours & M2LINGUAL_MULTITURN
    assert ours | M2LINGUAL_MULTITURN == {e.name for e in tax.multiturn_evols}


def test_restrict_origin_combines_with_the_other_filters(tax: Taxonomy) -> None:
    sub = tax.restrict(
        ["summarization"], ["LENGTH_LIMIT"], ["PRONOUNS", "CLARIFICATION"], origin="m2lingual"
    )
    assert list(sub.tasks) == ["summarization"]
    assert [e.name for e in sub.evols_for("summarization")] == ["LENGTH_LIMIT"]
    assert [e.name for e in sub.multiturn_evols] == ["CLARIFICATION", "PRONOUNS"]
    # a multi-turn evol of the other origin is refused, not silently dropped
    with pytest.raises(ValueError, match="FOLLOW_UP"):
        tax.restrict(multiturn_evols=["PRONOUNS", "FOLLOW_UP"], origin="m2lingual")


def test_restrict_bad_origin_raises_value_error(tax: Taxonomy) -> None:
    with pytest.raises(ValueError, match="m2lingual"):
        tax.restrict(origin="M2LINGUAL")
    with pytest.raises(ValueError, match="no multi-turn evol has origin 'm2lingual'"):
        tax.restrict(multiturn_evols=["FOLLOW_UP"]).restrict(origin="m2lingual")
    assert tax.restrict(origin=None) == tax


def test_new_multiturn_prompts_follow_the_house_style(tax: Taxonomy) -> None:
    reference = tax.multiturn("RECALL_INFORMATION").prompt
    opening = reference.split("{history}")[0]
    rules = reference[reference.index("Rules:"):]
    bodies = set()
    for name in sorted(NEW_MULTITURN):
        evol = tax.multiturn(name)
        assert evol.prompt.startswith(opening + "{history}\n\n"), name
        assert evol.prompt.endswith("\n\n" + rules), name  # the exact closing Rules paragraph
        assert evol.placeholders == {"history", "language"}, name
        assert "\n" not in evol.description and evol.description.endswith("."), name
        body = evol.prompt[len(opening + "{history}\n\n"): -len(rules)].strip()
        assert body.startswith("Write the user's next message"), name
        bodies.add(body)
    assert len(bodies) == len(NEW_MULTITURN)  # each type has its own instruction
    assert len({tax.multiturn(n).description for n in M2LINGUAL_MULTITURN}) == 13


def test_new_multiturn_prompts_render_as_the_synthesizer_does(tax: Taxonomy) -> None:
    book = prompt_book()
    lang = LanguageRegistry.load().get("hi")
    conversation = [
        {"role": "user", "content": "दिल्ली में घूमने की तीन जगहें बताइए।"},
        {"role": "assistant", "content": "लाल किला, कुतुब मीनार और इंडिया गेट।"},
    ]
    for name in sorted(NEW_MULTITURN):
        evol = tax.multiturn(name)
        messages = next_user_messages(book, evol, lang, conversation)
        assert [m["role"] for m in messages] == ["system", "user"], name
        prompt = messages[1]["content"]
        assert "User: दिल्ली में घूमने की तीन जगहें बताइए।\nAssistant: लाल किला" in prompt, name
        assert f"in {lang.name}," in prompt, name
        assert not re.search(r"\{[a-z_]+\}", prompt), name  # every placeholder filled
        # the output checks know this template: a model echoing it is caught as leakage
        problem = instruction_problem(book, prompt, lang, template=evol.prompt)
        assert problem is not None and problem[0] == "template_leakage", name
        # while a plausible user turn in the language passes
        turn = "इनमें से कौन सी जगह बच्चों के साथ जाने के लिए सबसे अच्छी है, और क्यों?"
        assert instruction_problem(book, turn, lang, template=evol.prompt) is None, name
