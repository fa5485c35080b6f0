"""Store primitives on a local folder and S3: atomic writes, exclusive creates, name checks."""

import pytest

from hoi_factory.config import Settings
from hoi_factory.storage import AlreadyExists, Store, StoreError, check_name


def test_writes_replace_whole_objects_and_leave_no_temp_files(store_env):
    store = Store.from_settings(Settings())
    store.write_bytes(b"first", "a", "b.bin")
    store.write_bytes(b"second", "a", "b.bin")
    assert store.read_bytes("a", "b.bin") == b"second"
    assert store.list_files("a") == ["b.bin"]
    assert store.list_dirs() == ["a"]


def test_exclusive_create_lets_exactly_one_writer_win(store_env):
    store = Store.from_settings(Settings())
    store.create_exclusive(b"mine", "lock.json")
    with pytest.raises(AlreadyExists):
        store.create_exclusive(b"yours", "lock.json")
    assert store.read_bytes("lock.json") == b"mine"


def test_missing_objects_raise_a_store_error_naming_them(local_store_env):
    store = Store.from_settings(Settings())
    with pytest.raises(StoreError, match="nothing-here.json does not exist"):
        store.read_json("nothing-here.json")


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "a\\b", "", " ", "x" * 101, "ümlaut", "-dash", ".", ".."])
def test_names_that_would_escape_or_confuse_paths_are_refused(name):
    with pytest.raises(StoreError, match="not allowed"):
        check_name(name, "dataset name")


def test_store_repr_never_shows_credentials():
    store = Store("memory://bucket", {"key": "AKIA", "secret": "hush-hush"})
    assert "hush-hush" not in repr(store)
