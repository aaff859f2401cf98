"""Bad input to the installed CLI: a documented exit status, a line or two naming the field or the service, no
traceback, within seconds, and nothing left behind in the job store (or in MLflow).

The table runs once, its CLI calls side by side in threads (each a ``lesa-orch`` process), and each row is then
checked as its own test. Ray and MLflow are unreachable (a closed port) unless a row says otherwise: none of these
calls may get as far as submitting anything.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.cli import EXIT_ERROR, EXIT_UNREACHABLE, EXIT_USAGE
from orchestrator.settings import Settings
from orchestrator.store import JobState, JobStore, make_engine, upgrade

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "lesa-orch")
QUICKSTART = (REPO / "jobs" / "quickstart_imagenet.yaml").read_text()
SEEDED_JOB = "seeded-20261202-000000-beef"  # a SUBMITTED job whose Ray job cannot be asked about
READ_LIMIT_S = 10.0  # what a verb that only reads (or fails on the spec's schema) may take
CHECKS_LIMIT_S = 45.0  # a spec that passes its schema is checked by building its model: torch and timm load


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # released on close: nothing listens there


def _edit(old: str, new: str, text: str = QUICKSTART) -> str:
    assert old in text, f"{old!r} is no longer in the quickstart spec"
    return text.replace(old, new, 1)


def _search(space: str, extra: str = "") -> str:
    """The quickstart with an ``hpo`` block searching ``space`` (YAML lines under ``space:``)."""
    return f"{QUICKSTART}hpo:\n  space:\n{space}\n  num_samples: 2\n{extra}"


@dataclass(frozen=True)
class Case:
    """One bad input. ``argv`` and ``env`` may name ``{job}`` (the case's spec file, written from ``spec``),
    ``{home}`` (its LESA_ORCH_HOME), ``{closed_port}`` (where nothing answers), ``{refusing}`` (a server that refuses
    every request, as Ray does a wrong token) and ``{mlflow_db}`` (a real MLflow store without runs)."""

    name: str
    argv: tuple[str, ...]
    code: int
    fragments: tuple[str, ...]
    spec: str | bytes | None = None
    env: dict[str, str] = field(default_factory=dict)
    seeded: bool = False  # a SUBMITTED job row exists beforehand (and must be left as it was)
    max_lines: int = 1  # on stderr; click's usage errors draw a box of about five
    prints: bool = False  # may print the job on stdout (status shows the last known state)
    limit_s: float = READ_LIMIT_S


def _submit(name: str, spec: str | bytes, *fragments: str, limit_s: float = READ_LIMIT_S,
            args: tuple[str, ...] = ()) -> Case:
    return Case(name, ("submit", "{job}", *args), EXIT_ERROR, ("job.yaml", *fragments), spec=spec, limit_s=limit_s)


def _checked(name: str, spec: str, *fragments: str, args: tuple[str, ...] = ()) -> Case:
    """A spec that passes its schema and fails a check that builds the model (slower: torch and timm load)."""
    return _submit(name, spec, *fragments, limit_s=CHECKS_LIMIT_S, args=args)


UNREACHABLE_RAY = "Ray at http://127.0.0.1:"
UNREACHABLE_MLFLOW = "MLflow at http://127.0.0.1:"
CASES = [
    # the file itself
    _submit("yaml-syntax", "name: x\ntask: [classification\n", "invalid YAML at line"),
    _submit("not-utf8", b"name: caf\xe9\ntask: classification\n", "not UTF-8", "0xe9"),
    _submit("not-a-mapping", "- name: x\n", "must be a mapping"),
    Case("missing-file", ("submit", "no/such/job.yaml"), EXIT_ERROR, ("no/such/job.yaml", "no such job file")),
    _submit("unset-variable", _edit("name: quickstart-imagenet", "name: ${LESA_TEST_UNSET_NAME}"),
            "name", "LESA_TEST_UNSET_NAME is not set"),
    # unknown keys, with a suggestion
    _submit("unknown-section", _edit("schedule:\n", "schedul:\n"), "schedul: unknown key", "'schedule'"),
    _submit("unknown-key", _edit("  epochs: 8", "  epoch: 8"), "schedule.epoch: unknown key", "'epochs'"),
    # bad values
    _submit("epochs-not-int", _edit("epochs: 8", "epochs: eight"), "schedule.epochs", "valid integer"),
    _submit("task-literal", _edit("task: classification", "task: segmentation"), "task", "'classification'"),
    _submit("even-kernel", _edit("    sim_norm: scaled", "    unary_kernel: 4"), "model.lesa", "unary_kernel=4"),
    _submit("format-mismatch", _edit("format: imagenet", "format: coco"), "data.format='coco'"),
    _submit("name-pattern", _edit("name: quickstart-imagenet", "name: quick start"), "name", "pattern"),
    _submit("missing-section", QUICKSTART.split("schedule:\n")[0], "schedule", "Field required"),
    # --set overrides
    _submit("set-unknown-field", QUICKSTART, "--set schedule.epoch=3", "did you mean 'epochs'",
            args=("--set", "schedule.epoch=3")),
    _submit("set-no-equals", QUICKSTART, "--set schedule.epochs", "KEY=VALUE", args=("--set", "schedule.epochs")),
    _submit("set-unknown-section", QUICKSTART, "--set shedule.epochs=3", "no field 'shedule'",
            args=("--set", "shedule.epochs=3")),
    _submit("set-bad-literal", QUICKSTART, "model.lesa.fusion", "'gate'", args=("--set", "model.lesa.fusion=bogus")),
    # hpo blocks the schema refuses
    _submit("hpo-empty-space", _search("    {}"), "hpo", "space is empty"),
    _submit("hpo-repeated-choice", _search("    model.lesa.fusion: {type: choice, values: [gate, gate]}"),
            "hpo.space.model.lesa.fusion", "repeat"),
    _submit("hpo-unknown-key", _search("    model.lesa.fusion: {type: choice, vals: [gate, add]}"),
            "hpo.space.model.lesa.fusion.vals: unknown key", "'values'"),
    _submit("hpo-grid-continuous", _search("    schedule.lr: {type: uniform, low: 0.001, high: 0.1}",
                                           "  sampler: {type: grid}\n"), "hpo", "sampler 'grid'", "schedule.lr"),
    # checks after the schema (orchestrator/spec/checks.py): they build the model on the meta device
    _checked("arch-typo", _edit("arch: test_lesa_resnet", "arch: test_lesa_resnt"), "model.arch"),
    _checked("num-heads-3", _edit("    sim_norm: scaled", "    sim_norm: scaled\n    num_heads: 3"),
             "model.lesa.num_heads"),
    _submit("crop-scale-order", _edit("crop_scale: [0.5, 1.0]", "crop_scale: [1.0, 0.5]"), "data.crop_scale"),
    _checked("flat1d-size", _edit("    sim_norm: scaled", "    pos_embed: flat1d"), "data.img_size",
             args=("--set", "data.img_size=96")),
    _checked("hpo-num-heads-3", _search("    model.lesa.num_heads: {type: choice, values: [3, 8]}"),
             "hpo.space.model.lesa.num_heads"),
    # job ids, flags
    Case("status-unknown-job", ("status", "no-such-job"), EXIT_ERROR, ("no job with id 'no-such-job'",)),
    Case("logs-unknown-job", ("logs", "no-such-job"), EXIT_ERROR, ("no job with id 'no-such-job'",)),
    Case("cancel-unknown-job", ("cancel", "no-such-job"), EXIT_ERROR, ("no job with id 'no-such-job'",)),
    Case("compare-unknown-job", ("compare", "no-such-job"), EXIT_ERROR, ("no job with id 'no-such-job'",)),
    Case("similar-job-id", ("status", SEEDED_JOB[:-1]), EXIT_ERROR, (f"did you mean '{SEEDED_JOB}'",), seeded=True),
    Case("list-bad-state", ("list", "--state", "DONE"), EXIT_USAGE, ("'DONE' is no job state", "PENDING"),
         max_lines=6),
    Case("unknown-flag", ("list", "--colour"), EXIT_USAGE, ("--colour",), max_lines=5),
    Case("compare-nothing", ("compare",), EXIT_USAGE, ("give a search job id or --experiment",)),
    # Ray unreachable or refusing the token
    _checked("cluster-job-without-storage", QUICKSTART, "storage.path: unset", "LESA_ORCH_STORAGE"),
    Case("submit-ray-unreachable", ("submit", "{job}", "--set", "storage.path={home}/ray_results"),
         EXIT_UNREACHABLE, (UNREACHABLE_RAY, "unreachable"), spec=QUICKSTART, limit_s=CHECKS_LIMIT_S),
    Case("status-ray-unreachable", ("status", SEEDED_JOB), EXIT_UNREACHABLE,
         (UNREACHABLE_RAY, "SUBMITTED is the last known"), seeded=True, prints=True),
    Case("logs-ray-unreachable", ("logs", SEEDED_JOB), EXIT_UNREACHABLE, (UNREACHABLE_RAY,), seeded=True),
    Case("cancel-ray-unreachable", ("cancel", SEEDED_JOB), EXIT_UNREACHABLE, (UNREACHABLE_RAY,), seeded=True),
    Case("logs-token-refused", ("logs", SEEDED_JOB), EXIT_UNREACHABLE, ("auth token refused (HTTP 403)",),
         env={"RAY_ADDRESS": "{refusing}"}, seeded=True),
    # MLflow unreachable, or answering that there is no such thing
    Case("compare-mlflow-unreachable", ("compare", "--experiment", "lesa/x/classification"), EXIT_UNREACHABLE,
         (UNREACHABLE_MLFLOW,)),
    Case("promote-mlflow-unreachable", ("promote", "lesa-classification-x", "1"), EXIT_UNREACHABLE,
         (UNREACHABLE_MLFLOW,)),
    Case("report-mlflow-unreachable", ("report", "lesa/x/classification"), EXIT_UNREACHABLE, (UNREACHABLE_MLFLOW,)),
    Case("promote-unknown-model", ("promote", "lesa-classification-nope", "1"), EXIT_ERROR,
         ("lesa-classification-nope",), env={"MLFLOW_TRACKING_URI": "{mlflow_db}"}),
    Case("compare-unknown-experiment", ("compare", "--experiment", "lesa/nope/classification"), EXIT_ERROR,
         ("no experiment named 'lesa/nope/classification'",), env={"MLFLOW_TRACKING_URI": "{mlflow_db}"}),
    Case("report-unknown-target", ("report", "nope"), EXIT_ERROR, ("'nope' is neither a job id nor an MLflow",),
         env={"MLFLOW_TRACKING_URI": "{mlflow_db}"}),
    # the job database
    Case("list-database-unreachable", ("list",), EXIT_UNREACHABLE,
         ("job database at postgresql://lesa:***@127.0.0.1:", "is unreachable"),
         env={"LESA_ORCH_DB_URL": "postgresql://lesa:secret@127.0.0.1:{closed_port}/jobs"}),
    Case("submit-database-unreachable", ("submit", "jobs/quickstart_imagenet.yaml"), EXIT_UNREACHABLE,
         ("job database at postgresql://lesa:***@127.0.0.1:",),
         env={"LESA_ORCH_DB_URL": "postgresql://lesa:secret@127.0.0.1:{closed_port}/jobs"}),
    Case("database-url-unusable", ("list",), EXIT_ERROR, ("job database URL 'nosuchdb://x'", "not usable"),
         env={"LESA_ORCH_DB_URL": "nosuchdb://x"}),
]


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Refuses every request as Ray's token middleware refuses a wrong token."""

    def do_GET(self) -> None:
        self.send_response(403)
        self.end_headers()
        self.wfile.write(b"Forbidden: Invalid authentication token")

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def refusing_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _base_env(home: Path, port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {"LESA_ORCH_HOME": str(home), "HOME": str(home), "RAY_ADDRESS": url, "MLFLOW_TRACKING_URI": url,
            "PATH": "/usr/bin:/bin"}


def _seed(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = JobStore(engine)
    store.create(SEEDED_JOB, name="seeded", task="classification", spec={})
    store.transition(SEEDED_JOB, JobState.SUBMITTED, ray_submission_id=SEEDED_JOB,
                     mlflow_experiment="lesa/synthetic_imagenet/classification")


def _jobs(settings: Settings) -> list[tuple[str, str]]:
    """(id, state) of every row of the job store; none when it was never created."""
    if not settings.database_url.startswith("sqlite") or not (settings.home / "jobs.db").exists():
        return []
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return [(record.id, record.state) for record in JobStore(engine).list()]


@dataclass
class Outcome:
    done: subprocess.CompletedProcess
    seconds: float
    jobs_after: list[tuple[str, str]]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, refusing_server) -> dict[str, Outcome]:
    """Every case of the table run once, two at a time (the cores of the test machine), longest first."""
    root = tmp_path_factory.mktemp("bad-inputs")
    port = _closed_port()
    mlflow_db = f"sqlite:///{root / 'mlflow.db'}"
    from mlflow import MlflowClient

    MlflowClient(mlflow_db).search_experiments()  # created and migrated once, before the cases read it at once
    places = {"{closed_port}": str(port), "{refusing}": refusing_server, "{mlflow_db}": mlflow_db}

    def fill(text: str, home: Path) -> str:
        for place, value in {**places, "{home}": str(home), "{job}": str(home / "job.yaml")}.items():
            text = text.replace(place, value)
        return text

    def run(case: Case) -> Outcome:
        home = root / case.name
        home.mkdir()
        env = {**_base_env(home, port), **{key: fill(value, home) for key, value in case.env.items()}}
        settings = Settings.from_env(env)
        if case.seeded:
            _seed(settings)
        job = home / "job.yaml"
        if isinstance(case.spec, bytes):
            job.write_bytes(case.spec)
        elif case.spec is not None:
            job.write_text(case.spec)
        argv = [fill(arg, home) for arg in case.argv]
        start = time.monotonic()
        done = subprocess.run([CLI, *argv], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        return Outcome(done, time.monotonic() - start, _jobs(settings))

    ordered = sorted(CASES, key=lambda case: -case.limit_s)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip((case.name for case in ordered), pool.map(run, ordered), strict=True))
    client = MlflowClient(mlflow_db)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    assert not client.search_runs(experiments), "a bad input left an MLflow run"
    return results


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(outcomes, case):
    outcome = outcomes[case.name]
    done = outcome.done
    everything = done.stdout + done.stderr
    assert done.returncode == case.code, everything
    assert "Traceback" not in everything
    lines = done.stderr.strip().splitlines()
    assert 1 <= len(lines) <= case.max_lines, done.stderr
    for fragment in case.fragments:
        assert fragment in " ".join(line.strip(" │") for line in lines), done.stderr
    assert case.prints or not done.stdout.strip(), done.stdout
    assert outcome.seconds < case.limit_s, f"took {outcome.seconds:.1f}s"
    expected = [(SEEDED_JOB, "SUBMITTED")] if case.seeded else []
    assert outcome.jobs_after == expected


def test_the_table_is_large_enough():
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.fixture
def env(tmp_path):
    return _base_env(tmp_path / "home", _closed_port())


def _run(env, *args):
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_list_marks_unfinished_jobs_stale_when_ray_is_unreachable(env):
    settings = Settings.from_env(env)
    _seed(settings)
    done = _run(env, "list", "--json")
    assert done.returncode == 0, done.stderr
    assert "states of 1 unfinished job(s) may be stale" in done.stderr
    assert [(job["id"], job["stale"]) for job in json.loads(done.stdout)] == [(SEEDED_JOB, True)]
    table = _run(env, "list")
    assert "SUBMITTED?" in table.stdout and "may be stale" in table.stderr


def test_debug_shows_the_traceback(env, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_bytes(b"name: caf\xe9\n")
    for done in (_run(env, "--debug", "validate", str(job)),
                 _run({**env, "LESA_ORCH_DEBUG": "1"}, "validate", str(job))):
        assert done.returncode == EXIT_ERROR
        assert "Traceback" in done.stdout + done.stderr and "not UTF-8" in done.stdout + done.stderr


def test_help_documents_the_exit_statuses(env):
    done = _run(env, "--help")
    assert "Exit status: 0 done; 1" in done.stdout and "3 Ray, MLflow" in done.stdout


def test_validate_accepts_every_quickstart(env):
    jobs = ("jobs/quickstart_coco.yaml", "jobs/quickstart_imagenet.yaml", "jobs/quickstart_tune.yaml")
    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in pool.map(lambda job: _run(env, "validate", job), jobs):
            assert done.returncode == 0, done.stderr
            assert "ok" in done.stdout


def test_schema_is_json_with_the_sections(env):
    schema = json.loads(_run(env, "schema").stdout)
    assert {"model", "data", "schedule", "resources", "storage", "tracking"} <= set(schema["properties"])


def test_doctor_names_what_is_down(env):
    done = _run({**env, "LESA_ORCH_STORAGE": str(Path(env["LESA_ORCH_HOME"]) / "storage")}, "doctor")
    assert done.returncode == EXIT_UNREACHABLE, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("FAIL ray: ") and "unreachable: Connection refused" in line for line in lines)
    assert any(line.startswith("FAIL mlflow: ") and "unreachable" in line for line in lines)
    assert any(line.startswith("ok   job store: sqlite:///") and "empty" in line for line in lines), lines
    assert any(line.startswith("ok   storage: ") and "writable" in line for line in lines)
    assert any(line.startswith("ok   packages: lesa-orch=") and " mlflow=" in line for line in lines)


def test_doctor_with_its_database_and_storage_unreachable(env):
    port = _closed_port()
    unreachable = {"LESA_ORCH_DB_URL": f"postgresql://lesa:secret@127.0.0.1:{port}/jobs",
                   "LESA_ORCH_STORAGE": "s3://lesa-checkpoints/jobs", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                   "AWS_EC2_METADATA_DISABLED": "true"}
    start = time.monotonic()
    done = _run({**env, **unreachable}, "doctor", "--json")
    assert time.monotonic() - start < 30  # torch loads for the GPU check; nothing waits long on a service
    assert done.returncode == EXIT_UNREACHABLE, done.stdout + done.stderr
    checks = {check["name"]: check for check in json.loads(done.stdout)}
    assert not checks["job store"]["ok"] and "postgresql://lesa:***@127.0.0.1" in checks["job store"]["detail"]
    assert "secret" not in done.stdout
    assert not checks["storage"]["ok"] and "s3://lesa-checkpoints/jobs: unreachable" in checks["storage"]["detail"]
