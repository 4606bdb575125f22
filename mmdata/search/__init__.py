"""Cross-modal retrieval over stored CLIP embeddings: the index (``ann``, ``index``), query encoding
(``encode``), the search (``query``) and the hit grid (``html``).

``mmdata.search`` names both this package and the search function: once any submodule is imported,
Python binds the package to that name, so the package itself is made callable as the search
(as ``mmdata.score`` does).
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from mmdata.search.query import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
