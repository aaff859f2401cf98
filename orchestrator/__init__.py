"""lesa-orch: turns LESA job specs into Ray work and MLflow records (no model math lives here)."""
