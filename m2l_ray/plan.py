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
from dataclasses import asdict, dataclass, replace

from m2l_ray.seeds.records import Seed
from m2l_ray.taxonomy import Taxonomy


def stable_rng(*parts: object) -> random.Random:
    """A Random seeded from a hash of its parts: the same parts give the same stream anywhere."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def stable_int(*parts: object, bits: int = 31) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (1 << bits)


def selection_key(job_seed: int, seed_id: str) -> tuple[int, str]:
    """A seed's place in its (language, task) group: the smallest keys are selected.
    A function of (job seed, seed id) alone, so any reader, any split of the pool into
    blocks and any merge order ranks the same seeds the same way."""
    return stable_int(job_seed, "select", seed_id), seed_id


@dataclass(frozen=True)
class Selection:
    selected: list[Seed]
    skipped_by_filter: int  # language/task not asked for by the job
    over_cap: int  # beyond seeds.per_group_cap in their (language, task) group
    groups: dict[str, int]  # "lang/task" -> seeds selected

    def digest(self) -> str:
        """16 hex digits over every selected seed's id and source (file, row), in id
        order: two runs (or the two intake paths) picked the same seeds from the same
        rows exactly when their digests match, without printing 13K seeds."""
        h = hashlib.sha256()
        for s in sorted(self.selected, key=lambda s: s.seed_id):
            h.update(f"{s.seed_id}\x1f{s.source_file}\x1f{s.source_row}\x1e".encode())
        return h.hexdigest()[:16]


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
        ranked = sorted(groups[key], key=lambda s: selection_key(job_seed, s.seed_id))
        take = ranked[:per_group_cap]
        over += len(ranked) - len(take)
        counts[f"{key[0]}/{key[1]}"] = len(take)
        selected.extend(take)
    selected.sort(key=lambda s: s.seed_id)
    return Selection(selected, skipped, over, counts)


@dataclass(frozen=True)
class PlannedConversation:
    """One item of work: one evolution of a seed (an evolved pair), and, for a share of
    them, the multi-turn conversation grown from it; every choice that shapes it."""

    key: str  # "<seed id>-<slot>": stable across runs, the item's identity in raw/
    seed_id: str
    evol_slot: int  # which of the seed's evol.per_seed evolutions
    language_code: str
    task: str
    instruction: str
    reference_answer: str
    seed_source: str
    task_evols: tuple[str, ...]  # first is the plan; the rest are fallbacks if it fails
    multiturn_evols: tuple[str, ...]  # one type per further user turn; empty: a single turn
    turns: int  # user turns: 1 for an evolved pair alone
    work_unit: int
    request_seed: int  # base of the per-request sampling seeds

    def to_row(self) -> dict:
        d = asdict(self)
        d["task_evols"] = list(self.task_evols)
        d["multiturn_evols"] = list(self.multiturn_evols)
        return d

    @classmethod
    def from_row(cls, r: dict) -> PlannedConversation:
        return cls(**{**r, "task_evols": tuple(r["task_evols"]),
                      "multiturn_evols": tuple(r["multiturn_evols"] or ())})


def plan(
    selected: Sequence[Seed],
    taxonomy: Taxonomy,
    job_seed: int,
    turns_min: int,
    turns_max: int,
    work_unit_size: int,
    evol_attempts: int,
    per_seed: int = 1,
    multiturn_share: float = 1.0,
) -> list[PlannedConversation]:
    """Fan each seed out into ``per_seed`` evolutions and plan each one.

    Per seed, its task's evol types are shuffled by (job seed, seed id): slot k takes
    the k-th as its plan, and the types no slot planned are dealt out as fallbacks,
    so a failed evolution never repeats a type the seed already used. Per evolved pair
    (job seed, key): whether it grows into a multi-turn conversation (a share
    ``multiturn_share`` of them), how many user turns, and one multi-turn evol type per
    further turn (distinct while the taxonomy has enough). Work units are consecutive
    slices of the key order (a seed's evolutions stay together, which also lets the
    engine's prefix cache share their prompts): the same selection always gives the
    same units, which is what resume keys on.
    """
    out = []
    multiturn_names = [e.name for e in taxonomy.multiturn_evols]
    for s in sorted(selected, key=lambda s: s.seed_id):
        rng = stable_rng(job_seed, "plan", s.seed_id)
        evols = [e.name for e in taxonomy.evols_for(s.task)]
        rng.shuffle(evols)
        k_eff = max(1, min(per_seed, len(evols)))
        spare = evols[k_eff:]
        for k in range(k_eff):
            key = f"{s.seed_id}-{k}"
            r = stable_rng(job_seed, "pair", key)
            fallbacks = spare[k::k_eff][: max(0, evol_attempts - 1)]
            multi = r.random() < multiturn_share
            turns = r.randint(max(2, turns_min), max(2, turns_max)) if multi else 1
            n_mt = turns - 1
            mt = (r.sample(multiturn_names, n_mt) if n_mt <= len(multiturn_names)
                  else [r.choice(multiturn_names) for _ in range(n_mt)])
            out.append(
                PlannedConversation(
                    key=key,
                    seed_id=s.seed_id,
                    evol_slot=k,
                    language_code=s.language_code,
                    task=s.task,
                    instruction=s.instruction,
                    reference_answer=s.reference_answer,
                    seed_source=s.source,
                    task_evols=(evols[k], *fallbacks),
                    multiturn_evols=tuple(mt),
                    turns=turns,
                    work_unit=0,
                    request_seed=r.getrandbits(31),
                )
            )
    out.sort(key=lambda p: p.key)
    return [replace(p, work_unit=i // work_unit_size) for i, p in enumerate(out)]


def planned_requests(p: PlannedConversation) -> int:
    """Requests an item needs when nothing fails: an evolution and an answer for the
    first turn (the evolved pair), a user message and an answer for each further turn."""
    return 2 * p.turns
