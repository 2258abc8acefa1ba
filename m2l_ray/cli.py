"""The ``m2l`` command.

``m2l run`` runs or resumes a job; ``m2l validate`` checks a config and prints the
plan (starting Ray only to read a large seed pool); ``m2l dedup`` / ``m2l langid`` curate any dataset;
``m2l s3-server`` starts a local S3-compatible server; ``m2l prepare-model``
converts the local default model once. User errors print one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from m2l_ray.errors import M2LError


def _run(args: argparse.Namespace) -> int:
    from m2l_ray.config import load_config
    from m2l_ray.runner import RunOptions, run

    cfg = load_config(args.config, args.set or ())
    if args.ray_progress:
        import os

        from m2l_ray.ray_session import RAY_PROGRESS_ENV

        os.environ[RAY_PROGRESS_ENV] = "1"
    run(cfg, RunOptions(ray_address=args.address, force_lock=args.force_lock, restart=args.restart))
    return 0


def _validate(args: argparse.Namespace) -> int:
    """The run's own reading, selection and planning (``Runner.plan``): what a run would
    make. No Ray for a small pool; a large one is read on Ray Data (``seeds.intake``), and
    the output says which path was taken, why, and how long it took."""
    from m2l_ray.config import load_config
    from m2l_ray.runner import Runner, RunOptions

    cfg = load_config(args.config, args.set or ())
    report = Runner(cfg, RunOptions(ray_address=args.address)).validate()
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def _prepare_model(args: argparse.Namespace) -> int:
    from m2l_ray.devtools.model import ensure_local_model

    print(ensure_local_model())
    return 0


def _s3_server(args: argparse.Namespace) -> int:
    from m2l_ray.devtools.s3server import serve

    return serve(args) or 0


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one ``m2l: error:`` line and exit 2, like every other user error
    (argparse's own usage dump buries the line that says what is wrong)."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("m2l").strip()
        print(f"m2l: error: {where + ': ' if where else ''}{message} (see {self.prog} --help)",
              file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="m2l", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run or resume a synthesis job")
    r.add_argument("--config", required=True, help="job config YAML")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. engine.sampling.max_tokens=256")
    r.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    r.add_argument("--force-lock", action="store_true",
                   help="take over the output lock of a run that is known to be dead")
    r.add_argument("--restart", action="store_true",
                   help="discard this output's unfinished raw units (made with another config) first")
    r.add_argument("--ray-progress", action="store_true",
                   help="also show Ray Data's own per-operator progress (or set M2L_RAY_PROGRESS=1)")
    r.set_defaults(func=_run)

    v = sub.add_parser("validate", help="check a config and print the plan (Ray only for a large seed pool)")
    v.add_argument("--config", required=True)
    v.add_argument("--set", action="append", metavar="KEY=VALUE")
    v.add_argument("--address", default=None,
                   help="Ray address for a large seed pool (default: RAY_ADDRESS or local)")
    v.set_defaults(func=_validate)

    m = sub.add_parser("prepare-model", help="convert the local default model once")
    m.set_defaults(func=_prepare_model)

    s = sub.add_parser("s3-server", help="start a local S3-compatible server (SeaweedFS)",
                       description="Run a local S3-compatible server (SeaweedFS) for m2l-ray.")
    from m2l_ray.devtools.s3server import add_arguments as s3_arguments

    s3_arguments(s)
    s.set_defaults(func=_s3_server)

    from m2l_ray.curation.cli import register

    register(sub)
    from m2l_ray import report, show

    report.register(sub)
    show.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("botocore", "boto3", "s3transfer"):  # "Found credentials in ...": not news
        logging.getLogger(chatty).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except M2LError as e:
        from m2l_ray.io import redact

        print(f"m2l: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("m2l: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
