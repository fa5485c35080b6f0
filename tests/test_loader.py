"""The streaming torch loader: each shard read once per epoch, every sample once across DDP ranks x DataLoader
workers, shuffled differently per epoch and seed; cells decoded to tensors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hoi_factory import ids
from hoi_factory.torch_views import decode_row
from support.encoded_pipeline import REJECTED_INDEX_REMAINDER, make_encoded_version, sample_arrays

COUNT = 40  # 30 samples in 14 shards of 3 inputs


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    return make_encoded_version(str(tmp_path_factory.mktemp("store")), count=COUNT, shard_size=3)


@pytest.fixture
def read_log(encoded, tmp_path, monkeypatch):
    """Every data shard read, logged to a file: DataLoader workers are forked processes, which inherit the patch."""
    log = tmp_path / "reads.log"
    log.touch()
    read_bytes = encoded.store.read_bytes

    def logged(*parts):
        if parts[-1].startswith("data/"):  # (area, name, version, "data/<shard>.parquet")
            with open(log, "a") as handle:
                handle.write(parts[-1] + "\n")
        return read_bytes(*parts)

    monkeypatch.setattr(encoded.store, "read_bytes", logged)
    return log


def epoch_order(stream_for_rank, world_size: int, num_workers: int, epoch: int) -> list[str]:
    order = []
    for rank in range(world_size):
        stream = stream_for_rank(rank)
        stream.set_epoch(epoch)
        loader = DataLoader(stream, batch_size=None, num_workers=num_workers)
        order += [row["sample_id"] for row in loader]
    return order


EPOCHS_IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], str(Path(sys.argv[1]).parent)]
from hoi_factory.config import Settings
from hoi_factory.datasets import DatasetStore
from hoi_factory.storage import Store
from test_loader import epoch_order
encoded = DatasetStore(Store.from_settings(Settings(store_url=sys.argv[2]))).open_ref(sys.argv[3])
log = Path(sys.argv[4])
read_bytes = encoded.store.read_bytes
def logged(*parts):
    if parts[-1].startswith("data/"):
        with open(log, "a") as handle:
            handle.write(parts[-1] + "\\n")
    return read_bytes(*parts)
encoded.store.read_bytes = logged
results = []
for seed, epoch in ((0, 0), (0, 1), (1, 0), (0, 1)):
    log.write_text("")
    order = epoch_order(lambda rank: encoded.to_torch_stream(["sample_id"], shuffle=True, seed=seed, buffer_size=8,
                                                             rank=rank, world_size=2), 2, 2, epoch)
    results.append({"order": order, "reads": log.read_text().split()})
print(json.dumps(results))
"""


def test_every_sample_once_per_epoch_across_ranks_and_workers_each_shard_read_once(encoded, tmp_path):
    """Forked DataLoader workers, in a fresh process: a fork of the test process (threads of earlier tests'
    libraries) once died at exit."""
    all_ids = encoded.to_arrow(["sample_id"]).column("sample_id").to_pylist()
    assert len(all_ids) == 30 and sum(1 for s in encoded.shards if s.rows) == 14
    done = subprocess.run([sys.executable, "-c", EPOCHS_IN_A_FRESH_PROCESS, str(Path(__file__).parent),
                           encoded.store.url, encoded.ref, str(tmp_path / "reads.log")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = json.loads(done.stdout.strip().splitlines()[-1])
    for epoch in epochs:
        assert sorted(epoch["order"]) == sorted(all_ids)  # each sample once: none lost, none twice
        assert sorted(epoch["reads"]) == sorted(s.file for s in encoded.shards if s.rows)  # each shard once
    first, next_epoch, other_seed, again = (epoch["order"] for epoch in epochs)
    assert first != next_epoch and first != other_seed
    assert again == next_epoch  # (seed, epoch) decides


def test_readers_split_the_shards_without_overlap(encoded):
    stream = encoded.to_torch_stream(shuffle=True, seed=3)
    readers = [stream.shards_for(rank, 2, worker, 3) for rank in range(2) for worker in range(3)]
    dealt = sorted(shard for shards in readers for shard in shards)
    assert dealt == [i for i, s in enumerate(encoded.shards) if s.rows]
    assert max(map(len, readers)) - min(map(len, readers)) <= 1


def test_unshuffled_stream_is_the_stored_order_and_reads_like_the_map_style_view(encoded, read_log):
    read_log.write_text("")
    streamed = [row["sample_id"] for row in encoded.to_torch_stream(["sample_id"])]
    assert streamed == encoded.to_arrow(["sample_id"]).column("sample_id").to_pylist()
    assert len(read_log.read_text().split()) == 14 * 2  # to_arrow read each shard once too
    read_log.write_text("")
    mapped = encoded.to_torch(["sample_id"])
    shuffled = list(DataLoader(mapped, batch_size=None, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert sorted(r["sample_id"] for r in shuffled) == sorted(streamed)
    assert len(read_log.read_text().split()) > 14  # what the stream avoids: a shuffled map-style view re-reads


def test_decoded_cells_are_the_arrays_the_pipeline_encoded(encoded):
    index_of = {ids.sample_id(encoded.manifest.config_hash, "encoded", i): i for i in range(COUNT)}
    rows = list(encoded.to_torch_stream(shuffle=True, buffer_size=4))
    assert len(rows) == sum(1 for i in range(COUNT) if i % 4 != REJECTED_INDEX_REMAINDER)
    for row in rows:
        truth = sample_arrays(row["seed"], index_of[row["sample_id"]])
        assert row["image"].dtype == torch.uint8 and row["image"].shape == (3, 6, 8)
        assert torch.equal(row["image"], torch.from_numpy(truth["image"]).permute(2, 0, 1))
        assert row["mask"].shape == (1, 6, 8)
        assert torch.equal(row["mask"][0] > 127, torch.from_numpy(truth["mask"]))
        assert torch.equal(row["depth"], torch.from_numpy(truth["depth"]))
        assert row["K"].shape == (3, 3) and torch.equal(row["K"], torch.from_numpy(truth["K"]))
        if truth["overlay"] is None:
            assert row["overlay"] is None
        else:
            assert torch.equal(row["overlay"], torch.from_numpy(truth["overlay"])[None])
        assert isinstance(row["label"], str) and isinstance(row["sample_id"], str)
    raw = encoded.to_torch(transform=decode_row)[0]  # the same decoders on the map-style view
    assert raw["K"].shape == (3, 3) and raw["image"].dtype == torch.uint8
    assert np.isclose(float(raw["score"]), encoded.to_arrow(["score"]).column("score")[0].as_py())
