"""CLIP scoring: model loading (``model``), one shard's pipeline (``pipeline``), the actor that
holds a model (``actor``) and the job (``job``). ``mmdata.score(...)`` runs the job."""

from mmdata._callable import make_package_callable

make_package_callable(__name__, "mmdata.score.job.score")
