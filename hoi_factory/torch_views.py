"""torch views of a published dataset version: random access (`ParquetTorchDataset`) and a streaming loader for
training epochs (`ShardStream`), plus the decoders that turn stored cells into tensors, guided by the columns'
declared encodings and shapes (hoi_factory.columns).

Why a stream: a DataLoader shuffling the map-style view asks for samples in random order, so nearly every sample
lands in another shard than the last and the shard is read again (109 samples, one shard: 96 reads). The
stream reads each shard once per epoch, as WebDataset and Ray Data do: shuffling is by shard order plus an
in-memory buffer, so it is only as random as the buffer is large (a sample moves at most `buffer_size` places
from a uniform shuffle of its neighbourhood), the usual trade of streaming loaders.
"""

from __future__ import annotations

import bisect
import random
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import torch
import torch.utils.data as torch_data

from hoi_factory.codec import decode_image, decode_npy
from hoi_factory.columns import as_declared, declared_encoding
from hoi_factory.datasets import IMAGE_ENCODINGS, encoding_of


def decode_cell(value: Any, field: pa.Field | None = None) -> Any:
    """A stored cell as a tensor where there is one: PNG/JPEG -> uint8 (C, H, W) (a mask: (1, H, W) of 0/255),
    .npy -> its array, numeric arrays -> a tensor of the column's declared shape (floats as float32; a flat
    vector of a version written before shapes were declared is reshaped). Other bytes (meshes), strings, string
    lists and scalars pass through. `field`: the column's schema field (its encoding and shape); without it,
    bytes are judged by their leading bytes and lists keep their nesting."""
    if isinstance(value, bytes):
        encoding = (declared_encoding(field) if field is not None else None) or encoding_of(value)
        if encoding in IMAGE_ENCODINGS:
            image = decode_image(value)
            image = image[:, :, None] if image.ndim == 2 else image
            return torch.from_numpy(np.array(image.transpose(2, 0, 1)))  # a writable, contiguous copy
        if encoding == "npy":
            return torch.from_numpy(np.array(decode_npy(value)))  # a copy: np.load's may be read-only
        return value
    if isinstance(value, list):
        try:
            array = as_declared(field, value) if field is not None else np.asarray(value)
        except ValueError:  # ragged nesting: no tensor
            return value
        if array.dtype.kind == "f":
            return torch.from_numpy(array.astype(np.float32))
        if array.dtype.kind in "iub":
            return torch.from_numpy(np.array(array))
    return value


def decode_row(row: dict[str, Any], schema: pa.Schema | None = None) -> dict[str, Any]:
    """Every cell of a row through `decode_cell` (with its field of `schema`, when given); usable as
    `to_torch(transform=decode_row)`."""
    return {name: decode_cell(value, schema.field(name) if schema is not None else None)
            for name, value in row.items()}


class ParquetTorchDataset(torch_data.Dataset):
    """Map-style: index -> row dict (passed through `transform`). Keeps the last shard read in memory, so it suits
    random access and in-order reading; for shuffled epochs use `ShardStream`."""

    def __init__(self, version, columns: list[str] | None = None, transform: Callable[[dict], Any] | None = None):
        self.version = version
        self.columns = columns
        self.transform = transform
        self.starts = []
        total = 0
        for shard in version.shards:
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


def _distributed() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardStream(torch_data.IterableDataset):
    """Each epoch: the shards (shuffled by `seed` and the epoch when `shuffle`) are dealt round-robin to every
    (rank, DataLoader worker) reader; each reader reads its shards once, in that order, and yields their rows
    through a shuffle buffer of `buffer_size` rows. Every sample is yielded once per epoch across all readers.

    Call `set_epoch(n)` before each epoch, as with DistributedSampler: all ranks and workers must agree on the
    shard order, so it comes from (seed, epoch), never from a per-process random state. Ranks get whole shards,
    so their sample counts can differ by up to a shard's rows (use DDP's `join` or equal-sized shards).
    """

    def __init__(self, version, columns: list[str] | None = None, *, shuffle: bool = False, seed: int = 0,
                 buffer_size: int = 1000, decode: bool = True, transform: Callable[[dict], Any] | None = None,
                 rank: int | None = None, world_size: int | None = None):
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.version = version
        self.columns = columns
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_size = buffer_size
        self.decode = decode
        self.transform = transform
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._schema: pa.Schema | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard_order(self) -> list[int]:
        """The epoch's shard order (shards without samples left out), the same in every process."""
        order = [i for i, shard in enumerate(self.version.shards) if shard.rows]
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def shards_for(self, rank: int, world_size: int, worker: int, num_workers: int) -> list[int]:
        """The shards one reader (a rank's DataLoader worker) reads this epoch."""
        return self.shard_order()[rank * num_workers + worker :: world_size * num_workers]

    def rows(self, shards: list[int], reader: int = 0) -> Iterator[dict]:
        """The rows of `shards`, each shard read once, through the shuffle buffer (when shuffling)."""
        rng = random.Random(f"{self.seed}:{self.epoch}:{reader}")
        buffer: list[dict] = []
        for shard in shards:
            table = self.version.read_shard(shard, self.columns)
            self._schema = table.schema  # the shards share one schema: its fields tell the decoders what cells hold
            for row in table.to_pylist():
                if not self.shuffle:
                    yield self._prepared(row)
                    continue
                if len(buffer) < self.buffer_size:
                    buffer.append(row)
                    continue
                slot = rng.randrange(len(buffer))  # out goes a random buffered row, in goes the new one
                buffer[slot], row = row, buffer[slot]
                yield self._prepared(row)
        rng.shuffle(buffer)
        for row in buffer:
            yield self._prepared(row)

    def _prepared(self, row: dict) -> Any:
        row = decode_row(row, self._schema) if self.decode else row
        return self.transform(row) if self.transform else row

    def __iter__(self) -> Iterator[Any]:
        rank, world_size = _distributed()
        rank = rank if self.rank is None else self.rank
        world_size = world_size if self.world_size is None else self.world_size
        info = torch_data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        yield from self.rows(self.shards_for(rank, world_size, worker, num_workers),
                             reader=rank * num_workers + worker)
