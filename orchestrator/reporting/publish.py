"""Publishing a report: the HTML file written and logged, with each measured ``contributions.json``, to MLflow."""

from __future__ import annotations

import re
from pathlib import Path

from ..tracking import Tracker
from .data import CONTRIBUTIONS_ARTIFACT, ReportData
from .render import build_html

REPORT_ARTIFACT_DIR = "reports"


def slug(target: str) -> str:
    """A file name from a job id or experiment name: ``lesa/coco/detection`` -> ``lesa-coco-detection``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", target).strip("-.") or "report"


def publish(tracker: Tracker, data: ReportData, out_path: Path) -> str:
    """Writes the HTML, logs it to run ``data.logged_to`` (and each measured ``contributions.json``);
    returns the report's artifact URI (empty when there was no run to log it to)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(build_html(data), encoding="utf-8")
    for measured in data.contributions:
        if measured.layers:
            tracker.log_dict(measured.run_id, measured.to_json(), CONTRIBUTIONS_ARTIFACT)
    if not data.logged_to:
        return ""
    return tracker.log_artifact(data.logged_to, str(out_path), REPORT_ARTIFACT_DIR)
