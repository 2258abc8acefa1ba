"""Entry points: build and write ``report.html`` of an output, and ``m2l report``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from m2l_ray.layout import REPORT_KEY
from m2l_ray.report.gather import gather
from m2l_ray.report.html import render
from m2l_ray.report.plots import make_plots


def build_report(store: Any, manifest: Mapping[str, Any] | None = None,
                 stats: Mapping[str, Any] | None = None) -> str:
    """The page of an output, as text."""
    data = gather(store, manifest, stats)
    return render(data, make_plots(data))


def write_report(store: Any, manifest: Mapping[str, Any] | None = None,
                 stats: Mapping[str, Any] | None = None) -> str:
    """Write ``report.html`` beside the output; returns its URI."""
    store.put_bytes(REPORT_KEY, build_report(store, manifest, stats).encode("utf-8"))
    return store.key_uri(REPORT_KEY)


def open_output(uri: str, endpoint_url: str | None = None, path_style: bool = False) -> Any:
    """The store of an output named on the command line (s3 settings from flags or env)."""
    from m2l_ray.io import StorageOptions, Store

    return Store.open(uri, StorageOptions(endpoint_url=endpoint_url, path_style=path_style))


def add_storage_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", metavar="OUTPUT", help="output folder or s3://bucket/prefix of a finished run")
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint (default: M2L_S3_ENDPOINT / AWS_ENDPOINT_URL*)")
    p.add_argument("--path-style", action="store_true", help="path-style S3 addressing (SeaweedFS, MinIO)")


def _report_command(args: argparse.Namespace) -> int:
    store = open_output(args.output, args.endpoint_url, args.path_style)
    print(write_report(store))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``m2l report`` to the ``m2l`` parser."""
    p = sub.add_parser("report", help="(re)write report.html of a finished output",
                       description="Write report.html (funnel per language, failures, LID, balance, "
                                   "samples) beside a finished output, local or s3://.")
    add_storage_arguments(p)
    p.set_defaults(func=_report_command)
