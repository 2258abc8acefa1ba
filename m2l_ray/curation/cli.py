"""``m2l dedup`` and ``m2l langid``: curation of any Parquet or JSONL data set.

    m2l dedup INPUT OUTPUT --text-field text [--threshold 0.8] [--num-perm N]
              [--ngram N] [--annotate] [--distributed] [--local-memory-gb GB]
              [--shard-rows N]
    m2l langid INPUT OUTPUT --text-field text [--model PATH]

``dedup`` drops near-duplicates (with ``--annotate`` it keeps every row and adds
``dedup_cluster``: rows of one cluster share it, plus ``dedup_duplicate``);
``langid`` adds ``lid_label`` (registry code where known), ``lid_score``. Both
print a summary; ``--stats-json`` also writes it as JSON. OUTPUT ending in
.parquet or .jsonl is one file, anything else a folder of Parquet shards of
``--shard-rows`` rows (part-00000.parquet, ...).

``dedup`` runs on one machine without Ray (curation/dedup_local.py) when the input
fits ``--local-memory-gb`` (estimated from file metadata before anything is read),
else, or with ``--distributed``, on Ray Data (curation/dedup/), which scales
across a cluster. Both give the same clusters and keep the same rows; the first line
printed says which path runs and why.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from m2l_ray.curation.config import VERIFY_MODES, CurationConfig
from m2l_ray.curation.io import DEFAULT_SHARD_ROWS
from m2l_ray.errors import ConfigError

_FLAG_OF = {"threshold": "--threshold", "num_perm": "--num-perm", "ngram": "--ngram",
            "char_ngram": "--char-ngram", "bands": "--bands", "rows": "--rows",
            "segmentation": "--segmentation", "verify": "--verify", "model": "--model",
            "family": "--family"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dedup`` and ``langid`` subcommands to the ``m2l`` parser."""
    d = subparsers.add_parser(
        "dedup", help="remove (or mark) near-duplicates in a Parquet/JSONL data set",
        description="MinHash-LSH near-duplicate removal: on this machine when the input "
                    "fits --local-memory-gb, else (or with --distributed) on Ray Data.")
    d.add_argument("input", help="Parquet/JSONL file, folder or glob")
    d.add_argument("output", help="OUTPUT.parquet, OUTPUT.jsonl or a folder")
    d.add_argument("--text-field", required=True,
                   help="column to hash (a string, a list of strings or a conversation)")
    d.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold (0.8)")
    d.add_argument("--num-perm", type=int, default=None,
                   help="permutations (default: derived from the threshold)")
    d.add_argument("--bands", type=int, default=None, help="LSH bands (with --rows)")
    d.add_argument("--rows", type=int, default=None, help="rows per LSH band (with --bands)")
    d.add_argument("--ngram", type=int, default=5, help="word n-gram size (5)")
    d.add_argument("--char-ngram", type=int, default=5,
                   help="character n-gram size for languages without spaces (5)")
    d.add_argument("--segmentation", default="auto",
                   choices=("auto", "space", "char", "registry"),
                   help="word or character n-grams: auto (by script), space, char, or "
                        "registry (by --language-field)")
    d.add_argument("--language-field", default=None, help="column with language codes")
    d.add_argument("--id-field", default=None,
                   help="column whose hash picks the kept row of a cluster "
                        "(default: the whole row)")
    d.add_argument("--verify", default="exact", choices=VERIFY_MODES,
                   help="check candidates by exact Jaccard (default), signature estimate, "
                        "or not at all")
    d.add_argument("--annotate", action="store_true",
                   help="keep every row; add dedup_cluster and dedup_duplicate")
    d.add_argument("--seed", type=int, default=1, help="MinHash permutation seed")
    d.add_argument("--distributed", action="store_true",
                   help="run on Ray Data even when the input fits this machine")
    d.add_argument("--local-memory-gb", type=float, default=None,
                   help="memory the single-node path may use; larger inputs run on Ray "
                        "(default: half of this machine's available memory)")
    d.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS,
                   help=f"rows per Parquet file of a folder output ({DEFAULT_SHARD_ROWS})")
    d.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs to use: worker processes of the single-node path, or a "
                        "local Ray instance's CPUs (default: all)")
    d.add_argument("--stats-json", default=None, help="also write the summary here")
    d.set_defaults(func=dedup_command)

    g = subparsers.add_parser(
        "langid", help="add fastText language labels to a Parquet/JSONL data set",
        description="fastText language ID of one text column.")
    g.add_argument("input", help="Parquet/JSONL file, folder or glob")
    g.add_argument("output", help="OUTPUT.parquet, OUTPUT.jsonl or a folder")
    g.add_argument("--text-field", required=True, help="column to label")
    g.add_argument("--model", default="lid176",
                   help="lid176 (shipped lid.176.ftz), or a path to lid.176.bin / GlotLID")
    g.add_argument("--family", default=None, choices=("lid176", "glotlid"),
                   help="label family of --model (default: from its file name)")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance")
    g.add_argument("--stats-json", default=None, help="also write the summary here")
    g.set_defaults(func=langid_command)


def _ray(num_cpus: int | None) -> None:
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
        if not os.environ.get("RAY_ADDRESS"):
            # a local instance, never a stray `ray start` cluster on the same machine
            kwargs["address"] = "local"
            if num_cpus:
                kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)


def _config(section: str, values: dict[str, Any]) -> CurationConfig:
    try:
        return CurationConfig.from_dict({section: values}, source=f"m2l {section}")
    except ConfigError as e:
        name = e.key.rsplit(".", 1)[-1]
        raise ConfigError(_FLAG_OF.get(name, e.key), e.problem) from None


def _check_column(ds: Any, name: str, flag: str) -> None:
    schema = ds.schema if isinstance(ds, pa.Table) else ds.schema()
    names = schema.names if schema is not None else []
    if name not in names:
        raise ConfigError(flag, f"no column '{name}' in the input; columns: {', '.join(names)}")


def _emit(summary: dict[str, Any], path: str | None) -> None:
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        print(f"{k:<{width}}  {v if not isinstance(v, dict) else json.dumps(v)}")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, ensure_ascii=False)


#: Single-node memory: the interpreter and libraries, then per byte of decoded input
#: (the table, the texts of the chunks in flight, the output's copy) and per row
#: (node, band keys and the shingles kept for verification, ~100 per document, and
#: their copies on the way back from the workers). Fitted to the peak PSS of the
#: measured runs (benchmarks/README_dedup.md: 0.54 GB at 100K rows / 69 MB,
#: 3.0 GB at 1M rows / 685 MB; this gives 0.61 and 3.4 GB).
LOCAL_BASE_BYTES = 300 * 2**20
LOCAL_BYTES_PER_INPUT_BYTE = 2.5
LOCAL_BYTES_PER_ROW = 1400
_JSONL_BYTES_PER_ROW = 500  # row count guess for JSONL, whose footer gives none


def local_memory_need(rows: int | None, memory_bytes: int) -> float:
    """Bytes the single-node path is expected to need for an input of this size."""
    n = rows if rows is not None else memory_bytes // _JSONL_BYTES_PER_ROW
    return (LOCAL_BASE_BYTES + LOCAL_BYTES_PER_INPUT_BYTE * memory_bytes
            + LOCAL_BYTES_PER_ROW * n)


def _available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_path(args: argparse.Namespace) -> tuple[str, str]:
    """("local" | "distributed", why), from the flags and the input's metadata."""
    from m2l_ray.curation.io import estimate_input

    if args.distributed:
        return "distributed", "--distributed"
    size = estimate_input(args.input)
    budget_gb = (args.local_memory_gb if args.local_memory_gb is not None
                 else _available_memory() / 2 / 2**30)
    need_gb = local_memory_need(size.rows, size.memory_bytes) / 2**30
    rows = f"{size.rows:,} rows" if size.rows is not None else f"{size.files} JSONL file(s)"
    what = (f"{rows}, {size.memory_bytes / 2**20:,.0f} MB decoded: needs about "
            f"{need_gb:.2f} GB")
    flag = "--local-memory-gb" if args.local_memory_gb is not None else \
        "half the available memory; --local-memory-gb"
    if need_gb <= budget_gb:
        return "local", f"{what}, within {budget_gb:.1f} GB ({flag})"
    return "distributed", f"{what}, more than {budget_gb:.1f} GB ({flag})"


def dedup_command(args: argparse.Namespace) -> int:
    """``m2l dedup``: returns the exit code."""
    from m2l_ray.curation.io import write_output

    cfg = _config("dedup", {
        "field": args.text_field, "threshold": args.threshold, "num_perm": args.num_perm,
        "bands": args.bands, "rows": args.rows, "ngram": args.ngram,
        "char_ngram": args.char_ngram, "segmentation": args.segmentation,
        "verify": args.verify, "key_field": args.id_field, "seed": args.seed,
    }).dedup
    if args.shard_rows < 1:
        raise ConfigError("--shard-rows", f"must be at least 1, not {args.shard_rows}")
    registry = None
    if args.segmentation == "registry":
        if not args.language_field:
            raise ConfigError("--language-field", "is needed with --segmentation registry")
        from m2l_ray.languages import LanguageRegistry

        registry = LanguageRegistry.load()
    start = time.monotonic()
    path, why = choose_path(args)
    print(f"m2l dedup: {path} path ({why})", flush=True)
    if path == "local":
        from m2l_ray.curation import kernel

        kernel.warm_up()  # numba loads its cache while this thread imports and reads
    kwargs = {"column": args.text_field, "registry": registry,
              "language_field": args.language_field, "key_field": args.id_field}
    if path == "local":
        from m2l_ray.curation.dedup_local import dedup_table
        from m2l_ray.curation.io import read_table_local

        data: Any = read_table_local(args.input)
        _check_columns(data, args)
        res = dedup_table(data, cfg, workers=args.num_cpus, **kwargs)
        out: Any = res.annotated() if args.annotate else res.kept()
        del data
    else:
        from m2l_ray.curation.dedup import DUPLICATE, dedup
        from m2l_ray.curation.io import read_table_any

        _ray(args.num_cpus)
        data = read_table_any(args.input)
        _check_columns(data, args)
        res = dedup(data, cfg, **kwargs)
        out = res.ds
        if not args.annotate:
            out = out.map_batches(_drop_duplicates, batch_format="pyarrow",
                                  fn_kwargs={"column": DUPLICATE})
    files = write_output(out, args.output, args.shard_rows)
    st = res.stats
    summary = {
        "input": args.input,
        "output": args.output,
        "path": path,
        "path_reason": why,
        "rows_in": st["rows"],
        "duplicates": st.get("duplicates", 0),
        "rows_out": st["rows"] if args.annotate else st["rows"] - st.get("duplicates", 0),
        "clusters_with_duplicates": st.get("clusters"),
        "exact_duplicates": st.get("exact_duplicates", 0),
        "candidate_edges": st.get("candidate_edges"),
        "verified_edges": st.get("verified_edges"),
        "components": st.get("components"),
        "lsh": st.get("lsh"),
        "verify": cfg.verify,
        "mode": "annotate" if args.annotate else "drop",
        "files": len(files),
        "stage_seconds": st.get("seconds"),
        "seconds": round(time.monotonic() - start, 2),
    }
    _emit(summary, args.stats_json)
    return 0


def _check_columns(data: Any, args: argparse.Namespace) -> None:
    _check_column(data, args.text_field, "--text-field")
    for flag, col in (("--id-field", args.id_field), ("--language-field", args.language_field)):
        if col:
            _check_column(data, col, flag)


def _drop_duplicates(batch: Any, column: str) -> pa.Table:
    import pyarrow.compute as pc

    keep = pc.invert(batch.column(column))
    return batch.filter(keep).drop_columns([column, "dedup_cluster"])


def _label_batch(batch: Any, column: str, model_path: str, label_codes: dict[str, str]
                 ) -> pa.Table:
    from m2l_ray.curation.langid import LABEL_PREFIX, load_model
    from m2l_ray.curation.textnorm import field_text, for_lid

    t = batch if isinstance(batch, pa.Table) else pa.table(batch)
    model = load_model(model_path)
    labels, scores = [], []
    for v in t.column(column).to_pylist():
        preds = model.predict(for_lid(field_text(v, "conversation")), 1)
        if preds:
            lab, p = preds[0]
            labels.append(label_codes.get(lab, lab.removeprefix(LABEL_PREFIX)))
            scores.append(p)
        else:
            labels.append(None)
            scores.append(None)
    for name in ("lid_label", "lid_score"):
        if name in t.column_names:
            t = t.drop_columns([name])
    return (t.append_column("lid_label", pa.array(labels, pa.string()))
            .append_column("lid_score", pa.array(scores, pa.float32())))


def langid_command(args: argparse.Namespace) -> int:
    """``m2l langid``: returns the exit code."""
    from m2l_ray.curation import langid
    from m2l_ray.curation.io import read_table_any, write_output
    from m2l_ray.languages import LanguageRegistry

    lid = _config("lid", {"model": args.model, "family": args.family}).lid
    family = lid.resolved_family()
    registry = LanguageRegistry.load()
    label_codes = langid.label_codes(registry, family)
    start = time.monotonic()
    _ray(args.num_cpus)
    import ray

    # rows come out in input order: a labelled copy of a file lines up with the file
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = read_table_any(args.input)
    _check_column(ds, args.text_field, "--text-field")
    out = ds.map_batches(_label_batch, batch_format="pyarrow",
                         fn_kwargs={"column": args.text_field, "model_path": lid.model_path(),
                                    "label_codes": label_codes}).materialize()
    files = write_output(out, args.output)
    counts: Counter[str] = Counter()
    score_sum: dict[str, float] = {}
    rows = 0
    for batch in out.select_columns(["lid_label", "lid_score"]).iter_batches(
            batch_size=None, batch_format="pyarrow"):
        labs = batch.column("lid_label").to_pylist()
        sc = np.asarray(batch.column("lid_score").to_numpy(zero_copy_only=False), float)
        rows += len(labs)
        for lab, s in zip(labs, sc, strict=True):
            key = lab or "(empty)"
            counts[key] += 1
            score_sum[key] = score_sum.get(key, 0.0) + (0.0 if np.isnan(s) else float(s))
    top = {k: {"rows": n, "mean_score": round(score_sum[k] / n, 3)}
           for k, n in counts.most_common(15)}
    summary = {
        "input": args.input,
        "output": args.output,
        "rows": rows,
        "model": args.model,
        "family": family,
        "languages": len(counts),
        "top_labels": top,
        "files": len(files),
        "seconds": round(time.monotonic() - start, 2),
    }
    _emit(summary, args.stats_json)
    return 0
