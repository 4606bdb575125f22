"""The download stage. ``mmdata.download(...)`` runs the job (:func:`mmdata.download.job.download`).

Importing any submodule binds this package to the name ``mmdata.download``, shadowing the lazily
exported function of the same name; the package is therefore callable and forwards to the job, so
``mmdata.download(input=..., output_dir=...)`` works whichever of the two the name holds.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from mmdata.download.job import download

        return download(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
