"""A job's ``hpo`` block as a search: Ray Tune trials steered by an Optuna study and stopped early by ASHA.

``space`` turns the spec's dimensions into Tune domains and builds the Optuna sampler; ``searcher`` sets up
``OptunaSearch`` on the job's study, ASHA, and how many trials run at once; ``callbacks`` close each trial's MLflow
child run and free what stopped trials hold; ``summary`` makes the trials table, picks the best trial and logs both
to the parent run, with the study ``plots``. ``ray_backend.tuning`` runs a search, ``ray_backend.trial`` one trial.
"""
