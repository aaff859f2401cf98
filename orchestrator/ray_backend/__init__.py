"""Ray side of lesa-orch: the embedded local services, job submission, and what runs on the cluster."""
