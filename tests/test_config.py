import pytest

from hoi_factory.config import ConfigError, Settings, load_run_config
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
