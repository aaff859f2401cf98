"""``lesa-orch report``: one self-contained HTML page about a job's MLflow run or an experiment's runs.

:func:`~.collect.collect` reads MLflow through the Tracker into :mod:`.data` and measures the local vs context
contribution of LESA run models (:mod:`lesa_core.analysis`); :func:`~.render.build_html` renders that data
into ``templates/report.html.j2`` with :mod:`.plots` figures; :func:`~.publish.publish` writes the file and
logs it (and each run's ``contributions.json``) to MLflow.

Sections: a summary of final metrics, learning curves, COCO AP by object size (detection runs), LESA vs
conv vs SA (the experiment's runs grouped by backbone family, best primary metric per family), and the
local vs context contribution of every LESA layer, measured with the run's logged model on a few
validation images.
"""

from .collect import collect
from .publish import publish, slug

__all__ = ["collect", "publish", "slug"]
