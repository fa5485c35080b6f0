"""Pipelines that read other datasets: work items that point at parent samples, and the stage that reads
them in the worker. The driver only reads the parent's `sample_id` column; payloads never pass through it.
Lineage follows from the items: every parent version an item points at is recorded in the manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hoi_factory.context import StageContext
from hoi_factory.datasets import ID_NAMES, DatasetVersion
from hoi_factory.stage import Reject, Row, Stage

PARENT_KEYS = frozenset({"parent", "parent_shard", "parent_row"})  # what items_from_dataset adds to an item

def items_from_dataset(version: DatasetVersion) -> Iterator[dict[str, Any]]:
    """One work item per sample of a published version, streamed shard by shard: its id becomes the child's
    input id."""
    for shard_index in range(len(version.shards)):
        sample_ids = version.read_shard(shard_index, ["sample_id"]).column("sample_id").to_pylist()
        for row, sample_id in enumerate(sample_ids):
            yield {"input_id": sample_id, "parent": version.ref, "parent_shard": shard_index, "parent_row": row}


class ReadParentRows(Stage):
    """Adds each item's parent sample `columns` to the row; the row's own keys win."""

    batch_size = 16  # rows of one parent shard are read once and cached, whatever the batch
    needs = PARENT_KEYS

    def __init__(self, columns: list[str]):
        self.columns = columns
        self.makes = frozenset(columns)

    def setup(self, context: StageContext) -> None:
        self.datasets = context.datasets
        self._versions: dict[str, DatasetVersion] = {}
        self._cached: tuple[tuple[str, int], list[Row]] | None = None

    def _parent_rows(self, ref: str, shard: int) -> list[Row]:
        if self._cached is None or self._cached[0] != (ref, shard):
            if ref not in self._versions:
                self._versions[ref] = self.datasets.open_ref(ref)
            self._cached = ((ref, shard),
                            self._versions[ref].read_shard(shard, ["sample_id", *self.columns]).to_pylist())
        return self._cached[1]

    def process(self, batch: list[Row]) -> list[Row | Reject]:
        results: list[Row | Reject] = []
        for row in batch:
            parent = self._parent_rows(row["parent"], row["parent_shard"])[row["parent_row"]]
            if parent["sample_id"] != row["input_id"]:
                results.append(Reject.of(row, "parent sample not where planned", f"{row['parent']}"))
                continue
            payload = {k: v for k, v in parent.items() if k not in ID_NAMES}
            results.append({**payload, **row})
        return results
