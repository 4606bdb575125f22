"""Curation as views over the metadata: nothing is rewritten until ``reshard`` is asked for.

``rules`` (filters decide, ``apply_rules`` counts) → ``view`` (``filter_view``/``read_view``);
``hashes`` (exact + perceptual, cached per shard), ``semantic`` (SemDeDup), ``components``
(union-find) → ``dedup``; ``decontaminate``; ``reshard`` (a view → a new dataset). Every stage takes a
folder or a URL; ``reads`` fetches many files of an object store at once.
"""
