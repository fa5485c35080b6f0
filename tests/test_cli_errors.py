"""The CLI explains itself: `run PIPELINE --help` lists the settings, mistyped names get a 'did you mean', and
every user error is one line naming the fix, exit code 2, no traceback, found before Prefect or Ray start."""

import os
import subprocess

import pytest
from typer.testing import CliRunner

from flows import cli as cli_module
from flows.cli import app
from support.network import free_port, moto_server
from support.processes import venv_executable

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Wide enough that rich wraps neither a message nor a settings table: what is one line stays one line."""
    monkeypatch.setattr(cli_module.console, "width", 400)


def cli(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def user_error(*args) -> str:
    """The message of a command that must fail as a user error: exit code 2, no traceback."""
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output.strip()


def one_line(*args) -> str:
    message = user_error(*args)
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: ")
    return message


@pytest.fixture(scope="module")
def store_with_synthetic(tmp_path_factory):
    """A local store holding synthetic/v1 (made by the CLI, in-process)."""
    url = str(tmp_path_factory.mktemp("cli-errors") / "store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOI_STORE_URL", url)
        made = cli("run", "synthetic", "count=3", "work_ms=0", "--no-prefect")
    assert made.exit_code == 0, made.output
    return url


@pytest.fixture
def synthetic_env(store_with_synthetic, monkeypatch):
    monkeypatch.setenv("HOI_STORE_URL", store_with_synthetic)
    return store_with_synthetic


# -- run PIPELINE --help ---------------------------------------------------------------------------------------

def settings_rows(output: str) -> dict[str, list[str]]:
    """setting -> [type, default, description], from the rows of the settings table."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 4 and cells[0] and cells[0] != "setting":
            rows.setdefault(cells[0], []).append(cells[1:])
    return rows


def test_run_help_lists_every_setting_of_the_pipeline_with_type_default_and_description():
    from tasks.synthetic.pipeline import SyntheticConfig

    result = cli("run", "synthetic", "--help")
    assert result.exit_code == 0, result.output
    rows = settings_rows(result.output)
    sections = {"execution", "output"}
    expected = [name for name in SyntheticConfig.model_fields if name not in sections]
    expected += [f"{section}.{name}" for section in sections
                 for name in type(getattr(SyntheticConfig(), section)).model_fields]
    assert sorted(rows) == sorted(expected)
    for name, field in SyntheticConfig.model_fields.items():
        if name not in sections:
            (shown_type, default, description), = rows[name]
            assert shown_type.startswith(field.annotation.__name__)
            assert (default, description) == (str(field.default), field.description or "")
    assert rows["count"][0][0] == "int (>= 1, <= 10000000)"
    assert rows["execution.executor"] == [["auto | local | ray", "auto",
                                           "auto: in-process for small plans (<= local_max_items), Ray otherwise"]]
    assert rows["output.version"][0][:2] == ["str | null", "null"]
    keys = list(rows)
    assert keys.index("accelerator_ms") < keys.index("seed") < keys.index("execution.workers")  # its own first


def test_run_help_lists_each_variants_own_settings():
    result = cli("run", "ho3pairs", "--help")
    assert result.exit_code == 0, result.output
    rows = settings_rows(result.output)
    assert rows["source"] == [["one of folder | hoi4d | video | hogsa", "folder",
                               "input layout (tasks/ho3pairs/sources.py)"]]
    assert rows["source.frame_rate"] == [["float (> 0, <= 120)", "1.0", "(source=video) frames sampled per second"]]
    assert rows["inputs"][0][1] == "required"
    # one row per variant that has the field: hands=mediapipe and hands=detectron2 both take a model
    assert [row[2].split(")")[0] for row in rows["hands.model"]] == ["(hands=mediapipe", "(hands=detectron2"]
    assert "hands.kind" not in rows


def test_run_help_without_a_pipeline_names_them():
    from flows.registry import PIPELINES

    result = cli("run", "--help")
    assert result.exit_code == 0 and f"pipelines: {', '.join(sorted(PIPELINES))}" in result.output
    assert "run PIPELINE --help" in result.output and "│ setting" not in result.output


# -- did you mean ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["run", "synthtic"], "unknown pipeline 'synthtic'; did you mean synthetic? (available: affordance-evaluation, "),
    (["run", "synthetic", "cont=3"], "cont: Extra inputs are not permitted (got 3); did you mean count?"),
    (["run", "synthetic", "execution.wokers=2"],
     "execution.wokers: Extra inputs are not permitted (got 2); did you mean execution.workers?"),
    (["run", "synthetic", "exection.workers=2"], "exection: Extra inputs are not permitted; did you mean execution?"),
    (["run", "ho3pairs", "inputs=x", "source=vdeo"],
     "source is one of folder, hoi4d, video, hogsa, not 'vdeo'; did you mean video?"),
    (["run", "ho3pairs", "inputs=x", "source=video", "source.frame_rte=2"],
     "source=video has no field 'frame_rte'; did you mean source.frame_rate? (source=video takes: frame_rate, "),
])
def test_a_mistyped_pipeline_or_key_gets_the_closest_name(local_store_env, args, message):
    assert message in user_error(*args)


def test_a_name_close_to_nothing_gets_no_guess(local_store_env):
    assert "did you mean" not in user_error("run", "synthetic", "zzzz=1")
    assert "did you mean" not in one_line("run", "no-such-pipeline")


def test_a_message_quoting_brackets_shows_them():
    """Rich would read `[1, 2]` as markup and drop it."""
    assert "count: Input should be a valid integer (got [1, 2])" in user_error("run", "synthetic", "count=[1, 2]")


def test_a_mistyped_dataset_gets_the_closest_and_the_list(synthetic_env):
    expected = (f"error: no published version of dataset 'synthtic' in {synthetic_env}; did you mean synthetic? "
                "(datasets there: synthetic)")
    assert one_line("datasets", "show", "synthtic") == expected
    assert one_line("datasets", "show", "synthetic/v2") == (
        f"error: dataset synthetic/v2 is not published in {synthetic_env} (published versions: v1)")
    assert one_line("models", "show", "anything") == (
        f"error: no published version of model 'anything' in {synthetic_env} (models there: none)")


def test_a_missing_parent_dataset_names_the_ones_there_before_any_work(synthetic_env):
    message = one_line("run", "chorus-occupancy", "views=synthtic", "--no-prefect")
    assert "dataset 'synthtic'" in message and "did you mean synthetic? (datasets there: synthetic)" in message


def test_a_missing_input_folder_is_one_line_without_a_run(local_store_env, tmp_path):
    message = one_line("run", "ingest", f"source={tmp_path / 'nowhere'}", "--no-prefect")
    assert message == f"error: source '{tmp_path / 'nowhere'}' is not a folder"


# -- train -----------------------------------------------------------------------------------------------------

def test_train_checks_its_datasets_before_prefect_and_never_retries(synthetic_env, caplog):
    message = one_line("train", "layoutnet", "datasets=[synthtic]", "model=m", "steps=1")
    assert "no published version of dataset 'synthtic'" in message and "did you mean synthetic?" in message
    assert "Retry" not in caplog.text and "flow run" not in caplog.text.lower()  # no flow run, no task retries
    assert "did you mean layoutnet?" in one_line("train", "layoutnt", "datasets=[synthetic]", "model=m")


def test_user_errors_in_a_training_task_are_not_retried():
    from prefect.states import Failed

    from flows.runner import retry_unless_user_error
    from flows.training import fit
    from hoi_factory.storage import StoreError

    assert fit.retry_condition_fn is retry_unless_user_error
    assert not retry_unless_user_error(fit, None, Failed(data=StoreError("no published version of dataset 'x'")))
    assert retry_unless_user_error(fit, None, Failed(data=ConnectionError("worker lost")))


# -- stores ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["datasets", "ls"], ["models", "ls"], ["datasets", "show", "x"],
                                  ["datasets", "validate", "x"], ["models", "show", "x"]])
def test_reading_a_local_store_that_is_not_there_fails_and_does_not_make_it(tmp_path, monkeypatch, args):
    missing = tmp_path / "no-store"
    monkeypatch.setenv("HOI_STORE_URL", str(missing))
    assert one_line(*args) == (f"error: store {missing} does not exist: set HOI_STORE_URL to your store, or make "
                               "one with `hoi-factory run` or `hoi-factory demo`")
    assert not missing.exists()


def test_status_says_the_store_is_not_there_and_still_succeeds(tmp_path, monkeypatch):
    monkeypatch.setenv("HOI_STORE_URL", str(tmp_path / "no-store"))
    result = cli("status", "--runs", "0")
    assert result.exit_code == 0 and "store unusable: store" in result.output and "does not exist" in result.output
    assert not (tmp_path / "no-store").exists()


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch):
    """An S3 store on moto's endpoint, with credentials set; tests take them away or break the store."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("HOI_S3_ENDPOINT_URL", moto_endpoint)
    return monkeypatch


def test_an_s3_store_without_credentials_says_what_to_set(s3_env, s3_store_env, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        s3_env.delenv(name, raising=False)
    s3_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))  # nor any other source botocore asks
    s3_env.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3_env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    expected = (f"error: {s3_store_env}: no S3 credentials found (Unable to locate credentials): set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    assert one_line("datasets", "ls") == expected
    assert one_line("run", "synthetic", "count=2", "--no-prefect") == expected  # a run: before any work


@pytest.fixture(scope="module")
def s3_endpoint_checking_keys():
    """moto's server with IAM checks on from the first request: every access key is unknown to it."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as url:
        yield url


def test_an_s3_store_refusing_the_credentials_says_what_to_check(s3_env, s3_endpoint_checking_keys):
    s3_env.setenv("HOI_S3_ENDPOINT_URL", s3_endpoint_checking_keys)
    s3_env.setenv("HOI_STORE_URL", "s3://factory/store")
    assert one_line("datasets", "ls") == (
        "error: s3://factory/store refused access (The AWS Access Key Id you provided does not exist in our "
        "records.): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions")


def test_an_s3_store_whose_bucket_is_not_there_says_so(s3_env, moto_endpoint):
    s3_env.setenv("HOI_STORE_URL", "s3://never-made-bucket/store")
    expected = (f"error: s3://never-made-bucket/store: bucket 'never-made-bucket' does not exist at {moto_endpoint}: "
                "check HOI_STORE_URL and HOI_S3_ENDPOINT_URL, or create the bucket")
    assert one_line("datasets", "show", "x") == expected
    assert one_line("run", "synthetic", "count=2", "--no-prefect") == expected


def test_an_s3_store_in_a_bucket_that_is_there_but_empty_is_an_empty_store(s3_store_env):
    result = cli("datasets", "ls")
    assert result.exit_code == 0 and s3_store_env in "".join(result.output.split())  # the table's title, wrapped


def test_an_unreachable_store_fails_after_the_short_check_not_the_run_budget(s3_env):
    """In a process of its own: its retry warnings are logged, and in this one Prefect's log handlers may still
    point at the stream of an earlier in-process invocation."""
    env = {**os.environ, "HOI_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
           "HOI_STORE_URL": "s3://factory/store", "HOI_STORE_RETRY_SECONDS": "1", "AWS_MAX_ATTEMPTS": "1",
           "COLUMNS": "400"}
    done = subprocess.run([venv_executable("hoi-factory"), "datasets", "ls"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    message = done.stdout.strip()
    assert len(message.splitlines()) == 1
    assert message.startswith("error: s3://factory/store did not answer for 1 s (check): Could not connect")
    assert message.endswith("check HOI_STORE_URL, HOI_S3_ENDPOINT_URL and the network (HOI_STORE_RETRY_SECONDS: "
                            "how long to wait)")

