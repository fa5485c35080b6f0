from typing import Literal

import pytest
from pydantic import Field

from hoi_factory.config import ConfigError, RunConfig, Settings, Variant, load_run_config
from tasks.images.ingest import IngestConfig
from tasks.synthetic.pipeline import SyntheticConfig


def test_yaml_file_and_overrides_build_a_typed_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("source: /data/images\nmax_side: 256\nexecution:\n  workers: 3\n")
    config = load_run_config(IngestConfig, path, ["max_side=128", "execution.executor=local", "output.version=night-1"])
    assert config.source == "/data/images"
    assert config.max_side == 128  # the override wins over the file
    assert config.execution.workers == 3 and config.execution.executor == "local"
    assert config.output.version == "night-1"


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["count=10", "execution.shard_sise=3"], "execution.shard_sise"),  # a typo: unknown field
        (["count=ten"], "count"),  # wrong type
        (["count=0"], "count"),  # out of range
        (["execution.executor=spark"], "execution.executor"),  # not a choice
    ],
)
def test_a_wrong_field_fails_naming_it(overrides, named):
    with pytest.raises(ConfigError) as error:
        load_run_config(SyntheticConfig, None, overrides)
    assert f"  {named}:" in str(error.value)


def test_missing_required_field_and_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="source: Field required"):
        load_run_config(IngestConfig, None, [])
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(IngestConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_run_config(IngestConfig, bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_run_config(IngestConfig, None, ["source"])


def test_config_hash_ignores_how_and_where_but_not_what():
    base = SyntheticConfig(count=5)
    elsewhere = SyntheticConfig(count=5, execution={"executor": "local", "workers": 7}, output={"version": "x"})
    assert base.config_hash() == elsewhere.config_hash()
    assert base.config_hash() != SyntheticConfig(count=6).config_hash()
    assert base.config_hash() != SyntheticConfig(count=5, seed=1).config_hash()


def test_settings_come_from_the_environment_and_hide_secrets(monkeypatch):
    monkeypatch.setenv("HOI_STORE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    monkeypatch.setenv("HOI_S3_ENDPOINT_URL", "http://minio:9000")
    settings = Settings()
    assert settings.ray_address == "10.0.0.1:6379"
    options = settings.storage_options()
    assert options["secret"] == "super-secret-value"
    assert options["client_kwargs"]["endpoint_url"] == "http://minio:9000"
    assert "super-secret-value" not in repr(settings) and "super-secret-value" not in str(settings.model_dump())
    assert settings.storage_options("/local/folder") == {}


class Folder(Variant):
    kind: Literal["folder"] = "folder"
    object_class: str = "object"


class Video(Variant):
    kind: Literal["video"] = "video"
    frame_rate: float = Field(1.0, gt=0)
    object_class: str = "object"


class Provided(Variant):
    kind: Literal["provided"] = "provided"


class Detector(Variant):
    kind: Literal["detector"] = "detector"
    model: str = Field(..., description="the detector's weights")


class ChoosingConfig(RunConfig):
    source: Folder | Video = Field(default_factory=Folder, discriminator="kind")
    hands: Provided | Detector = Field(default_factory=Provided, discriminator="kind")


def test_a_variant_is_picked_by_its_kind_alone_and_its_fields_set_by_dotted_overrides():
    assert load_run_config(ChoosingConfig, None, []).source == Folder()
    assert load_run_config(ChoosingConfig, None, ["source=video"]).source == Video()
    for overrides in (["source=video", "source.frame_rate=2"], ["source.frame_rate=2", "source=video"]):
        assert load_run_config(ChoosingConfig, None, overrides).source == Video(frame_rate=2)
    assert load_run_config(ChoosingConfig, None, ["source.object_class=mug"]).source == Folder(object_class="mug")
    assert ChoosingConfig(source="video", hands={"kind": "detector", "model": "m"}).hands == Detector(model="m")
    # The config hash sees the kind and every field of the variant chosen.
    assert ChoosingConfig(source="video").content_dict()["source"] == {"kind": "video", "frame_rate": 1.0,
                                                                        "object_class": "object"}


def test_yaml_writes_a_variant_as_its_kind_or_a_mapping(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("source: video\n")
    assert load_run_config(ChoosingConfig, path).source == Video()
    path.write_text("source: {kind: video, frame_rate: 2}\n")
    assert load_run_config(ChoosingConfig, path).source == Video(frame_rate=2)
    assert load_run_config(ChoosingConfig, path, ["source.object_class=mug"]).source == \
        Video(frame_rate=2, object_class="mug")
    assert load_run_config(ChoosingConfig, path, ["source=folder"]).source == Folder()  # another kind: its defaults
    path.write_text("source: {object_class: mug}\n")  # no kind: the default's
    assert load_run_config(ChoosingConfig, path).source == Folder(object_class="mug")


@pytest.mark.parametrize("overrides, message", [
    (["source=vidoe"], "  source: Value error, source is one of folder, video, not 'vidoe'"),
    (["source.kind=stream"], "  source: Value error, source is one of folder, video, not 'stream'"),
    (["source.frame_rate=2"], "  source: Value error, source=folder has no field 'frame_rate'; frame_rate belongs "
                              "to source=video (source=folder takes: object_class)"),
    (["hands=provided", "hands.model=m"], "hands=provided has no field 'model'; model belongs to hands=detector "
                                          "(hands=provided takes: no fields)"),
    (["source=video", "source.frame_rate=0"], "  source.frame_rate: Input should be greater than 0 (got 0)"),
    (["source=video", "source.frame_rate=true"], "  source: Value error, frame_rate: expected a number"),
    (["hands=detector"], "  hands.model: Field required (the detector's weights)"),
])
def test_a_wrong_variant_or_variant_field_fails_naming_the_key_and_the_choices(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_run_config(ChoosingConfig, None, overrides)
    assert message in str(error.value)
