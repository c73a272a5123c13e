"""Settings from the environment and TOML, with one-line errors that never show a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.settings import (
    SettingsError,
    check_environment_names,
    load_settings,
    settings_reference,
)
from pipelines.storage import Storage


@pytest.fixture(autouse=True)
def _clean_env(clean_env: None) -> None:
    """Every test here reads settings from a clean environment."""


def test_defaults_need_no_key_and_use_the_local_server() -> None:
    s = load_settings()
    assert s.llm.base_url is None and s.llm.api_key is None
    assert (s.max_parallel_episodes, s.max_parallel_scenes) == (3, 8)
    assert s.llm.burst_s == 1.0 and s.llm.rpm == 500


def test_documented_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "SHOWRUNNER_LLM__BASE_URL": "https://api.example.com/v1",
        "SHOWRUNNER_LLM__API_KEY": "sk-test-secret",
        "SHOWRUNNER_LLM__MODEL": "gpt-test",
        "SHOWRUNNER_LLM__RPM": "120",
        "SHOWRUNNER_LLM__TPM": "9000",
        "SHOWRUNNER_LLM__MAX_INFLIGHT": "7",
        "SHOWRUNNER_LLM__PRICES__OUTPUT_PER_1M_TOKENS": "2.5",
        "SHOWRUNNER_MAX_PARALLEL_EPISODES": "4",
        "SHOWRUNNER_MAX_PARALLEL_SCENES": "2",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert str(s.llm.base_url) == "https://api.example.com/v1"
    assert s.llm.api_key is not None and s.llm.api_key.get_secret_value() == "sk-test-secret"
    assert (s.llm.model, s.llm.rpm, s.llm.tpm, s.llm.max_inflight) == ("gpt-test", 120, 9000, 7)
    # A partial prices table lays over the kind's list prices instead of zeroing them.
    assert s.llm.prices.output_per_1m_tokens == 2.5 and s.llm.prices.input_per_1m_tokens == 0.10
    assert (s.max_parallel_episodes, s.max_parallel_scenes) == (4, 2)
    assert "sk-test-secret" not in repr(s) and "sk-test-secret" not in str(s.model_dump())


def test_toml_file_and_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "showrunner.toml"
    config.write_text('max_parallel_scenes = 5\n[llm]\nrpm = 100\nmodel = "from-file"\n')
    monkeypatch.setenv("SHOWRUNNER_LLM__MODEL", "from-env")
    s = load_settings(config)
    assert (s.max_parallel_scenes, s.llm.rpm, s.llm.model) == (5, 100, "from-env")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SHOWRUNNER_LLM__RPM": "-5"}, "llm.rpm = '-5'"),
        ({"SHOWRUNNER_LLM__BASE_URL": "not a url"}, "llm.base_url = 'not a url'"),
        ({"SHOWRUNNER_MAX_PARALLEL_SCENES": "0"}, "max_parallel_scenes = '0'"),
        ({"SHOWRUNNER_TTS__BURST_S": "abc"}, "tts.burst_s = 'abc'"),
    ],
)
def test_bad_environment_values_name_field_and_value(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert needle in message and "\n" not in message


def test_bad_toml_files(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[llm]\nrpn = 5\n")
    with pytest.raises(SettingsError, match="unknown setting 'llm.rpn'"):
        load_settings(unknown)
    broken = tmp_path / "broken.toml"
    broken.write_text("[llm\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(broken)
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml")


def test_a_bad_api_key_value_is_masked(tmp_path: Path) -> None:
    config = tmp_path / "key.toml"
    config.write_text("[llm]\napi_key = 987654321\n")  # not a string: invalid
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert "llm.api_key = ***" in str(caught.value)
    assert "987654321" not in str(caught.value)


def test_extra_deployments_inherit_the_providers_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SHOWRUNNER_LLM__DEPLOYMENTS",
        '[{"base_url": "http://127.0.0.1:1/v1", "rpm": 5}, {"api_key": "k2"}]',
    )
    monkeypatch.setenv("SHOWRUNNER_LLM__TPM", "1000")
    first, second = load_settings().llm.resolved_deployments()
    assert (first.rpm, first.tpm, str(first.base_url)) == (5, 1000, "http://127.0.0.1:1/v1")
    assert second.base_url is None and second.rpm == 500 and second.tpm == 1000


def test_the_settings_doc_lists_every_setting() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "settings.md").read_text(encoding="utf-8")
    assert settings_reference() in doc, "regenerate with: showrunner config --reference"


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("SHOWRUNNER_LLM_BASE_URL", "SHOWRUNNER_LLM__BASE_URL"),  # one underscore for two
        ("SHOWRUNNER_MAX_PARALEL_EPISODES", "SHOWRUNNER_MAX_PARALLEL_EPISODES"),  # a typo
        ("SHOWRUNNER_MAX_PARALLEL_EPISODES__X", "SHOWRUNNER_MAX_PARALLEL_EPISODES"),
        ("SHOWRUNNER_LLM__BASEURL", "SHOWRUNNER_LLM__BASE_URL"),  # in a known table
        ("showrunner_tts_model", "SHOWRUNNER_TTS__MODEL"),  # the settings read any case
    ],
)
def test_an_unknown_environment_name_stops_with_the_closest_real_name(
    monkeypatch: pytest.MonkeyPatch, name: str, closest: str
) -> None:
    # Silently ignored, a misspelt base URL would run on the bundled placeholder server.
    monkeypatch.setenv(name, "sk-value-never-shown")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message == f"unknown setting {name} (did you mean {closest}?)"


def test_a_renamed_setting_names_its_new_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOWRUNNER_SERVICE__OUTPUT_DIR", "/mnt/showrunner/output")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == ("unknown setting SHOWRUNNER_SERVICE__OUTPUT_DIR "
                                 "(renamed: use SHOWRUNNER_STORAGE)")


def test_an_unknown_environment_name_like_no_setting_says_where_the_names_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOWRUNNER_ZZZZZZ", "1")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("unknown setting SHOWRUNNER_ZZZZZZ (")
    assert "did you mean" not in message and "showrunner config --reference" in message


def test_every_unknown_environment_name_is_named_on_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHOWRUNNER_LLM_RPM", "5")
    monkeypatch.setenv("SHOWRUNNER_TTS_RPM", "5")
    config = tmp_path / "ok.toml"
    config.write_text("[llm]\nrpm = 100\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(config)  # a config file does not excuse the environment
    message = str(caught.value)
    assert "SHOWRUNNER_LLM_RPM (did you mean SHOWRUNNER_LLM__RPM?)" in message
    assert "SHOWRUNNER_TTS_RPM (did you mean SHOWRUNNER_TTS__RPM?)" in message
    assert "\n" not in message


def test_every_documented_name_and_every_table_as_json_is_a_known_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    documented = [line.split("`")[1] for line in settings_reference().splitlines()[2:]]
    tables = ["SHOWRUNNER_LLM", "SHOWRUNNER_LLM__PRICES", "SHOWRUNNER_ENCODING",
              "SHOWRUNNER_SERVICE"]
    check_environment_names([*documented, *tables, "PATH", "RAY_ADDRESS"])
    # A whole table as JSON is a way pydantic-settings reads, so it is not refused.
    monkeypatch.setenv("SHOWRUNNER_LLM__PRICES", '{"per_image": 5}')
    assert load_settings().llm.prices.per_image == 5


def test_storage_defaults_to_a_local_out_folder() -> None:
    assert load_settings().storage == "out"


def test_storage_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOWRUNNER_STORAGE", "/mnt/showrunner/output")
    s = load_settings()
    assert s.storage == "/mnt/showrunner/output"
    assert s.open_storage().path("") == Path("/mnt/showrunner/output")
    # A file:// URL is the same local folder.
    assert load_settings(storage="file:///srv/out").open_storage().path("") == Path("/srv/out")


def test_object_storage_takes_its_endpoint_and_keys_as_secrets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOWRUNNER_STORAGE", "s3://bucket/episodes")
    monkeypatch.setenv("SHOWRUNNER_STATE_URL", "postgresql+asyncpg://u:pw@db/showrunner")
    monkeypatch.setenv("SHOWRUNNER_S3__ENDPOINT_URL", "http://minio.internal:9000")
    monkeypatch.setenv("SHOWRUNNER_S3__ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("SHOWRUNNER_S3__SECRET_ACCESS_KEY", "very-secret")
    s = load_settings()
    storage = s.open_storage()
    assert not storage.local and storage.where("ep/episode.mp4") == "s3://bucket/episodes/ep/episode.mp4"
    assert storage.options == {"endpoint_url": "http://minio.internal:9000",
                               "key": "AKIAEXAMPLE", "secret": "very-secret"}
    # Secrets are never shown: not in the settings' dump, nor the storage's repr.
    shown = repr(s) + str(s.model_dump()) + repr(storage)
    assert "very-secret" not in shown and "AKIAEXAMPLE" not in shown


def test_object_storage_without_keys_leaves_them_to_the_aws_chain() -> None:
    """An IAM role (a cluster's nodes, a pod's service account) needs no keys set here."""
    s = load_settings(storage="s3://bucket", state_url="postgresql+asyncpg://db/x")
    assert s.open_storage().options == {}


def test_object_storage_needs_a_state_store_that_is_not_a_file_in_it() -> None:
    with pytest.raises(SettingsError, match="with object storage, set SHOWRUNNER_STATE_URL"):
        load_settings(storage="s3://bucket/episodes")


@pytest.mark.parametrize(("storage", "message"), [
    ("nosuch://bucket/x", "no storage backend takes nosuch://"),
    ("s3://", "s3:// names no bucket"),
    ("file://", "file:// names no folder"),
])
def test_a_storage_no_backend_takes_is_refused_naming_why(storage: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(storage=storage, state_url="postgresql+asyncpg://db/x")
    assert message in str(caught.value) and "invalid setting storage" in str(caught.value)


def test_the_state_database_is_sqlite_in_the_absolute_storage_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.state_url is None
    # Absolute: the coordinator and the CLI must open the same file whatever their directories.
    assert s.state_database_url() == f"sqlite+aiosqlite:///{tmp_path.resolve()}/out/showrunner.db"
    elsewhere = tmp_path / "elsewhere"  # the CLI's --output
    assert (s.state_database_url(Storage(str(elsewhere)))
            == f"sqlite+aiosqlite:///{elsewhere.resolve()}/showrunner.db")


def test_a_state_url_wins_over_the_storage_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+asyncpg://showrunner:pw@db.internal:5432/showrunner"
    monkeypatch.setenv("SHOWRUNNER_STATE_URL", url)
    s = load_settings()
    assert s.state_database_url() == url and s.state_database_url(Storage("/other")) == url


@pytest.mark.parametrize(
    "url", ["postgresql://app:hunter2@db/showrunner", "sqlite:///hunter2.db", "hunter2"]
)
def test_a_state_url_with_another_driver_is_refused_naming_the_accepted_ones(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(state_url=url)
    message = str(caught.value)
    assert message == ("invalid setting state_url = ***: "
                       "must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    assert "hunter2" not in message  # the URL may carry a password


def test_the_state_url_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOWRUNNER_STATE_URL", "postgresql+asyncpg://app:hunter2@db/showrunner")
    s = load_settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert "hunter2" not in str(s.model_dump()) and "hunter2" not in s.model_dump_json()
