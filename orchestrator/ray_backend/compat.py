"""Every use of Ray Train, Ray Tune and Optuna internals, checked against the versions it was tested with.

lesa-orch leans on a few implementation details where the public API has no way to do the job:

- Ray Train: a ``TorchTrainer`` that leaves out its dataset callback (a ``DatasetManager`` actor per run, for Ray
  Data only) and, for a search trial, runs its ``TrainController`` inline in the trial's actor, aborting the
  controller's worker group when Tune stops the trial; a ``TuneReportCallback`` without its inter-actor queue.
- Ray: the name of the file in which a head lists its Prometheus targets (read by the metrics tests).
- Ray Tune: handing callbacks to a restored ``Tuner`` (``Tuner.restore`` takes none).
- Ray's ``OptunaSearch`` and Optuna: the searcher's study, its trial map and completed set, and a live Optuna
  trial rebuilt from a frozen one, so a restored search stays consistent with its study.

Any release may change them, so importing this module on versions other than ``TESTED_VERSIONS`` fails with one
line naming both; ``LESA_ORCH_UNTESTED_VERSIONS=1`` turns that into a warning, for trying a newer release (set it
where the drivers run: in the environment of ``lesa-orch up`` for the embedded cluster, of the Ray nodes otherwise).
Optuna is not imported here: trial actors import this module and must stay light.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

TESTED_VERSIONS = {"ray": "2.60", "optuna": "5.0"}  # major.minor; any patch release of these
UNTESTED_VERSIONS_ENV = "LESA_ORCH_UNTESTED_VERSIONS"


def installed_versions() -> dict[str, str | None]:
    """The installed version of each package in ``TESTED_VERSIONS`` (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in TESTED_VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def untested_versions(installed: Mapping[str, str | None]) -> str:
    """One line naming the installed packages whose major.minor is not the tested one ("" when all are)."""
    wrong = [f"{name} {version} (tested: {TESTED_VERSIONS[name]}.x)" for name, version in installed.items()
             if version is not None and ".".join(version.split(".")[:2]) != TESTED_VERSIONS[name]]
    if not wrong:
        return ""
    return (f"lesa-orch relies on internals of {', '.join(wrong)}; install the tested versions, "
            f"or set {UNTESTED_VERSIONS_ENV}=1 to try these")


def check_versions(installed: Mapping[str, str | None] | None = None, env: Mapping[str, str] | None = None) -> None:
    """Raises ``RuntimeError`` with one line when an installed version is untested (a warning with the override)."""
    problem = untested_versions(installed_versions() if installed is None else installed)
    if not problem:
        return
    if (os.environ if env is None else env).get(UNTESTED_VERSIONS_ENV) == "1":
        warnings.warn(problem, RuntimeWarning, stacklevel=2)
        return
    raise RuntimeError(problem)


check_versions()  # before the private imports below, which may not even exist on other versions

from ray import tune  # noqa: E402
from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE  # noqa: E402
from ray.train import Checkpoint, Result  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402
from ray.train.v2._internal.callbacks.backend_setup import BackendSetupCallback  # noqa: E402
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback  # noqa: E402
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback  # noqa: E402
from ray.train.v2._internal.execution.context import TrainRunContext  # noqa: E402
from ray.train.v2._internal.execution.controller import TrainController  # noqa: E402
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback  # noqa: E402

if TYPE_CHECKING:
    import optuna

__all__ = [
    "PROMETHEUS_SERVICE_DISCOVERY_FILE",
    "BackendSetupCallback",
    "DataLoaderTrainer",
    "DatasetsCallback",
    "InlineTuneReportCallback",
    "PlacementGroupCleanerCallback",
    "default_callbacks",
    "live_trial",
    "mark_searcher_trial_completed",
    "searcher_study",
    "searcher_trials",
    "set_restored_callbacks",
]

# ------------------------------------------------------------------------------------------------- Ray Train


class DataLoaderTrainer(TorchTrainer):
    """A TorchTrainer for workers that read through torch DataLoaders, not Ray Data.

    Ray Train's dataset callback starts a ``DatasetManager`` actor for every run, datasets or not, and the workers
    wait for it before the training function starts: 2.5 s of every run's (and every search trial's) start-up on
    2 CPU cores, measured with the actor timeline of a search. Without Ray Data datasets it is left out.

    ``inline_controller`` runs Ray Train's controller in the calling process instead of a controller actor of its
    own. A search trial sets it: its Tune actor lives exactly as long as the run, so a second process that imports
    Ray Train and torch again only adds start-up (3.7 s a trial at 2 trials on 2 cores). The workers are then
    owned by the trial's actor and end with it; the placement-group cleaner actor, which watches the controller
    for the same purpose, is left out: a stopped trial aborts its worker group itself, and the search sweeps what a
    killed one leaves (``search.callbacks.OrphanedWorkerGroupSweep``). Inline, the workers see the trial's actor as
    their controller, so ``ray.train.get_all_reported_checkpoints`` is not available to them; and it takes one
    Train run per actor, which holds while Tune does not reuse trial actors (its default).
    """

    def __init__(self, *args: Any, inline_controller: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inline_controller = inline_controller

    def _create_default_callbacks(self) -> list:
        dropped: tuple[type, ...] = () if self.datasets else (DatasetsCallback,)
        if self.inline_controller:
            dropped += (PlacementGroupCleanerCallback,)
        return [callback for callback in super()._create_default_callbacks() if not isinstance(callback, dropped)]

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Result:
        if not self.inline_controller:
            return super()._initialize_and_run_controller(**controller_init_kwargs)
        controller = TrainController(**controller_init_kwargs)
        try:
            asyncio.run(controller.run())
        except BaseException:  # Tune stopping the trial (SystemExit out of tune.report), or an interrupt
            _abort_worker_group(controller)
            raise
        return controller.get_result()


def default_callbacks(trainer: TorchTrainer) -> list:
    """The Ray Train callbacks a trainer's runs start with, before the user's own."""
    return trainer._create_default_callbacks()


def _abort_worker_group(controller: TrainController) -> None:
    """Ends an interrupted run's workers, sync actor and placement group now, not when the trial's actor dies.

    ``TrainController.abort`` would do the same but then exits its actor, which here is the trial's own.
    """
    worker_group = controller._worker_group
    if worker_group is None or not worker_group.has_started():
        return
    try:
        worker_group.abort()
    except Exception as error:  # best effort: the search's sweep still frees what is left
        print(f"lesa-orch: aborting the trial's workers failed: {error}", flush=True)


class InlineTuneReportCallback(TuneReportCallback):
    """``TuneReportCallback`` for a controller that runs in the trial's own thread (``inline_controller``).

    Ray's callback hands rank 0's metrics to Tune through a queue actor, since its controller lives in another
    process; here the controller runs in the trial function's thread, so it reports with ``tune.report`` directly
    and no queue actor is started. The result is the same: rank 0's metrics plus ``checkpoint_path`` when the
    report came with a checkpoint.
    """

    def __init__(self) -> None:  # no inter-actor queue: nothing crosses a process
        pass

    def after_report(self, run_context: TrainRunContext, metrics: list[dict[str, Any]],
                     checkpoint: Checkpoint | None) -> None:
        result = dict(metrics[0])
        if checkpoint is not None:
            result[CHECKPOINT_PATH_KEY] = checkpoint.path
        tune.report(result)


# -------------------------------------------------------------------------------------------------- Ray Tune


def set_restored_callbacks(tuner: tune.Tuner, callbacks: list[tune.Callback]) -> None:
    """Hands ``callbacks`` to a restored tuner: they are not part of Tune's saved state."""
    tuner._local_tuner._run_config.callbacks = callbacks


# ---------------------------------------------------------------------------------- OptunaSearch and Optuna


def searcher_study(searcher: Any) -> optuna.Study:
    """The Optuna study behind a Ray ``OptunaSearch``."""
    return searcher._ot_study


def searcher_trials(searcher: Any) -> dict[str, optuna.Trial]:
    """A Ray ``OptunaSearch``'s live Optuna trial per Tune trial id (the searcher's own, mutable map)."""
    return searcher._ot_trials


def mark_searcher_trial_completed(searcher: Any, trial_id: str) -> None:
    """Records in a Ray ``OptunaSearch`` that Tune trial ``trial_id`` is done, without telling its study."""
    searcher._completed_trials.add(trial_id)


def live_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.Trial:
    """A live trial of ``study`` for a stored one, built by storage id as Optuna itself rebuilds one."""
    import optuna

    return optuna.trial.Trial(study, frozen._trial_id)
