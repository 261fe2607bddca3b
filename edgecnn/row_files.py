"""Predictions as files: one row per image, as JSON Lines or Parquet, chosen by the file's extension.

Rows are written as they come (a run over millions of images keeps none of them in memory)
into a temporary file that replaces the target only when every row is in (atomic). Parquet
needs pyarrow (the `ray` extra brings it).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Sequence

from edgecnn.predict import ImagePrediction
from edgecnn.registry import Registry


def atomic_or_none(path: Path | None):
    """`files.atomic_path(path)`, or a context that yields None when there is no path."""
    from edgecnn.files import atomic_path

    return atomic_path(path) if path is not None else contextlib.nullcontext(None)


# -- one writer per file type, chosen by extension ------------------------------------------
OUTPUT_WRITERS: Registry[type] = Registry("output", what="a file ending in")  # extension -> writer class


def output_writer(path: Path) -> type:
    """The writer class for `path`'s extension, or a one-line SettingError naming the ones there are."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_WRITERS:
        raise OUTPUT_WRITERS.unknown(path)
    return OUTPUT_WRITERS[suffix]


def _writes(*suffixes: str):
    """Class decorator: register a writer class for each of `suffixes`."""

    def register(cls):
        for s in suffixes:
            OUTPUT_WRITERS.add(s, cls)
        return cls

    return register


@_writes(".jsonl", ".ndjson", ".json")
class JsonLinesWriter:
    """One JSON object per image, the same objects as `predict --format json`."""

    def __init__(self, path: Path):
        self.fh = open(path, "w", encoding="utf-8")

    def write(self, rows: Sequence[ImagePrediction]) -> None:
        self.fh.write("".join(json.dumps(r.to_dict()) + "\n" for r in rows))

    def close(self) -> None:
        self.fh.close()


@_writes(".parquet", ".pq")
class ParquetWriter:
    """Columns path, label, score, top_labels, top_probabilities, true_label, error."""

    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.schema = pa.schema(
            [
                ("path", pa.string()),
                ("label", pa.string()),
                ("score", pa.float64()),
                ("top_labels", pa.list_(pa.string())),
                ("top_probabilities", pa.list_(pa.float64())),
                ("true_label", pa.string()),
                ("error", pa.string()),
            ]
        )
        self.writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, rows: Sequence[ImagePrediction]) -> None:
        columns = {
            "path": [r.path for r in rows],
            "label": [r.label for r in rows],
            "score": [r.score for r in rows],
            "top_labels": [[n for n, _ in r.top] for r in rows],
            "top_probabilities": [[p for _, p in r.top] for r in rows],
            "true_label": [r.true_label for r in rows],
            "error": [r.error for r in rows],
        }
        self.writer.write_table(self.pa.table(columns, schema=self.schema))

    def close(self) -> None:
        self.writer.close()
