"""The Arrow schemas every mmdata table is written with, and the one helper that fits a table to them.

This package is the format contract: it depends on nothing else of mmdata. Each table kind has a
module here; every writer calls :func:`align_table` before writing so that no schema is ever inferred
from data.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["SchemaError", "align_table"]


class SchemaError(ValueError):
    """A table cannot be made to fit its schema without losing or inventing data."""


def align_table(table: pa.Table, schema: pa.Schema, *, keep_extra: bool = False) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order, safely cast.

    Missing nullable columns are filled with nulls; a missing non-nullable column, a null in a
    non-nullable column or an unsafe cast raises :class:`SchemaError`. Columns not in the schema are
    dropped, or appended after the schema's (``keep_extra``: saved additional input columns).
    Schema metadata is taken from ``schema`` merged over the table's.
    """
    columns, fields = [], []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            if column.type != field.type:
                try:
                    column = column.cast(field.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                    raise SchemaError(
                        f"column {field.name!r}: cannot cast {column.type} to {field.type}: {error}"
                    ) from error
        elif field.nullable:
            column = pa.nulls(table.num_rows, type=field.type)
        else:
            raise SchemaError(f"required column {field.name!r} is missing (have {table.column_names})")
        if not field.nullable and column.null_count:
            raise SchemaError(f"column {field.name!r} is not nullable but holds {column.null_count} nulls")
        columns.append(column)
        fields.append(field)
    if keep_extra:
        for name in table.column_names:
            if schema.get_field_index(name) == -1:
                columns.append(table.column(name))
                fields.append(table.schema.field(name))
    metadata = dict(table.schema.metadata or {})
    metadata.update(schema.metadata or {})
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=metadata or None))
