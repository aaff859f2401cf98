"""The saved MLflow views: every filter and sort runs against a real SQLite store and picks the expected runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from mlflow import MlflowClient

from lesa_core.metrics.names import REPORTED_METRICS
from orchestrator.redaction import flatten_params
from orchestrator.spec import parse_spec
from orchestrator.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]
_loader = importlib.util.spec_from_file_location("show_views", REPO / "dashboards" / "mlflow" / "show_views.py")
show_views = importlib.util.module_from_spec(_loader)
_loader.loader.exec_module(show_views)

# job id -> (job file, arch, primary metric value, final status)
JOBS = {
    "det-lesa": ("quickstart_coco", "test_lesa_resnet", 0.42, "FINISHED"),
    "det-sa": ("quickstart_coco", "sa_resnet50", 0.36, "FINISHED"),
    "det-conv": ("quickstart_coco", "conv_resnet50_s16", 0.38, "FAILED"),
    "cls-lesa": ("quickstart_imagenet", "lesa_resnet50", 0.71, "FINISHED"),
    "cls-resnet": ("quickstart_imagenet", "resnet50", 0.69, "FINISHED"),
}
EXPECTED = {  # view -> job ids in the view's order
    "detection": ["det-lesa", "det-conv", "det-sa"],
    "detection-lesa": ["det-lesa"],
    "detection-sa": ["det-sa"],
    "detection-conv": ["det-conv"],
    "classification": ["cls-lesa", "cls-resnet"],
    "classification-lesa": ["cls-lesa"],
    "classification-sa": [],
    "classification-conv": [],
    "classification-resnet": ["cls-resnet"],
    "lesa_resnet50": ["cls-lesa"],
    "failed": ["det-conv"],
}


def _spec(job_file: str, arch: str):
    raw = yaml.safe_load((REPO / "jobs" / f"{job_file}.yaml").read_text())
    # the views filter on what a run logged; a plain timm ResNet is not a model lesa-orch trains, so its spec is
    # taken as already checked (schema only) to stand for a baseline run logged beside lesa-orch's
    return parse_spec(raw, source=job_file, overrides=[f"model.arch={arch}", "data.root=/data"],
                      checked=arch.startswith("resnet"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite tracking store with the jobs' runs (tags, params, spec as lesa-orch logs them) and a foreign run."""
    root = tmp_path_factory.mktemp("views")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    tracker = Tracker(uri)
    for job_id, (job_file, arch, value, status) in JOBS.items():
        spec = _spec(job_file, arch)
        if client.get_experiment_by_name(spec.experiment_name) is None:
            client.create_experiment(spec.experiment_name, artifact_location=str(root / spec.experiment_name))
        run_id = tracker.start_job_run(spec, job_id, submission_id=job_id)
        metric = "coco/bbox_mAP" if spec.task == "detection" else "val/acc1"
        tracker.log_metrics(run_id, {metric: value, "train/loss": 1.0 - value, "epoch": 3.0}, step=3)
        tracker.end_run(run_id, status)
    other = client.create_experiment("someone-else", artifact_location=str(root / "other"))
    client.set_tag(client.create_run(other).info.run_id, "lesa.task", "detection")  # outside `experiments`
    return tracker, uri


def test_views_file_is_consistent():
    config = show_views.load_views()
    assert [view["name"] for view in config["views"]] == list(EXPECTED)
    params = set(flatten_params(_spec("quickstart_coco", "test_lesa_resnet"))) | set(
        flatten_params(_spec("quickstart_imagenet", "test_lesa_resnet")))
    metrics = {metric for names in REPORTED_METRICS.values() for metric in names} | {"train/lr", "epoch"}
    for entry in [*config["views"], *config["charts"]]:
        columns = entry.get("columns", entry)
        assert set(columns.get("params", [])) <= params, entry
        named = [*columns.get("metrics", []), *([entry["metric"]] if "metric" in entry else [])]
        assert set(named) <= metrics, entry


def test_every_view_runs_and_selects_its_runs(store):
    tracker, _ = store
    config = show_views.load_views()
    experiments = tracker.experiment_ids(config["experiments"])
    assert len(experiments) == 2  # the lesa/ experiments only
    for view in config["views"]:
        runs = show_views.search(tracker, view, experiments)
        assert [run.data.tags["lesa.job_id"] for run in runs] == EXPECTED[view["name"]], view["name"]
        for run in runs:
            cells = show_views.row(run, show_views.column_names(view))
            assert cells[0] == run.data.tags["lesa.job_id"]
            assert len(cells) == 1 + len(show_views.column_names(view))


def test_links_carry_filter_and_sort():
    view = {"filter": "tags.lesa.task = 'detection'", "order_by": ["metrics.`coco/bbox_mAP` DESC"]}
    link = show_views.ui_link(Tracker("http://127.0.0.1:5000/"), "7", view)
    url = urlsplit(link)
    assert url.fragment.startswith("/experiments/7?")
    query = parse_qs(url.fragment.split("?", 1)[1])
    assert query == {"searchFilter": [view["filter"]], "orderByKey": ["metrics.`coco/bbox_mAP`"],
                     "orderByAsc": ["false"], "compareRunsMode": ["TABLE"]}
    assert show_views.ui_link(Tracker("sqlite:///m.db"), "7", view) == ""


def test_script_prints_the_views(store, capsys, monkeypatch):
    _, uri = store
    monkeypatch.setenv("COLUMNS", "300")
    show_views.main(["--tracking-uri", uri, "--view", "detection", "--view", "failed"])
    printed = capsys.readouterr().out
    assert "detection: Detection runs, best box AP first" in printed and "failed: Failed jobs" in printed
    assert "classification" not in printed
    assert all(job_id in printed for job_id in ("det-lesa", "det-sa", "det-conv"))
