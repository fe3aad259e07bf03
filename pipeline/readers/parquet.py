"""Parquet → documents, batch by batch, vectorised. A file needs a string `text` column;
columns named like DOCUMENT_SCHEMA's map to it, every other column goes into `metadata` JSON.

Damage costs what it touches: a file whose footer cannot be read is one `corrupt_parquet`
row; a file without a usable `text` column (or with duplicate column names) one `wrong_schema`
row; a row group whose pages do not decode one `corrupt_parquet` row for its unread rows, the
other row groups are read; a row with bytes that are not UTF-8 in a string column one
`invalid_utf8` row (Parquet readers do not check). Storage errors are not mistaken for damage:
they are raised, to be retried.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import is_transient
from pipeline.readers.base import Reader, clean_text, fallback_id
from pipeline.schema import DOCUMENT_SCHEMA

TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view())
MAPPED = {"id", "text", "url", "crawl_timestamp", "language", "language_score", "license", "metadata"}  # not source/provenance: ours


class ParquetReader(Reader):
    fmt = "parquet"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._file_bytes = 0

    def _bytes_read(self) -> int:
        # Parquet is read by column chunk through a random-access file, not streamed: count the
        # file once it is open (a close upper bound; the footer alone for a wrong schema).
        return self._file_bytes

    def __iter__(self) -> Iterator[pa.Table]:
        self._start()
        source = self.store.open_random_access(self.uri)
        try:
            try:
                pf = pq.ParquetFile(source)
            except (pa.ArrowException, OSError) as exc:
                if is_transient(exc):
                    raise
                self._records += 1
                self.quarantine(0, "corrupt_parquet", f"not a readable Parquet file: {exc}")
                return
            self._file_bytes = source.size()
            schema = pf.schema_arrow
            if pf.metadata.num_rows == 0:
                self.quarantine_empty_input(f"a Parquet file with no rows (columns: {schema.names})")
                return
            problem = _schema_problem(schema)
            if problem:
                self._records += pf.metadata.num_rows
                self.quarantine(0, "wrong_schema", f"{problem}; all {pf.metadata.num_rows} rows skipped; columns: {schema.names}", records=pf.metadata.num_rows)
                return
            first_row = 0
            for group in range(pf.num_row_groups):
                yield from self._row_group(pf, group, first_row)
                first_row += pf.metadata.row_group(group).num_rows
        finally:
            source.close()

    def _row_group(self, pf: pq.ParquetFile, group: int, first_row: int) -> Iterator[pa.Table]:
        """The documents of one row group; if its pages do not decode, one quarantine row for
        the rows not read."""
        batches = pf.iter_batches(batch_size=self.batch_size, row_groups=[group], columns=pf.schema_arrow.names)
        done = 0
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as exc:
                if is_transient(exc):
                    raise
                group_rows = pf.metadata.row_group(group).num_rows
                lost = max(group_rows - done, 1)
                self._records += lost
                self.quarantine(first_row + done, "corrupt_parquet", f"row group {group}: rows {first_row + done}..{first_row + group_rows - 1} ({lost}) do not decode: {exc}",
                                records=lost)
                return
            if batch is None:
                return
            table = self._documents_from(pa.Table.from_batches([batch]), first_row + done)
            done += batch.num_rows
            self._records += batch.num_rows
            if table.num_rows:
                self._documents += table.num_rows
                yield table

    def _documents_from(self, table: pa.Table, first_row: int) -> pa.Table:
        table, rows = self._valid_utf8_rows(table, np.arange(first_row, first_row + table.num_rows))
        text = pc.utf8_trim_whitespace(clean_text(table.column("text").cast(pa.large_string())))
        byte_len = pc.binary_length(text).to_numpy(zero_copy_only=False)
        null = text.is_null().to_numpy(zero_copy_only=False)
        byte_len = np.where(null, 0, np.nan_to_num(byte_len.astype(float))).astype(np.int64)
        empty = byte_len == 0
        oversize = byte_len > self.max_doc_bytes
        ids = _cast(table.column("id"), pa.string()) if "id" in table.column_names else None
        uncastable = ["id"] if ids is None and "id" in table.column_names else []  # kept in metadata as given
        for idx in np.flatnonzero(empty | oversize):
            rid = ids[int(idx)].as_py() if ids is not None else None
            if oversize[idx]:
                self.quarantine(int(rows[idx]), "oversize", f"text is {byte_len[idx]} bytes, over the {self.max_doc_bytes}-byte limit", rid)
            else:
                self.quarantine(int(rows[idx]), "empty_text", "`text` is null or empty", rid)
        keep = pa.array(~(empty | oversize))
        if not pc.all(keep).as_py():
            table, text, rows = table.filter(keep), text.filter(keep), rows[~(empty | oversize)]
            ids = ids.filter(keep) if ids is not None else None
        n = table.num_rows
        fallback = pa.array([fallback_id(self.uri, str(r)) for r in rows.tolist()], pa.string()) if ids is None or ids.null_count else None
        if ids is None:
            ids = fallback
        elif fallback is not None:
            ids = pc.if_else(ids.is_null(), fallback, ids)
        columns = {
            "id": ids,
            "text": text,
            "source": pa.array([self.uri] * n, pa.string()),
            "provenance": pc.binary_join_element_wise("parquet:", pa.array(rows.astype(str).tolist(), pa.string()), ""),
        }
        for f in DOCUMENT_SCHEMA:
            if f.name in columns or f.name == "metadata":
                continue
            cast = _cast(table.column(f.name), f.type) if f.name in table.column_names else pa.nulls(n, f.type)
            if cast is None:
                uncastable.append(f.name)  # kept in metadata as given rather than lost
                cast = pa.nulls(n, f.type)
            columns[f.name] = cast
        columns["metadata"] = self._metadata(table, uncastable)
        return pa.Table.from_arrays([columns[f.name] for f in DOCUMENT_SCHEMA], schema=DOCUMENT_SCHEMA)

    def _valid_utf8_rows(self, table: pa.Table, rows: np.ndarray) -> tuple[pa.Table, np.ndarray]:
        """The table without rows whose strings are not UTF-8 (each quarantined), and their row numbers."""
        bad = np.zeros(table.num_rows, dtype=bool)
        for name, column in zip(table.column_names, table.columns):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid:
                # Rare: find the rows one by one.
                for idx in range(table.num_rows):
                    try:
                        column.slice(idx, 1).validate(full=True)
                    except pa.ArrowInvalid as exc:
                        if not bad[idx]:
                            self.quarantine(int(rows[idx]), "invalid_utf8", f"column `{name}`: {exc}")
                        bad[idx] = True
        if not bad.any():
            return table, rows
        return table.filter(pa.array(~bad)), rows[~bad]

    def _metadata(self, table: pa.Table, uncastable: list[str]) -> pa.Array:
        # `source` and `provenance` columns are the file's own, not ours: kept in metadata.
        extras = [name for name in table.column_names if name not in MAPPED] + uncastable
        meta = table.column("metadata") if "metadata" in table.column_names else None
        if not extras and (meta is None or pa.types.is_string(meta.type) or pa.types.is_large_string(meta.type)):
            return meta.cast(pa.string()) if meta is not None else pa.nulls(table.num_rows, pa.string())
        # Extra columns are merged row by row: JSON encoding has no vectorised path in Arrow.
        extra_rows = table.select(extras).to_pylist() if extras else [{}] * table.num_rows
        meta_values = meta.to_pylist() if meta is not None else [None] * table.num_rows
        out = []
        for extra, own in zip(extra_rows, meta_values):
            if isinstance(own, str):
                try:
                    own = json.loads(own)
                except ValueError:
                    own = {"metadata": own}
            merged = {**extra, **own} if isinstance(own, dict) else ({**extra, "metadata": own} if own is not None else extra)
            out.append(json.dumps(merged, ensure_ascii=False, sort_keys=True, default=str) if merged else None)
        return pa.array(out, pa.string())


def _schema_problem(schema: pa.Schema) -> str | None:
    if len(set(schema.names)) < len(schema.names):
        return f"duplicate column names {sorted({n for n in schema.names if schema.names.count(n) > 1})}"
    if "text" not in schema.names:
        return "no `text` column"
    if schema.field("text").type not in TEXT_TYPES:
        return f"`text` is {schema.field('text').type}, not a string column"
    return None


def _cast(column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray | None:
    """A mapped column in the schema's type, or None when its values do not cast (they are not
    what the schema means by that name, e.g. a `crawl_timestamp` of free text)."""
    if column.type == target:
        return column
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
