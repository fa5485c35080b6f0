"""A torch `Dataset` over a published dataset version, reading one shard at a time."""

from __future__ import annotations

import bisect
from typing import Any, Callable

import torch.utils.data as torch_data


class ParquetTorchDataset(torch_data.Dataset):
    """Map-style: index -> row dict (passed through `transform`). Keeps the last shard read in memory."""

    def __init__(self, version, columns: list[str] | None = None, transform: Callable[[dict], Any] | None = None):
        self.version = version
        self.columns = columns
        self.transform = transform
        self.starts = []
        total = 0
        for shard in version.manifest.shards:
            self.starts.append(total)
            total += shard.rows
        self.length = total
        self._cached: tuple[int, list[dict]] | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        index %= self.length
        shard = bisect.bisect_right(self.starts, index) - 1  # the last shard starting at or before index
        if self._cached is None or self._cached[0] != shard:
            self._cached = (shard, self.version.read_shard(shard, self.columns).to_pylist())
        row = self._cached[1][index - self.starts[shard]]
        return self.transform(row) if self.transform else row
