"""Benchmark: seed intake at Aya scale, today's in-memory reader vs Ray Data (issue 14).

Not a test: minutes per size, numbers depend on the machine. In one run, per pool size
and format, it:

1. generates an Aya-Dataset-shaped pool (``inputs, targets, language, language_code,
   annotation_type, user_id``; 65 languages; ~1% exact duplicate seeds; in JSONL
   also ~0.1% broken lines) as HF-style shards of ``--shard-rows`` rows, in a temp
   dir (nothing is downloaded);
2. runs ``m2l validate`` on it in a fresh subprocess per measurement: the in-memory
   reader (``seeds.distributed_min_mb`` huge: ``read_seeds`` + ``plan.select``, what
   every pool went through before) and the Ray Data path (``distributed_min_mb=0``)
   on a local Ray of each ``--cpus``;
3. records wall seconds of the subprocess (interpreter start to exit, Ray start-up
   included), the intake's own seconds, and the **driver's** peak memory (VmHWM of
   the validate process from /proc/self/status: Ray's workers, raylet and object
   store are other processes and are not counted, which is the point: the driver must
   not hold the pool), and whether the two paths gave the same selection.

    python benchmarks/seed_intake_bench.py --sizes 1000000,10000000 --json seed_intake.json
    python benchmarks/seed_intake_bench.py --sizes 100000 --formats jsonl   # a quick check

``--memory-max-rows`` skips the in-memory reader above that pool size (at 10M rows it
needs ~14 GB and minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
PY = sys.executable


def _languages() -> list[tuple[str, str]]:
    """65 of the paper's languages: (Aya's ISO 639-3 code, English name)."""
    from m2l_ray.languages import LanguageRegistry

    langs = [lang for lang in LanguageRegistry.load() if lang.in_paper and lang.iso639_3]
    return [(lang.iso639_3, lang.name) for lang in langs][:65]


def generate(root: Path, rows: int, fmt: str, shard_rows: int, seed: int = 0) -> Path:
    """An Aya-Dataset-shaped pool of ``rows`` rows in shards; ~300 bytes a row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = root / f"aya-{fmt}-{rows}"
    if out.is_dir():
        return out
    tmp = root / f".tmp-{fmt}-{rows}"
    tmp.mkdir(parents=True, exist_ok=True)
    langs = _languages()
    rng = random.Random(seed)
    words = "the of a to in is and that for it as was with on by at be this from which or have an".split()
    n_shards = max(1, -(-rows // shard_rows))
    for shard in range(n_shards):
        lo, hi = shard * shard_rows, min(rows, (shard + 1) * shard_rows)
        recs = []
        for i in range(lo, hi):
            j = rng.randrange(max(1, i)) if i and rng.random() < 0.01 else i  # ~1% copies of earlier rows
            r = random.Random(j)
            code, name = langs[j % len(langs)]
            text = " ".join(r.choice(words) for _ in range(22))
            recs.append({"inputs": f"Question {j}: {text}?", "targets": f"Answer {j}: {text}",
                         "language": name, "language_code": code,
                         "annotation_type": "original-annotations", "user_id": f"{r.getrandbits(64):016x}"})
        name = f"train-{shard:05d}-of-{n_shards:05d}"
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(recs), tmp / f"{name}.parquet", row_group_size=50_000)
        else:
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for k, rec in enumerate(recs):
                    f.write("{broken line\n" if k % 1000 == 999 else json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.rename(out)
    return out


def _job(pool: Path, fmt: str, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({
        "job": {"name": "seed-intake-bench", "seed": 1},
        "seeds": {"sources": [{"path": str(pool), "shape": "aya_dataset", "format": fmt}], "per_group_cap": 200},
        "output": {"uri": str(path.parent / "out")},
        # lid.176 can't identify a few of the 65 languages: validate would stop on them
        "curation": {"lid": {"unsupported_policy": "script_only"}},
    }))
    return path


def measure(job: Path, mode: str, cpus: int) -> dict[str, Any]:
    """One ``m2l validate`` in a fresh process; its wall time and its own peak memory."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    t0 = time.monotonic()
    proc = subprocess.run([PY, str(HERE), "_validate", str(job), mode, str(cpus)], env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        return {"mode": mode, "cpus": cpus, "error": proc.stderr[-2000:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"mode": mode, "cpus": cpus, "wall_seconds": round(wall, 1), **out}


def _validate(job: str, mode: str, cpus: int) -> None:
    """Inside the measured process: ``m2l validate`` (the same code as the command), on a
    local Ray of ``cpus`` CPUs for the distributed path; prints one JSON line."""
    threshold = "1000000000" if mode == "memory" else "0"
    if mode == "distributed":
        import ray

        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    from m2l_ray.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["validate", "--config", job, "--set", f"seeds.distributed_min_mb={threshold}"])
    if rc != 0:
        sys.exit(rc)
    v = json.loads(buf.getvalue())
    status = Path("/proc/self/status").read_text()
    hwm_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    print(json.dumps({
        "driver_peak_mb": round(hwm_kb / 1024, 1), "intake_seconds": v["intake"]["seconds"],
        "validate_seconds": v["seconds"], "rows": v["seeds_read"], "usable": v["seeds_usable"],
        "quarantined": v["quarantined"], "selected": v["selected"], "path": v["intake"]["path"],
        "selection_digest": v["selection_digest"],
        "groups_digest": hashlib.sha256(json.dumps(v["groups"], sort_keys=True).encode()).hexdigest()[:16],
    }))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_validate":
        _validate(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="pool rows, comma-separated")
    ap.add_argument("--formats", default="jsonl,parquet")
    ap.add_argument("--cpus", default="1,2", help="local Ray CPUs for the distributed path")
    ap.add_argument("--shard-rows", type=int, default=250_000, help="rows per generated shard")
    ap.add_argument("--memory-max-rows", type=int, default=10**12,
                    help="skip the in-memory reader above this pool size")
    ap.add_argument("--workdir", default=None, help="where pools are generated (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    cpus = [int(x) for x in args.cpus.split(",")]
    results: list[dict[str, Any]] = []
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seed-intake-bench-", dir=args.workdir) as tmp:
        root = Path(tmp)
        for fmt in args.formats.split(","):
            for rows in sizes:
                t0 = time.monotonic()
                pool = generate(root, rows, fmt, args.shard_rows)
                size_mb = sum(f.stat().st_size for f in pool.iterdir()) / 1e6
                print(f"[bench] {fmt} {rows} rows: {size_mb:.0f} MB in {len(list(pool.iterdir()))} shards, "
                      f"generated in {time.monotonic() - t0:.0f}s", flush=True)
                job = _job(pool, fmt, root / f"job-{fmt}-{rows}.yaml")
                runs = [("distributed", c) for c in cpus]
                if rows <= args.memory_max_rows:
                    runs.insert(0, ("memory", 0))
                for mode, c in runs:
                    r = {"format": fmt, "rows": rows, "input_mb": round(size_mb, 1), **measure(job, mode, c)}
                    results.append(r)
                    print(json.dumps(r), flush=True)
                same = {r["selection_digest"] for r in results
                        if r["format"] == fmt and r["rows"] == rows and "selection_digest" in r}
                print(f"[bench] {fmt} {rows}: same selection on every path: {len(same) == 1}", flush=True)
                for r in results:
                    if r["format"] == fmt and r["rows"] == rows:
                        r["same_selection"] = len(same) == 1
                for f in pool.iterdir():  # the next size needs the disk more than this one
                    f.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
