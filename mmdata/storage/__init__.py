"""Where datasets live: a local folder or any fsspec filesystem, behind one :class:`Location` API,
and the commit protocol that keeps every shard whole on both (:mod:`mmdata.storage.commit`)."""

from mmdata.storage.location import Location, StorageError, location, retrying, staging_file
from mmdata.storage.parquet import read_parquet, read_parquet_schema, write_parquet_bytes

__all__ = ["Location", "StorageError", "location", "retrying", "staging_file", "read_parquet", "read_parquet_schema",
           "write_parquet_bytes"]
