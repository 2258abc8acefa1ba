"""Benchmark: m2l-ray MinHash-LSH dedup against datasketch, and how its cost grows.

Not a test: it runs for minutes and its numbers depend on the machine. Two modes.

``quality``: one generated corpus (English-like documents with planted
near-duplicates over a range of similarities), the same shingles (word 5-grams of
the same tokenizer), threshold and num_perm for both systems, in one run:

* exact Jaccard of every pair, from a sparse product of the shingle-set matrix;
* datasketch 2.0: ``MinHash.bulk`` + ``MinHashLSH`` (its own banding for the
  threshold), every document inserted and then queried; its pairs are the query
  results (datasketch has no verification step);
* m2l-ray kernel: shingles + signatures + band keys in this process, then all
  pairs sharing a bucket, verified three ways (none / signature estimate / exact);
* m2l-ray on Ray Data: the full ``curation.dedup.dedup`` pipeline (the same code
  ``m2l dedup`` runs), whose clusters give the pairs it treats as duplicates.

Speed is documents per CPU-second (= docs/s per core): CPU time of this process
for datasketch and the kernel, CPU time of the driver plus every Ray process for
the pipeline, so that load from other programs on the machine does not count.
Wall time is reported beside it.

``scale``: the Ray pipeline alone on 10K ... 1M generated documents: wall and CPU
seconds, and peak memory (sum of PSS over the driver and all Ray processes,
sampled every 0.25 s, so shared object-store pages are counted once).

``command``: the whole ``m2l dedup`` command as a user runs it, as a subprocess
(interpreter start, imports, reading the Parquet file, dedup, writing the annotated
output shards), against datasketch (MinHash.bulk + MinHashLSH, same word 5-grams,
num_perm and threshold) in a process of its own, at each of ``--sizes``:

* truth: all pairs with exact Jaccard >= 0.8 over 64-bit fingerprints of the word
  5-grams, found by prefix filtering (an exact all-pairs join: two sets with
  J >= t share a token among their |s| - ceil(t|s|) + 1 rarest), so that 1M
  documents need seconds, not the quadratic sparse product; at 10K it is checked
  against ``exact_pairs`` over the shingle strings;
* recall and precision of the pairs in one cluster (cluster level, as above);
* wall seconds (m2l: process start to exit; datasketch: its MinHash + LSH work
  only, not building its shingle strings, which favours it; ``script_wall_s``
  adds reading the file and building the shingles), CPU seconds, and
  peak memory (m2l: PSS summed over the command and its worker processes;
  datasketch: peak RSS of its process, which holds its shingles too).

    python benchmarks/dedup_bench.py quality --docs 100000 --json q.json
    python benchmarks/dedup_bench.py scale --sizes 10000,100000,1000000 --json s.json
    python benchmarks/dedup_bench.py command --sizes 10000,100000 --json c.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from m2l_ray.curation import minhash, shingles  # noqa: E402
from m2l_ray.curation.config import DedupConfig  # noqa: E402

NGRAM = 5
THRESHOLD = 0.8


# ------------------------------------------------------------------ corpus


def make_corpus(n_docs: int, seed: int = 0, dup_share: float = 0.3) -> pa.Table:
    """English-like documents (Zipf-distributed words, 60-160 words in sentences),
    ``dup_share`` of them near-copies of another with 0-16 random word edits,
    sometimes two sentences swapped, case or spacing changed."""
    rng = np.random.default_rng(seed)
    syll = np.array(["ka", "lo", "mi", "ne", "ta", "ri", "su", "ve", "po", "da", "ge", "fu",
                     "ba", "zo", "xi", "ur", "an", "el", "is", "on", "th", "st", "qu", "wy"])
    n_vocab = 30000
    parts = rng.integers(0, len(syll), (n_vocab, 4))
    lens = rng.integers(1, 5, n_vocab)
    vocab = np.array(["".join(syll[parts[i, :lens[i]]]) for i in range(n_vocab)])
    n_base = int(n_docs * (1 - dup_share))
    n_var = n_docs - n_base
    words_per = rng.integers(60, 161, n_base)
    ids = rng.zipf(1.15, int(words_per.sum())) % n_vocab
    docs_words: list[np.ndarray] = np.split(ids, np.cumsum(words_per)[:-1])
    texts = [_render(vocab[w], rng) for w in docs_words]
    src = rng.integers(0, n_base, n_var)
    kinds = rng.random(n_var)
    for k, s in enumerate(src):
        w = docs_words[s].copy()
        edits = int(rng.integers(0, 17))
        for _ in range(edits):
            op = rng.random()
            pos = int(rng.integers(0, len(w)))
            if op < 0.6:
                w[pos] = rng.zipf(1.15) % n_vocab
            elif op < 0.8:
                w = np.insert(w, pos, rng.zipf(1.15) % n_vocab)
            elif len(w) > 10:
                w = np.delete(w, pos)
        text = _render(vocab[w], rng)
        if kinds[k] < 0.2:  # swap two sentences
            sents = text.split(". ")
            if len(sents) > 3:
                i, j = rng.choice(len(sents) - 1, 2, replace=False)
                sents[i], sents[j] = sents[j], sents[i]
                text = ". ".join(sents)
        elif kinds[k] < 0.3:
            text = text.upper()
        elif kinds[k] < 0.4:
            text = text.replace(" ", "  ").replace(". ", ".\n\n")
        texts.append(text)
    order = rng.permutation(n_docs)
    return pa.table({"id": [f"doc{i:07d}" for i in range(n_docs)],
                     "text": [texts[i] for i in order]})


def _render(words: np.ndarray, rng: np.random.Generator) -> str:
    out, i = [], 0
    while i < len(words):
        n = int(rng.integers(8, 18))
        out.append(" ".join(words[i:i + n]).capitalize() + ".")
        i += n
    return " ".join(out)


# ------------------------------------------------------------------ truth


def shingle_sets(texts: list[str], fast: bool = False) -> list[list[str]]:
    """Word 5-grams of the m2l tokenizer as strings (what datasketch hashes, too);
    ``fast``: the same tokens by regex (make_corpus's text is ASCII)."""
    out = []
    tokenize = _tokens_fast if fast else shingles.reference_tokens
    for t in texts:
        toks = tokenize(t)
        grams = [" ".join(toks[i:i + NGRAM]) for i in range(len(toks) - NGRAM + 1)]
        out.append(sorted(set(grams or ([" ".join(toks)] if toks else []))))
    return out


def exact_pairs(sets: list[list[str]], threshold: float) -> set[tuple[int, int]]:
    """All pairs with exact Jaccard >= threshold: sparse M @ M.T over shingle sets."""
    from scipy.sparse import csr_matrix, triu

    vocab: dict[str, int] = {}
    indices = [vocab.setdefault(g, len(vocab)) for s in sets for g in s]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    m = csr_matrix((np.ones(len(indices), np.int32), np.array(indices), indptr),
                   shape=(len(sets), len(vocab)))
    inter = triu(m @ m.T, k=1).tocoo()
    size = np.diff(indptr)
    jac = inter.data / (size[inter.row] + size[inter.col] - inter.data)
    ok = jac >= threshold - 1e-12
    return set(zip(inter.row[ok].tolist(), inter.col[ok].tolist(), strict=True))


_TOKEN = None


def _tokens_fast(text: str) -> list[str]:
    """``shingles.reference_tokens`` for make_corpus's ASCII text, at C speed (checked
    against it on a sample in ``fingerprint_sets``)."""
    global _TOKEN
    if _TOKEN is None:
        import re

        _TOKEN = re.compile(r"[a-z0-9]+")
    return _TOKEN.findall(text.lower())


def fingerprint_sets(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct 64-bit fingerprints of each text's word 5-grams, as one flat
    array and offsets (the exact sets up to 64-bit collisions)."""
    rng = np.random.default_rng(1)
    for i in rng.choice(len(texts), min(200, len(texts)), replace=False):
        assert _tokens_fast(texts[i]) == shingles.reference_tokens(texts[i])
    vocab: dict[str, int] = {}
    ids, lens = [], []
    for t in texts:
        toks = _tokens_fast(t)
        ids.extend(vocab.setdefault(w, len(vocab)) for w in toks)
        lens.append(len(toks))
    tok = np.array(ids, dtype=np.uint64)
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    doc = np.repeat(np.arange(len(texts)), lens)
    m = len(tok) - NGRAM + 1
    fp = np.zeros(max(m, 0), dtype=np.uint64)
    for j in range(NGRAM):  # splitmix-style mixing of the 5 token ids
        x = (fp ^ tok[j:j + m]) * np.uint64(0x9E3779B97F4A7C15)
        fp = x ^ (x >> np.uint64(29))
    ok = doc[:m] == doc[NGRAM - 1:]
    fdoc, fps = doc[:m][ok], fp[ok]
    short = np.flatnonzero((np.diff(off) < NGRAM) & (np.diff(off) > 0))
    for d in short:  # fewer than n tokens: one shingle of all of them
        x = np.uint64(0)
        for t in tok[off[d]:off[d + 1]]:
            x = (x ^ t) * np.uint64(0x9E3779B97F4A7C15)
        fdoc = np.append(fdoc, d)
        fps = np.append(fps, x)
    o = np.lexsort((fps, fdoc))
    fdoc, fps = fdoc[o], fps[o]
    keep = np.ones(len(fps), dtype=bool)
    keep[1:] = (fdoc[1:] != fdoc[:-1]) | (fps[1:] != fps[:-1])
    sizes = np.bincount(fdoc[keep].astype(np.int64), minlength=len(texts))
    return fps[keep], np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def prefix_filter_pairs(vals: np.ndarray, offs: np.ndarray, threshold: float
                        ) -> set[tuple[int, int]]:
    """All pairs with exact Jaccard >= threshold (prefix filtering, then exact)."""
    from scipy.sparse import csr_matrix

    n = len(offs) - 1
    size = np.diff(offs)
    doc = np.repeat(np.arange(n), size)
    uniq, inv, cnt = np.unique(vals, return_inverse=True, return_counts=True)
    # per document: tokens from rarest to most common; the prefix is the first
    # |s| - ceil(t|s|) + 1 of them
    order = np.lexsort((inv, cnt[inv], doc))
    rank = np.arange(len(vals)) - np.repeat(offs[:-1], size)
    plen = size - np.ceil(threshold * size - 1e-9).astype(np.int64) + 1
    pre = rank < np.repeat(plen, size)
    pdoc, ptok = doc[order][pre], inv[order][pre]
    o = np.lexsort((pdoc, ptok))
    pdoc, ptok = pdoc[o], ptok[o]
    start = np.flatnonzero(np.concatenate([[True], ptok[1:] != ptok[:-1]]))
    ends = np.append(start[1:], len(ptok))
    ca, cb = [], []
    for s, e in zip(start[ends - start > 1], ends[ends - start > 1], strict=True):
        g = pdoc[s:e]
        i, j = np.triu_indices(len(g), k=1)
        ca.append(g[i])
        cb.append(g[j])
    if not ca:
        return set()
    pairs = np.unique(np.stack([np.concatenate(ca), np.concatenate(cb)]).T, axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    m = csr_matrix((np.ones(len(inv), np.float32), inv, offs), shape=(n, len(uniq)))
    inter = np.asarray(m[pairs[:, 0]].multiply(m[pairs[:, 1]]).sum(axis=1)).ravel()
    jac = inter / (size[pairs[:, 0]] + size[pairs[:, 1]] - inter)
    ok = jac >= threshold - 1e-12
    return set(zip(pairs[ok, 0].tolist(), pairs[ok, 1].tolist(), strict=True))


def metrics(pred: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict[str, Any]:
    tp = len(pred & truth)
    return {"pairs": len(pred), "true_pairs": len(truth), "tp": tp,
            "recall": round(tp / len(truth), 4) if truth else None,
            "precision": round(tp / len(pred), 4) if pred else None}


def cluster_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """All pairs of documents that share a cluster label."""
    out: set[tuple[int, int]] = set()
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    bounds = np.flatnonzero(np.diff(lab)) + 1
    for grp in np.split(order, bounds):
        if len(grp) > 1:
            g = sorted(grp.tolist())
            out.update((a, b) for i, a in enumerate(g) for b in g[i + 1:])
    return out


def union_find_labels(n: int, pairs: set[tuple[int, int]]) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs:
        return np.arange(n)
    a, b = np.array(list(pairs)).T
    g = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    return connected_components(g, directed=False)[1]


# ------------------------------------------------------------------ systems


def run_datasketch(sets: list[list[str]], num_perm: int) -> tuple[set, dict[str, Any]]:
    from datasketch import MinHash, MinHashLSH

    t0, c0 = time.perf_counter(), time.process_time()
    encoded = [[g.encode("utf-8") for g in s] for s in sets]
    mhs = MinHash.bulk(encoded, num_perm=num_perm)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for i, m in enumerate(mhs):
            session.insert(i, m)
    pairs = set()
    for i, m in enumerate(mhs):
        for j in lsh.query(m):
            if j != i:
                pairs.add((min(i, j), max(i, j)))
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    b, r = lsh.b, lsh.r
    return pairs, {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                   "docs_per_cpu_s": round(len(sets) / cpu), "bands": b, "rows": r}


def run_kernel(texts: list[str], params: minhash.LshParams, seed: int = 1,
               batch: int = 512) -> tuple[dict[str, set], dict[str, Any]]:
    """Shingles + signatures + band keys in this process; then candidate pairs."""
    a, b = minhash.permutations(params.num_perm, seed)
    shingles.word_table()  # built once per process; not part of the per-document cost
    c0 = time.process_time()
    sigs, keys, sets = [], [], []
    for i in range(0, len(texts), batch):
        h, off = shingles.shingle_hashes(texts[i:i + batch], ngram=NGRAM)
        sig = minhash.signatures(h, off, a, b)
        sigs.append(sig)
        keys.append(minhash.band_keys(sig, params.bands, params.rows))
        sets.append((h, off))
    cpu_sig = time.process_time() - c0
    sig = np.concatenate(sigs)
    bk = np.concatenate(keys)
    # all pairs sharing a bucket (as datasketch's queries return them)
    cand: set[tuple[int, int]] = set()
    n = len(texts)
    for j in range(params.bands):
        order = np.argsort(bk[:, j], kind="stable")
        k = bk[order, j]
        bounds = np.flatnonzero(np.diff(k)) + 1
        for grp in np.split(order, bounds):
            if 1 < len(grp) <= 200:
                g = sorted(grp.tolist())
                cand.update((x, y) for i2, x in enumerate(g) for y in g[i2 + 1:])
    cpu_cand = time.process_time() - c0 - cpu_sig
    pairs = np.array(sorted(cand), dtype=np.int64).reshape(-1, 2)
    est = (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1) if len(pairs) else np.zeros(0)
    vals = np.concatenate([s[0] for s in sets])
    offs = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(s[1]) for s in sets]))])
    from m2l_ray.curation.dedup.arrays import gather_lists

    va, oa = gather_lists(vals, offs, pairs[:, 0])
    vb, ob = gather_lists(vals, offs, pairs[:, 1])
    exact = minhash.pair_jaccard(va, oa, vb, ob) if len(pairs) else np.zeros(0)
    cpu_total = time.process_time() - c0
    as_set = lambda mask: set(map(tuple, pairs[mask].tolist()))  # noqa: E731
    out = {"none": as_set(np.ones(len(pairs), bool)),
           "signature": as_set(est >= THRESHOLD - 1e-12),
           "exact": as_set(exact >= THRESHOLD - 1e-12)}
    return out, {"cpu_signatures_s": round(cpu_sig, 2), "cpu_candidates_s": round(cpu_cand, 2),
                 "cpu_total_s": round(cpu_total, 2),
                 "docs_per_cpu_s_signatures": round(n / cpu_sig),
                 "docs_per_cpu_s_total": round(n / cpu_total)}


class ProcessMeter:
    """CPU seconds and peak PSS of this process and all its descendants (Ray).

    A separate sampler process reads them (PSS parses /proc/*/smaps, which is slow:
    done in the measured driver it would hold the GIL and cost CPU of its own). It
    remembers the last CPU reading of every process, so workers that exit still
    count; its own CPU does not.
    """

    def __init__(self, interval: float = 0.5, skip_root: bool = False) -> None:
        self.interval = interval
        self.skip_root = skip_root  # count only the children (a measured subprocess)

    def __enter__(self) -> ProcessMeter:
        import subprocess

        self.out = tempfile.mktemp(suffix=".json")
        self.stop = self.out + ".stop"
        code = _SAMPLER_LOOP.format(stop=self.stop, out=self.out)
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(os.getpid()),
                                      str(self.interval), str(int(self.skip_root))])
        time.sleep(2 * self.interval)  # first reading before the work starts
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.t0
        time.sleep(self.interval)
        open(self.stop, "w").close()
        self.proc.wait(timeout=60)
        with open(self.out) as fh:
            res = json.load(fh)
        os.remove(self.out)
        os.remove(self.stop)
        self.cpu_used = res["cpu_end"] - res["cpu_start"]
        self.peak = res["peak"]


_SAMPLER_LOOP = """
import json, os, sys, time, psutil
root, interval, skip_root = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1"


def pss(p):
    # smaps_rollup: the kernel sums PSS itself, ~100x cheaper than parsing smaps
    # (which made this sampler take a core of its own from a 2-core machine)
    try:
        with open(f"/proc/{{p.pid}}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return p.memory_full_info().pss


me = os.getpid()
first, last, peak, initial = {{}}, {{}}, 0, True
while True:
    done = os.path.exists({stop!r})
    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.Error:
        break
    mem = 0
    for p in procs:
        if p.pid == me or (skip_root and p.pid == root):
            continue
        try:
            t = p.cpu_times()
            last[p.pid] = t.user + t.system
            # processes born during the run count from zero
            first.setdefault(p.pid, last[p.pid] if initial else 0.0)
            mem += pss(p)
        except psutil.Error:
            pass
    initial = False
    peak = max(peak, mem)
    if done:
        break
    time.sleep(interval)
json.dump({{"cpu_start": sum(first.values()), "cpu_end": sum(last.values()), "peak": peak}},
          open({out!r}, "w"))
"""


def run_ray(table: pa.Table, cfg: DedupConfig, tmp: str, cpus: int) -> tuple[Any, dict]:
    """The ``m2l dedup`` pipeline (read Parquet, dedup, materialised result)."""
    from m2l_ray.curation.dedup import dedup
    from m2l_ray.curation.io import read_table_any

    path = os.path.join(tmp, f"corpus-{table.num_rows}.parquet")
    pq.write_table(table, path, row_group_size=20_000)
    with ProcessMeter() as meter:
        ds = read_table_any(path)
        res = dedup(ds, cfg, column="text", key_field="id")
        res.ds = res.ds.materialize()  # the annotated output, as `m2l dedup` writes it
    n = table.num_rows
    info = {"docs": n, "wall_s": round(meter.wall, 2), "cpu_s": round(meter.cpu_used, 2),
            "docs_per_cpu_s": round(n / meter.cpu_used),
            "docs_per_s_per_core_wall": round(n / meter.wall / cpus),
            "cpu_util": round(meter.cpu_used / meter.wall / cpus, 2),
            "peak_pss_mb": round(meter.peak / 2**20), "stages_s": res.stats["seconds"],
            "duplicates": res.stats["duplicates"], "components": res.stats["components"],
            "candidate_edges": res.stats["candidate_edges"],
            "verified_edges": res.stats["verified_edges"]}
    return res, info


def _ray_init(cpus: int, warm_pools: bool = False) -> None:
    """A local Ray of ``cpus`` CPUs, warmed up by one small dedup run.

    The warm-up starts the worker processes (each imports Ray, Arrow and numpy once,
    about a CPU-second apiece): a fixed cost of every Ray job, not a cost per document.
    """
    import ray

    from m2l_ray.curation.dedup import dedup

    # Ray 2.60 runs shuffle map and reduce tasks in worker pools of their own and
    # stops idle workers after 1 s, so by default every shuffle starts fresh worker
    # processes (about 1-2 CPU-s each); --warm-pools keeps idle workers for 10 min,
    # as on a long-running cluster
    extra = {"_system_config": {"idle_worker_killing_time_threshold_ms": 600_000}} \
        if warm_pools else {}
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True, **extra)
    ray.data.DataContext.get_current().enable_progress_bars = False
    warm = ray.data.from_arrow(make_corpus(2000, seed=99))
    dedup(warm, DedupConfig(field="text", ngram=NGRAM, segmentation="space"),
          column="text", key_field="id")


# ------------------------------------------------------------------ modes


def quality(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    table = make_corpus(args.docs, seed=args.seed)
    texts = table.column("text").to_pylist()
    ids = table.column("id").to_pylist()
    print(f"corpus: {len(texts)} docs in {time.perf_counter() - t0:.1f}s", flush=True)
    sets = shingle_sets(texts)
    t0 = time.perf_counter()
    truth = exact_pairs(sets, THRESHOLD)
    print(f"truth: {len(truth)} pairs with J >= {THRESHOLD} in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    params = minhash.lsh_params(THRESHOLD, args.num_perm)
    out: dict[str, Any] = {"docs": len(texts), "threshold": THRESHOLD, "ngram": NGRAM,
                           "num_perm": params.num_perm, "true_pairs": len(truth),
                           "mean_shingles": round(float(np.mean([len(s) for s in sets])), 1)}
    if not args.skip_datasketch:
        ds_pairs, ds_info = run_datasketch(sets, params.num_perm)
        ds_clusters = cluster_pairs(union_find_labels(len(texts), ds_pairs))
        out["datasketch"] = {**ds_info, "pairs": metrics(ds_pairs, truth),
                             "cluster_pairs": metrics(ds_clusters, truth)}
        print("datasketch", json.dumps(out["datasketch"]), flush=True)
    k_pairs, k_info = run_kernel(texts, params)
    out["m2l_kernel"] = {**k_info, "bands": params.bands, "rows": params.rows,
                         **{f"pairs_verify_{m}": metrics(p, truth) for m, p in k_pairs.items()}}
    print("m2l kernel", json.dumps(out["m2l_kernel"]), flush=True)
    if not args.skip_ray:
        _ray_init(args.cpus, args.warm_pools)
        cfg = DedupConfig(field="text", num_perm=params.num_perm, ngram=NGRAM,
                          threshold=THRESHOLD, segmentation="space", verify="exact")
        with tempfile.TemporaryDirectory() as tmp:
            res, info = run_ray(table, cfg, tmp, args.cpus)
            got = res.ds.select_columns(["id", "dedup_cluster"]).to_pandas()
        pos = {d: i for i, d in enumerate(ids)}
        labels = np.empty(len(ids), dtype=object)
        labels[[pos[d] for d in got["id"]]] = got["dedup_cluster"].to_numpy()
        codes = np.unique(labels.astype(str), return_inverse=True)[1]
        out["m2l_ray"] = {**info, "cluster_pairs": metrics(cluster_pairs(codes), truth)}
        print("m2l ray", json.dumps(out["m2l_ray"]), flush=True)
    return out


def scale(args: argparse.Namespace) -> dict[str, Any]:
    _ray_init(args.cpus, args.warm_pools)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.sizes.split(",")]:
            t0 = time.perf_counter()
            table = make_corpus(n, seed=args.seed)
            gen = time.perf_counter() - t0
            cfg = DedupConfig(field="text", num_perm=args.num_perm, ngram=NGRAM,
                              threshold=THRESHOLD, segmentation="space", verify="exact")
            _, info = run_ray(table, cfg, tmp, args.cpus)
            info["generate_s"] = round(gen, 1)
            rows.append(info)
            print(json.dumps(info), flush=True)
            del table
    return {"cpus": args.cpus, "runs": rows}


def _datasketch_child(path: str, num_perm: int, out: str, batch: int = 20_000) -> None:
    """datasketch in a process of its own (so its peak RSS is its own): shingle
    strings are built per batch outside the timed part; MinHash.bulk, the LSH
    inserts and the queries are timed. ``script_*`` times the whole script a user
    would write (read the file, build the shingles, MinHash, LSH, queries)."""
    s0, sc0 = time.perf_counter(), time.process_time()
    from datasketch import MinHash, MinHashLSH

    texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=num_perm)
    mhs = []
    wall = cpu = 0.0
    for i in range(0, len(texts), batch):
        sets = shingle_sets(texts[i:i + batch], fast=True)
        t0, c0 = time.perf_counter(), time.process_time()
        encoded = [[g.encode("utf-8") for g in st] for st in sets]
        part = MinHash.bulk(encoded, num_perm=num_perm)
        with lsh.insertion_session() as session:
            for k, m in enumerate(part):
                session.insert(i + k, m)
        mhs.extend(part)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        del sets, encoded
    t0, c0 = time.perf_counter(), time.process_time()
    pa_, pb_ = [], []
    for i, m in enumerate(mhs):
        for j in lsh.query(m):
            if j > i:
                pa_.append(i)
                pb_.append(j)
            elif j < i:
                pa_.append(j)
                pb_.append(i)
    wall += time.perf_counter() - t0
    cpu += time.process_time() - c0
    np.savez(out, a=np.array(pa_, np.int64), b=np.array(pb_, np.int64),
             info=np.array(json.dumps({
                 "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                 "script_wall_s": round(time.perf_counter() - s0, 2),
                 "script_cpu_s": round(time.process_time() - sc0, 2), "bands": lsh.b,
                 "rows": lsh.r,
                 "peak_rss_mb": _vm_hwm_mb()})))


def _vm_hwm_mb() -> int:
    """Peak RSS of this process since its exec (VmHWM). Not ru_maxrss: on Linux a
    child inherits its parent's high-water mark at fork, so a process spawned by
    a large benchmark parent would report the parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    return -1


def run_datasketch_process(path: str, num_perm: int, tmp: str) -> tuple[set, dict]:
    import multiprocessing as mp

    out = os.path.join(tmp, "ds.npz")
    proc = mp.get_context("spawn").Process(target=_datasketch_child,
                                           args=(path, num_perm, out))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"datasketch process failed ({proc.exitcode})")
    res = np.load(out)
    pairs = set(zip(res["a"].tolist(), res["b"].tolist(), strict=True))
    return pairs, json.loads(str(res["info"]))


def run_command(path: str, out_dir: str, cpus: int, extra: list[str]) -> dict[str, Any]:
    """``m2l dedup`` as a subprocess, annotated output (the clusters are scored);
    wall from process start to exit, CPU and peak PSS of it and its workers."""
    import subprocess

    exe = os.path.join(os.path.dirname(sys.executable), "m2l")
    stats = os.path.join(out_dir, "stats.json")
    cmd = [exe, "dedup", path, os.path.join(out_dir, "out"), "--text-field", "text",
           "--segmentation", "space", "--ngram", str(NGRAM), "--threshold", str(THRESHOLD),
           "--annotate", "--num-cpus", str(cpus), "--stats-json", stats, *extra]
    import resource

    with ProcessMeter(interval=0.25, skip_root=True) as meter:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # exact CPU of the command and every process it waited for (its pool workers;
    # Ray's own daemons are not its children and are counted by the sampler only)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"m2l dedup failed: {proc.stderr[-3000:]}")
    with open(stats) as fh:
        st = json.load(fh)
    return {"wall_s": round(wall, 2), "cpu_s": round(max(cpu, meter.cpu_used), 2),
            "peak_pss_mb": round(meter.peak / 2**20), "path": st["path"],
            "files": st["files"], "duplicates": st["duplicates"],
            "candidate_edges": st["candidate_edges"], "verified_edges": st["verified_edges"],
            "stage_seconds": st["stage_seconds"], "command_seconds": st["seconds"],
            "first_line": proc.stdout.splitlines()[0]}


def _labels(out_dir: str, ids: list[str]) -> np.ndarray:
    import glob

    files = sorted(glob.glob(os.path.join(out_dir, "out", "part-*.parquet")))
    got = pa.concat_tables([pq.read_table(f, columns=["id", "dedup_cluster"]) for f in files])
    pos = {d: i for i, d in enumerate(ids)}
    labels = np.empty(len(ids), dtype=object)
    labels[[pos[d] for d in got.column("id").to_pylist()]] = \
        got.column("dedup_cluster").to_numpy(zero_copy_only=False)
    return np.unique(labels.astype(str), return_inverse=True)[1]


def command(args: argparse.Namespace) -> dict[str, Any]:
    """Whole-command m2l dedup vs datasketch, with cluster-level quality."""
    params = minhash.lsh_params(THRESHOLD, args.num_perm)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.sizes.split(",")]:
            t0 = time.perf_counter()
            table = make_corpus(n, seed=args.seed)
            path = os.path.join(tmp, f"corpus-{n}.parquet")
            pq.write_table(table, path, row_group_size=20_000)
            texts = table.column("text").to_pylist()
            ids = table.column("id").to_pylist()
            del table
            gen = time.perf_counter() - t0
            t0 = time.perf_counter()
            vals, offs = fingerprint_sets(texts)
            truth = prefix_filter_pairs(vals, offs, THRESHOLD)
            if n <= 20_000:  # the fast truth equals the shingle-string product
                assert truth == exact_pairs(shingle_sets(texts), THRESHOLD)
            del vals, offs, texts
            info: dict[str, Any] = {"docs": n, "true_pairs": len(truth),
                                    "generate_s": round(gen, 1),
                                    "truth_s": round(time.perf_counter() - t0, 1)}
            print(json.dumps(info), flush=True)
            runs = [("m2l", [])]
            if args.with_distributed and n <= args.with_distributed:
                runs.append(("m2l_distributed", ["--distributed"]))
            for name, extra in runs:
                d = os.path.join(tmp, name)
                os.makedirs(d, exist_ok=True)
                r = run_command(path, d, args.cpus, extra)
                r["cluster_pairs"] = metrics(cluster_pairs(_labels(d, ids)), truth)
                info[name] = r
                print(name, json.dumps(r), flush=True)
                subprocess_rm(d)
            if not args.skip_datasketch:
                pairs, ds = run_datasketch_process(path, params.num_perm, tmp)
                ds["pairs"] = metrics(pairs, truth)
                ds["cluster_pairs"] = metrics(
                    cluster_pairs(union_find_labels(n, pairs)), truth)
                info["datasketch"] = ds
                print("datasketch", json.dumps(ds), flush=True)
                info["speedup_wall"] = round(ds["wall_s"] / info["m2l"]["wall_s"], 1)
                info["speedup_cpu"] = round(ds["cpu_s"] / info["m2l"]["cpu_s"], 1)
                info["speedup_wall_script"] = round(
                    ds["script_wall_s"] / info["m2l"]["wall_s"], 1)
            info["loadavg_after"] = [round(x, 1) for x in os.getloadavg()]
            rows.append(info)
            os.remove(path)
    return {"cpus": args.cpus, "num_perm": params.num_perm, "runs": rows}


def subprocess_rm(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("quality", "scale", "command"))
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--num-perm", type=int, default=None)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-datasketch", action="store_true")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--warm-pools", action="store_true",
                   help="keep idle Ray workers alive (see _ray_init)")
    p.add_argument("--with-distributed", type=int, default=0,
                   help="command mode: also time `m2l dedup --distributed` up to this size")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    result = {"quality": quality, "scale": scale, "command": command}[args.mode](args)
    result["warm_pools"] = args.warm_pools
    result["machine"] = {"cpus_visible": os.cpu_count(), "cpu_model": _cpu_model(),
                         "loadavg_at_end": [round(x, 1) for x in os.getloadavg()]}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
