"""MinHash-LSH dedup on real Ray: planted near-duplicates, negatives, determinism.

The corpus plants clusters of near-duplicates (word edits, swapped sentences,
whitespace, case and punctuation changes, a Chinese pair hashed by character
n-grams, identical rows) among true negatives that share a template or part of
their text. The truth is exact Jaccard over the same shingles (pure Python), so
the test fails if hashing, banding, verification or components are wrong.
Two runs cut the data into different blocks and partitions, in a different row
order; both must keep the same rows and give the same cluster ids. The fully
distributed path (components on Ray) is checked against the same truth in
test_curation_dedup_distributed.py.
"""

from __future__ import annotations

import os
import random

import pyarrow as pa

from m2l_ray.curation import shingles
from m2l_ray.curation.config import DedupConfig
from m2l_ray.languages import LanguageRegistry

NGRAM = 3


def _sentences(rng: random.Random, vocab: list[str], n: int) -> list[str]:
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 14))).capitalize() + "."
            for _ in range(n)]


def build_corpus(seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    vocab = [f"{rng.choice('bcdfgklmnprst')}{rng.choice('aeiou')}{rng.choice('lnrst')}"
             f"{rng.choice('aeiou')}{i}" for i in range(2500)]
    rows: list[dict] = []

    def add(id_, text, lang="en"):
        rows.append({"id": id_, "text": text, "lang": lang})

    for i in range(40):
        sents = _sentences(rng, vocab, 8)
        base = " ".join(sents)
        add(f"b{i}", base)
        kind = i % 5
        if kind == 0:  # one word edited
            words = base.split()
            words[len(words) // 2] = "edited"
            add(f"b{i}-edit", " ".join(words))
        elif kind == 1:  # two sentences swapped
            s = list(sents)
            s[2], s[5] = s[5], s[2]
            add(f"b{i}-swap", " ".join(s))
        elif kind == 2:  # whitespace, case and punctuation
            add(f"b{i}-case", "\n\n".join(x.upper().rstrip(".") + " !" for x in sents))
        elif kind == 3:  # identical row (same id and text): an exact duplicate
            add(f"b{i}", base)
        else:  # a chain: edit, and an edit of the edit
            words = base.split()
            words[3] = "first"
            add(f"b{i}-e1", " ".join(words))
            words[-4] = "second"
            add(f"b{i}-e2", " ".join(words))
    # true negatives: shared template, different content; half of the text shared
    template = "Please answer the following question carefully and in detail: "
    for i in range(15):
        add(f"t{i}", template + " ".join(_sentences(rng, vocab, 3)))
    half = _sentences(rng, vocab, 4)
    for i in range(4):
        add(f"h{i}", " ".join(half + _sentences(rng, vocab, 4)))
    zh = ("光合作用是绿色植物利用阳光、水和二氧化碳制造葡萄糖和氧气的过程。"
          "它主要发生在叶子的叶绿体中，"
          "是地球上几乎所有食物链的基础，也为动物提供了呼吸所需的氧气。")
    add("zh", zh, "zh")
    add("zh-punct", zh.replace("，", " , ").replace("。", "！"), "zh")
    add("zh-other", "天空呈现蓝色是因为太阳光进入大气层后，"
                    "波长较短的蓝光比其他颜色的光更容易被空气分子散射。", "zh")
    return rows


def _shingle_set(text: str, char: bool) -> set:
    toks = shingles.reference_tokens(text)
    if char:
        seq = "".join(toks)
        n = 5
        return {seq[i:i + n] for i in range(len(seq) - n + 1)} or {seq}
    return {tuple(toks[i:i + NGRAM]) for i in range(len(toks) - NGRAM + 1)} or {tuple(toks)}


def exact_roots(sets: list[set], threshold: float) -> list[int]:
    """Per set, the smallest index of its connected component under exact Jaccard >= threshold
    (union-find over all pairs: the ground truth the MinHash paths are checked against)."""
    parent = list(range(len(sets)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            a, b = sets[i], sets[j]
            if len(a & b) / len(a | b) >= threshold:
                ri, rj = find(i), find(j)
                parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(len(sets))]


def true_clusters(rows: list[dict], threshold: float) -> dict[int, int]:
    """Row index -> smallest row index of its cluster under exact Jaccard >= threshold."""
    roots = exact_roots([_shingle_set(r["text"], r["lang"] == "zh") for r in rows], threshold)
    return dict(enumerate(roots))


def _run(rows, order, blocks, **cfg_kw):
    import ray

    from m2l_ray.curation.dedup import dedup

    cfg = DedupConfig(field="text", key_field=None, ngram=NGRAM, threshold=0.8,
                      segmentation="registry", **cfg_kw)
    table = pa.Table.from_pylist([rows[i] for i in order])
    ds = ray.data.from_arrow(table).repartition(blocks)
    res = dedup(ds, cfg, registry=LanguageRegistry.load(), language_field="lang")
    out = [r for b in res.ds.iter_batches(batch_size=None, batch_format="pyarrow")
           for r in b.to_pylist()]
    return out, res.stats


def truth_groups(rows: list[dict]) -> list[list[str]]:
    """The exact-Jaccard clusters as sorted id lists (identical rows share an id)."""
    groups: dict[int, list[str]] = {}
    for i, root in true_clusters(rows, 0.8).items():
        groups.setdefault(root, []).append(rows[i]["id"])
    return sorted(sorted(g) for g in groups.values())


def check_against_truth(out: list[dict], rows: list[dict]) -> None:
    assert len(out) == len(rows)
    predicted: dict[str, list[dict]] = {}
    for r in out:
        predicted.setdefault(r["dedup_cluster"], []).append(r)
    # predicted clusters equal the exact-Jaccard clusters
    assert sorted(sorted(r["id"] for r in g) for g in predicted.values()) == truth_groups(rows)
    # exactly one member of every cluster survives
    assert all(sum(not r["dedup_duplicate"] for r in g) == 1 for g in predicted.values())


def test_corpus_plants_clusters_and_negatives():
    rows = build_corpus()
    groups = truth_groups(rows)
    assert sum(len(g) > 1 for g in groups) >= 30
    singles = {g[0] for g in groups if len(g) == 1}
    negatives = {r["id"] for r in rows if r["id"][0] in "th" or r["id"] == "zh-other"}
    assert negatives <= singles
    assert ["zh", "zh-punct"] in groups


def test_planted_near_duplicates_and_determinism(curation_ray):
    rows = build_corpus()
    first, st1 = _run(rows, list(range(len(rows))), 8, num_partitions=3)
    rng = random.Random(1)
    order = list(range(len(rows)))
    rng.shuffle(order)
    second, st2 = _run(rows, order, 3, num_partitions=2)
    assert st1["components"] == st2["components"] == "driver"
    assert st1["rows"] == st2["rows"] == len(rows)
    planted = [g for g in truth_groups(rows) if len(g) > 1]
    for out in (first, second):
        check_against_truth(out, rows)

    # determinism: same survivors (by content) and same cluster ids in both runs
    def survivors(out):
        return sorted((r["id"], r["text"]) for r in out if not r["dedup_duplicate"])

    assert survivors(first) == survivors(second)
    c1 = {(r["id"], r["text"]): r["dedup_cluster"] for r in first}
    c2 = {(r["id"], r["text"]): r["dedup_cluster"] for r in second}
    assert c1 == c2
    assert st1["exact_duplicates"] == st2["exact_duplicates"] == 8
    assert st1["duplicates"] == st2["duplicates"] == sum(len(g) - 1 for g in planted)


def test_work_is_spread_over_blocks_and_worker_processes(curation_ray):
    import ray

    rows = build_corpus()
    ds = ray.data.from_arrow(pa.Table.from_pylist(rows)).repartition(8).materialize()
    assert ds.num_blocks() >= 4

    def pid(batch):
        import time

        time.sleep(0.2)  # long enough that both CPUs pick up tasks
        return {"pid": [os.getpid()]}

    pids = {r["pid"] for r in ds.map_batches(pid, batch_size=None).take_all()}
    assert len(pids) >= 2
