"""CLIP scoring: model loading (``model``), one shard's pipeline (``pipeline``), the Ray actor
(``actor``) and the job (``job``).

``mmdata.score`` names both this package and the job function: once any submodule is imported,
Python binds the package to that name, so the package itself is made callable as the job.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from mmdata.score.job import score

        return score(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
