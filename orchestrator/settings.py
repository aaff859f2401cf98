"""Where things live: the home folder, the job store, MLflow and Ray, read from the environment.

With nothing set, lesa-orch runs the embedded default: state under ``~/.lesa-orch``, a SQLite job
store there, and a local Ray head and MLflow server on 127.0.0.1 that ``lesa-orch up`` starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RAY_DASHBOARD_PORT = 8265
DEFAULT_MLFLOW_PORT = 5000


@dataclass(frozen=True)
class Settings:
    """Resolved locations. ``embedded_ray`` / ``embedded_mlflow`` say whether lesa-orch runs them itself.

    Environment: ``LESA_ORCH_HOME``, ``LESA_ORCH_DB_URL``, ``RAY_ADDRESS`` (a Ray Jobs / dashboard URL),
    ``MLFLOW_TRACKING_URI``, ``LESA_ORCH_OPTUNA_URL`` (Optuna study storage), ``LESA_ORCH_RAY_PORT``,
    ``LESA_ORCH_MLFLOW_PORT`` (and ``LESA_ORCH_RAY_GCS_PORT`` for the embedded head's GCS). For a cluster:
    ``LESA_ORCH_STORAGE`` (default ``storage.path`` of its jobs, e.g. ``s3://lesa-checkpoints``) and
    ``LESA_ORCH_CLUSTER_MLFLOW_URI`` (MLflow as the cluster's nodes reach it, when that differs from here).
    """

    home: Path
    database_url: str
    ray_address: str
    mlflow_uri: str
    optuna_url: str
    embedded_ray: bool
    embedded_mlflow: bool
    default_storage: str | None
    cluster_mlflow_uri: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, ray_address: str | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("LESA_ORCH_HOME", "~/.lesa-orch")).expanduser().resolve()
        ray_port = int(env.get("LESA_ORCH_RAY_PORT", DEFAULT_RAY_DASHBOARD_PORT))
        mlflow_port = int(env.get("LESA_ORCH_MLFLOW_PORT", DEFAULT_MLFLOW_PORT))
        address = ray_address or env.get("RAY_ADDRESS")
        mlflow_uri = env.get("MLFLOW_TRACKING_URI")
        tracking_uri = mlflow_uri or f"http://127.0.0.1:{mlflow_port}"
        # a cluster's nodes cannot write to this machine's home: its jobs need storage.path or LESA_ORCH_STORAGE
        storage = env.get("LESA_ORCH_STORAGE") or (str(home / "ray_results") if address is None else None)
        return cls(
            home=home,
            database_url=env.get("LESA_ORCH_DB_URL", f"sqlite:///{home / 'jobs.db'}"),
            ray_address=address or f"http://127.0.0.1:{ray_port}",
            mlflow_uri=tracking_uri,
            optuna_url=env.get("LESA_ORCH_OPTUNA_URL", f"sqlite:///{home / 'optuna.db'}"),
            embedded_ray=address is None,
            embedded_mlflow=mlflow_uri is None,
            default_storage=storage,
            cluster_mlflow_uri=env.get("LESA_ORCH_CLUSTER_MLFLOW_URI", tracking_uri),
        )

    @property
    def mlflow_dir(self) -> Path:
        """Backend store and artifacts of the embedded MLflow server."""
        return self.home / "mlflow"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"
