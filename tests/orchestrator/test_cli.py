import json
import shutil
import subprocess

from rich.console import Console
from typer.testing import CliRunner

from orchestrator.cli import _job_table, app
from orchestrator.store import JobStore, make_engine, upgrade

runner = CliRunner()


def test_models_lists_every_registered_model_as_json():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    models = {entry["name"]: entry for entry in json.loads(result.output)}
    assert set(models) == {"lesa_resnet50", "lesa_resnet101", "lesa_wrn50", "sa_resnet50",
                           "conv_resnet50_s16", "test_lesa_resnet"}
    assert models["conv_resnet50_s16"]["params"] == 25_557_032
    assert models["lesa_resnet50"]["input_size"] == [3, 224, 224]


def test_models_filter_and_table():
    result = runner.invoke(app, ["models", "wrn"])
    assert result.exit_code == 0, result.output
    assert "lesa_wrn50" in result.output and "lesa_resnet50" not in result.output


def test_models_with_no_match_exits_non_zero():
    result = runner.invoke(app, ["models", "vit"])
    assert result.exit_code == 1
    assert "no registered LESA model matches 'vit'" in result.output


def test_console_script_is_installed():
    executable = shutil.which("lesa-orch") or ".venv/bin/lesa-orch"
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True)
    assert "models" in result.stdout


def test_job_table_keeps_ids_whole_in_an_80_column_terminal(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    upgrade(engine)
    store = JobStore(engine)
    job_id = "quickstart-tune-20261125-102525-b011"
    store.create(job_id, name="quickstart-tune", task="classification", spec={})
    console = Console(width=80, record=True)
    console.print(_job_table(store.list()))
    lines = console.export_text().splitlines()
    assert any(job_id in line and "PENDING" in line for line in lines)
