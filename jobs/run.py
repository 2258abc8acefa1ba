"""Entrypoint of an m2l-ray job on a Ray cluster.

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env jobs/runtime_env.yaml -- python jobs/run.py --config jobs/m2lingual.yaml

Arguments are those of ``m2l run`` (``--config``, ``--set key=value``, ``--force-lock``).
The driver finds the cluster through RAY_ADDRESS, which Ray sets for submitted jobs.

Why a file and not ``m2l run``: the entrypoint of a job must exist in the uploaded
working dir whether or not the package is installed on the head node; vLLM starts
its engine in a spawned process, which re-imports the entry module, so the work
sits under an ``if __name__ == "__main__":`` guard; and ``ray job stop`` sends
SIGTERM and, 3 s later, SIGKILL, so SIGTERM is turned into the same clean stop as
Ctrl-C: the run releases its output lock, says so, and a resubmission resumes.
``ray.init`` installs its own SIGTERM handler, so in a submitted job (RAY_ADDRESS
set) the driver connects first and installs ours after it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _check_config(argv: Sequence[str]) -> bool:
    """Whether the config loads; warns about a relative local output.uri, which in a
    submitted job lands in Ray's copy of the working dir on the head node (deleted
    later): better said before hours of generation than after."""
    import argparse

    from m2l_ray.config import load_config
    from m2l_ray.errors import M2LError

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config")
    p.add_argument("--set", action="append")
    args, _ = p.parse_known_args(list(argv))
    if not args.config:
        return False
    try:
        uri = load_config(args.config, args.set or ()).output.uri
    except M2LError:
        return False  # `m2l run` reports it properly
    if "://" not in uri and not Path(uri).expanduser().is_absolute():
        print(f"[m2l] warning: output.uri '{uri}' is relative; this run writes to "
              f"{Path(uri).absolute()}. In a submitted job that is Ray's temporary copy of "
              "the working dir: set output.uri to an absolute path or s3://",
              file=sys.stderr, flush=True)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    if str(ROOT) not in sys.path:  # the working dir, when the package isn't installed
        sys.path.insert(0, str(ROOT))
    from m2l_ray.cli import main as m2l_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if _check_config(argv) and os.environ.get("RAY_ADDRESS"):
        from m2l_ray.ray_session import ray_init

        ray_init()  # the run reuses this connection
    signal.signal(signal.SIGTERM, _stop)
    return m2l_main(["run", *argv])


if __name__ == "__main__":
    sys.exit(main())
