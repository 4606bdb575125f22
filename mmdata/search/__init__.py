"""Cross-modal retrieval over stored CLIP embeddings: the index (``ann``, ``index``), query encoding
(``encode``), the search (``query``) and the hit grid (``html``). ``mmdata.search(...)`` searches."""

from mmdata._callable import make_package_callable

make_package_callable(__name__, "mmdata.search.query.search")
