"""``report.html``: one self-contained page that shows where each language lost its rows.

stats.json has the counts, but a reviewer asking "why is Swahili thin?" needs to see
the path of every language from seed to kept row, which step failed, what the filters
removed, and a few conversations to read. The page is built from what the output folder
holds (stats.json, manifest.json, raw/, the three configs, quarantine/), through
``Store``, so a report can be rebuilt later from a local folder or an s3:// prefix
(``m2l report OUTPUT``) and not only at the end of ``m2l run``.

One module per step, so the card (card.py) and the tests use the numbers without the
page: ``data`` (what the page shows, and what stats.json alone gives), ``gather``
(reading an output into ``ReportData``), ``plots`` (matplotlib PNGs), ``html``
(rendering) and ``cli`` (``write_report`` and ``m2l report``). The page has no script
and no external resource, so it opens offline and renders the same everywhere.
"""

from m2l_ray.report.cli import add_storage_arguments, build_report, open_output, register, write_report
from m2l_ray.report.data import (
    RESOURCE_ORDER,
    STAGES,
    ReportData,
    Sample,
    drops_per_language,
    funnel,
    reason_order,
)
from m2l_ray.report.gather import gather, read_columns

__all__ = [
    "RESOURCE_ORDER", "STAGES", "ReportData",
    "Sample", "add_storage_arguments", "build_report", "drops_per_language", "funnel", "gather",
    "open_output", "read_columns", "reason_order", "register", "write_report",
]
