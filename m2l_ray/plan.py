"""Selection and planning: pure, deterministic functions of (config, job seed, seed id).

Everything here is decided on the driver before any engine starts, so a rerun
with the same config and job seed selects the same seeds, gives each the same
evol type, multi-turn type and turn count, and puts it in the same work unit;
that is what makes resume and exact comparison of two runs possible.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from m2l_ray.seeds import Seed
from m2l_ray.taxonomy import Taxonomy


def stable_rng(*parts: object) -> random.Random:
    """A Random seeded from a hash of its parts: the same parts give the same stream anywhere."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def stable_int(*parts: object, bits: int = 31) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (1 << bits)


@dataclass(frozen=True)
class Selection:
    selected: list[Seed]
    skipped_by_filter: int  # language/task not asked for by the job
    over_cap: int  # beyond seeds.per_group_cap in their (language, task) group
    groups: dict[str, int]  # "lang/task" -> seeds selected


def select(
    seeds: Iterable[Seed],
    job_seed: int,
    per_group_cap: int,
    languages: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
) -> Selection:
    """Balanced per (language, task): at most ``per_group_cap`` from each group.

    Within a group the order is a hash of (job seed, seed id), not file order, so
    the pick is a fair random sample that doesn't move when files are reordered.
    """
    lang_set = set(languages) if languages else None
    task_set = set(tasks) if tasks else None
    groups: dict[tuple[str, str], list[Seed]] = defaultdict(list)
    skipped = 0
    for s in seeds:
        if (lang_set is not None and s.language_code not in lang_set) or (
            task_set is not None and s.task not in task_set
        ):
            skipped += 1
            continue
        groups[(s.language_code, s.task)].append(s)
    selected: list[Seed] = []
    over = 0
    counts: dict[str, int] = {}
    for key in sorted(groups):
        ranked = sorted(groups[key], key=lambda s: (stable_int(job_seed, "select", s.seed_id), s.seed_id))
        take = ranked[:per_group_cap]
        over += len(ranked) - len(take)
        counts[f"{key[0]}/{key[1]}"] = len(take)
        selected.extend(take)
    selected.sort(key=lambda s: s.seed_id)
    return Selection(selected, skipped, over, counts)


@dataclass(frozen=True)
class PlannedConversation:
    """One row of work: a seed plus every choice that shapes its conversation."""

    seed_id: str
    language_code: str
    task: str
    instruction: str
    reference_answer: str
    seed_source: str
    task_evols: tuple[str, ...]  # first is the plan; the rest are fallbacks if it fails
    multiturn_evol: str
    turns: int
    work_unit: int
    request_seed: int  # base of the per-request sampling seeds

    def to_row(self) -> dict:
        d = asdict(self)
        d["task_evols"] = list(self.task_evols)
        return d


def plan(
    selected: Sequence[Seed],
    taxonomy: Taxonomy,
    job_seed: int,
    turns_min: int,
    turns_max: int,
    work_unit_size: int,
    evol_attempts: int,
) -> list[PlannedConversation]:
    """Assign evol types, multi-turn type, turn count and work unit to each seed.

    Work units are consecutive slices of the seed-id order: the same selection
    always gives the same units, which is what resume keys on.
    """
    out = []
    multiturn_names = [e.name for e in taxonomy.multiturn_evols]
    for i, s in enumerate(sorted(selected, key=lambda s: s.seed_id)):
        rng = stable_rng(job_seed, "plan", s.seed_id)
        evols = [e.name for e in taxonomy.evols_for(s.task)]
        rng.shuffle(evols)
        out.append(
            PlannedConversation(
                seed_id=s.seed_id,
                language_code=s.language_code,
                task=s.task,
                instruction=s.instruction,
                reference_answer=s.reference_answer,
                seed_source=s.source,
                task_evols=tuple(evols[: max(1, evol_attempts)]),
                multiturn_evol=rng.choice(multiturn_names),
                turns=rng.randint(turns_min, turns_max),
                work_unit=i // work_unit_size,
                request_seed=rng.getrandbits(31),
            )
        )
    return out
