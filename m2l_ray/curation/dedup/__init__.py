"""MinHash-LSH near-duplicate detection on Ray Data, one module per stage.

Stages (each a Ray Data operation, so each scales out with the cluster):

1. **Signatures** (``signatures``; one ``map_batches`` pass, materialised): every row
   keeps its columns and gains ``_m2l_node``, XXH64 of its key (the ``key_field``
   value, else the whole row), a row id and its band keys. The node decides which
   member of a cluster survives (the smallest), so the choice depends on content, not
   on how blocks were cut: two runs keep the same rows.
2. **Buckets** (``candidates``): one row per (band key, node), hash-partitioned by band
   key with ``repartition(keys=...)``; every block then holds whole buckets, and each
   bucket becomes star edges from its smallest node to the others.
3. **Verification** (``candidates``, optional): candidate edges whose exact Jaccard of
   shingle sets (or signature estimate) is below the threshold are dropped before they
   can join clusters.
4. **Connected components** (``components``): on the driver when the edge list is
   small (``driver_max_edges``), else distributed by alternating large-star/small-star
   rounds. Components become stars around their smallest node: the kept member.
5. **Assignment** (``assign``): every row gets ``dedup_cluster`` (hex of the kept
   member's node) and ``dedup_duplicate``.

``driver.dedup`` runs them; ``arrays`` holds the numpy/Arrow helpers under all of them.
Inputs that fit one machine run the same stage functions without Ray
(curation/dedup_local.py), so both paths find the same clusters.
"""

from m2l_ray.curation.dedup.arrays import as_table, bool_array
from m2l_ray.curation.dedup.assign import CLUSTER, DUPLICATE, assign_arrays, cluster_ids, exact_groups
from m2l_ray.curation.dedup.candidates import bucket_edges
from m2l_ray.curation.dedup.components import components_distributed, components_local
from m2l_ray.curation.dedup.driver import DedupResult, base_stats, dedup
from m2l_ray.curation.dedup.signatures import (
    FROM_CONFIG,
    SIGNATURE_CHUNK,
    TextSpec,
    row_keys,
    signature_arrays,
    text_spec,
)

__all__ = [
    "CLUSTER", "DUPLICATE", "FROM_CONFIG", "SIGNATURE_CHUNK", "DedupResult", "TextSpec", "as_table",
    "assign_arrays", "base_stats", "bool_array", "bucket_edges", "cluster_ids", "components_distributed",
    "components_local", "dedup", "exact_groups", "row_keys", "signature_arrays", "text_spec",
]
