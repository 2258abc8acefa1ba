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
from m2l_ray.taxonomy import DEFAULT_DIRECTORY, Evol, Taxonomy, template_placeholders

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
