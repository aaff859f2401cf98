-- Runs once, when the PostgreSQL volume is first initialised (as POSTGRES_USER, which owns everything).
-- POSTGRES_DB (mlflow) holds MLflow's tracking and registry; these hold lesa-orch's job store and Optuna's studies.
CREATE DATABASE lesa_orch;
CREATE DATABASE optuna;
