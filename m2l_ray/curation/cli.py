"""``m2l dedup`` and ``m2l langid``: curation of any Parquet or JSONL data set.

    m2l dedup INPUT OUTPUT --text-field text [--threshold 0.8] [--num-perm N]
              [--ngram N] [--annotate]
    m2l langid INPUT OUTPUT --text-field text [--model PATH]

``dedup`` drops near-duplicates (with ``--annotate`` it keeps every row and adds
``dedup_cluster``: rows of one cluster share it, plus ``dedup_duplicate``);
``langid`` adds ``lid_label`` (registry code where known), ``lid_score``. Both
print a summary; ``--stats-json`` also writes it as JSON. OUTPUT ending in
.parquet or .jsonl is one file, anything else a folder of Parquet files.
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
from m2l_ray.errors import ConfigError

_FLAG_OF = {"threshold": "--threshold", "num_perm": "--num-perm", "ngram": "--ngram",
            "char_ngram": "--char-ngram", "bands": "--bands", "rows": "--rows",
            "segmentation": "--segmentation", "verify": "--verify", "model": "--model",
            "family": "--family"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dedup`` and ``langid`` subcommands to the ``m2l`` parser."""
    d = subparsers.add_parser(
        "dedup", help="remove (or mark) near-duplicates in a Parquet/JSONL data set",
        description="MinHash-LSH near-duplicate removal on Ray Data.")
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
    d.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance")
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
    schema = ds.schema()
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


def dedup_command(args: argparse.Namespace) -> int:
    """``m2l dedup``: returns the exit code."""
    from m2l_ray.curation.dedup import DUPLICATE, dedup
    from m2l_ray.curation.io import read_table_any, write_output

    cfg = _config("dedup", {
        "field": args.text_field, "threshold": args.threshold, "num_perm": args.num_perm,
        "bands": args.bands, "rows": args.rows, "ngram": args.ngram,
        "char_ngram": args.char_ngram, "segmentation": args.segmentation,
        "verify": args.verify, "key_field": args.id_field, "seed": args.seed,
    }).dedup
    registry = None
    if args.segmentation == "registry":
        if not args.language_field:
            raise ConfigError("--language-field", "is needed with --segmentation registry")
        from m2l_ray.languages import LanguageRegistry

        registry = LanguageRegistry.load()
    start = time.monotonic()
    _ray(args.num_cpus)
    ds = read_table_any(args.input)
    _check_column(ds, args.text_field, "--text-field")
    for flag, col in (("--id-field", args.id_field), ("--language-field", args.language_field)):
        if col:
            _check_column(ds, col, flag)
    res = dedup(ds, cfg, column=args.text_field, registry=registry,
                language_field=args.language_field, key_field=args.id_field)
    out = res.ds
    if not args.annotate:
        out = out.map_batches(_drop_duplicates, batch_format="pyarrow",
                              fn_kwargs={"column": DUPLICATE})
    files = write_output(out, args.output)
    st = res.stats
    summary = {
        "input": args.input,
        "output": args.output,
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
        "seconds": round(time.monotonic() - start, 2),
    }
    _emit(summary, args.stats_json)
    return 0


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
