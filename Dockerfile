# The lesa-orch image: the Ray head, the Ray GPU workers and the MLflow server of docker-compose.yml.
# torch's PyPI wheels carry their CUDA libraries; the NVIDIA container toolkit adds the driver on GPU hosts.
FROM python:3.11-slim

# curl and pgrep serve the compose health checks
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/lesa-orch
COPY pyproject.toml README.md ./
COPY lesa_core lesa_core
COPY orchestrator orchestrator
# psycopg: PostgreSQL for MLflow, the job store and Optuna; boto3: MLflow's S3 (MinIO) artifact store
RUN pip install --no-cache-dir . "psycopg[binary]>=3.1" "boto3>=1.34"

ENV PYTHONUNBUFFERED=1
