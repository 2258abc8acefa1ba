"""The output schema: the public M2Lingual columns plus provenance beside them.

One Arrow schema is shared by raw shards (one per work unit), the three output
configs and every reader, so that a change here is the only change needed and a
shard written by one version is checked, not guessed, by the next.

The public columns keep the public dataset's names *and types* (``id`` and
``no_of_turns`` int32, ``conversation`` a list of ``{role, content}``), so a config of
ours concatenates with a table built from the public features. ``id`` is assigned in
final order when the output is committed (null in raw/); the stable string identity of
a row is ``key``: the seed id for a seed row, ``<seed id>-<slot>`` for an evolved pair,
``<seed id>-<slot>-mt`` for the multi-turn conversation grown from that pair.
"""

from __future__ import annotations

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
FAILURE = pa.struct([("step", pa.string()), ("reason", pa.string()), ("detail", pa.string())])

#: Columns of the public M2Lingual dataset, in its order.
PUBLIC_COLUMNS: list[pa.Field] = [
    pa.field("id", pa.int32()),
    pa.field("task_evol_type", pa.string()),
    pa.field("task_evol_prompt", pa.string()),
    pa.field("seed_prompt", pa.string()),
    pa.field("output_assistant_reply", pa.string()),
    pa.field("evolved_user_prompt", pa.string()),
    pa.field("multiturn_evol_type", pa.string()),
    pa.field("multiturn_evol_prompt", pa.string()),
    pa.field("no_of_turns", pa.int32()),
    pa.field("language", pa.string()),
    pa.field("task", pa.string()),
    pa.field("evolved_multiturn_prompt", pa.list_(pa.string())),
    pa.field("conversation", pa.list_(MESSAGE)),
]

#: Provenance: enough to reproduce and audit every row.
PROVENANCE_COLUMNS: list[pa.Field] = [
    pa.field("key", pa.string()),
    pa.field("kind", pa.string()),  # "seed" | "evolved" | "multiturn"
    pa.field("evol_slot", pa.int32()),  # which of the seed's evolutions (null for a seed row)
    pa.field("multiturn_evol_types", pa.list_(pa.string())),  # one per further user turn
    pa.field("pair_status", pa.string()),  # the evolved pair (evolution + first answer) alone
    pa.field("seed_id", pa.string()),
    pa.field("language_code", pa.string()),
    pa.field("script", pa.string()),
    pa.field("resource_level", pa.string()),
    pa.field("seed_source", pa.string()),
    pa.field("work_unit", pa.int32()),
    pa.field("planned_turns", pa.int32()),
    pa.field("status", pa.string()),  # "ok" | "failed"
    pa.field("failures", pa.list_(FAILURE)),
    pa.field("model", pa.string()),
    pa.field("engine", pa.string()),
    pa.field("sampling", pa.string()),  # JSON of the sampling parameters
    pa.field("config_hash", pa.string()),
    pa.field("job_seed", pa.int64()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("usage", pa.string()),  # JSON: {"evolve"|"answer"|"user": [prompt tokens, completion tokens, requests]}
    pa.field("m2l_version", pa.string()),
]

RAW_SCHEMA = pa.schema(PUBLIC_COLUMNS + PROVENANCE_COLUMNS)
PUBLIC_NAMES = [f.name for f in PUBLIC_COLUMNS]

SEED, EVOLVED, MULTITURN = "seed", "evolved", "multiturn"
#: The output configs, as in the public dataset, and the kinds of row each holds.
CONFIGS: dict[str, tuple[str, ...]] = {
    "seed_data": (SEED,),
    "seed_evol_data": (EVOLVED,),
    "full_data": (SEED, EVOLVED, MULTITURN),
}
