import pytest

from conftest import REPO, station_cli, write_config
from station.config import Settings, load_settings, read_secret
from station.errors import ConfigError


def test_defaults_without_a_file():
    settings = load_settings(None)
    assert settings == Settings()
    assert settings.detection.threshold == 0.5 and settings.windowing.hop_seconds == 1.5


def test_the_shipped_config_is_valid_and_documents_every_default():
    shipped = load_settings(REPO / "config.yaml")
    defaults = Settings()
    for section in ("station", "audio", "windowing", "detection", "location", "replay", "alerts", "mqtt", "logging"):
        assert getattr(shipped, section) == getattr(defaults, section), section
    assert shipped.model.model_dump(exclude={"path"}) == defaults.model.model_dump(exclude={"path"})
    assert shipped.model.path == REPO / defaults.model.path
    assert shipped.storage.database == REPO / defaults.storage.database


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    path = write_config(tmp_path / "c.yaml", "storage:\n  database: db/st.db\nmodel:\n  path: m\n")
    settings = load_settings(path)
    assert settings.storage.database == tmp_path / "db" / "st.db"
    assert settings.model.path == tmp_path / "m"


@pytest.mark.parametrize("text, expected", [
    ("detection:\n  threshold: 1.5\n", "c.yaml:2: detection.threshold: Input should be less than or equal to 1"),
    ("detection:\n  treshold: 0.5\n", "c.yaml:2: detection.treshold: unknown key"),
    ("station:\n  id: ok\nwindowing:\n  hop_seconds: -1\n", "c.yaml:4: windowing.hop_seconds: Input should be greater than 0"),
    ("audio:\n  channels: two\n", "c.yaml:2: audio.channels: Input should be a valid integer"),
    ("detection:\n  species_thresholds:\n    Tawny Owl: 2\n", "c.yaml:2: detection.species_thresholds"),
    ("detection: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("mystery:\n  a: 1\n", "c.yaml:1: mystery: unknown key"),
])
def test_bad_config_names_the_key_and_line(tmp_path, text, expected):
    with pytest.raises(ConfigError) as error:
        load_settings(write_config(tmp_path / "c.yaml", text))
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_config_check_command_exit_codes(tmp_path):
    good = write_config(tmp_path / "good.yaml", "detection:\n  threshold: 0.7\n")
    bad = write_config(tmp_path / "bad.yaml", "detection:\n  threshold: 7\n")
    ok = station_cli("config", "check", str(good), cwd=tmp_path)
    assert ok.returncode == 0 and "ok" in ok.stdout
    failed = station_cli("config", "check", str(bad), cwd=tmp_path)
    assert failed.returncode == 2
    assert failed.stderr.strip().count("\n") == 0
    assert "bad.yaml:2: detection.threshold" in failed.stderr
    missing = station_cli("config", "check", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "cannot read config" in missing.stderr


def test_secrets_come_from_credentials_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("STATION_MQTT_PASSWORD", "from-env")
    assert read_secret("mqtt_password") == "from-env"
    (tmp_path / "mqtt_password").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_secret("mqtt_password") == "from-credential"
    monkeypatch.delenv("STATION_MQTT_PASSWORD")
    assert read_secret("xc_key") is None


def test_a_thresholds_file_is_merged_under_the_configs_own_thresholds(tmp_path):
    (tmp_path / "cal.yaml").write_text("# from station xc calibrate\nStrix aluco: 0.35\nPica pica: 0.6\n")
    path = write_config(tmp_path / "c.yaml", "detection:\n  thresholds_file: cal.yaml\n"
                                             "  species_thresholds:\n    Pica pica: 0.9\n")
    thresholds = load_settings(path).detection.species_thresholds
    assert thresholds == {"Strix aluco": 0.35, "Pica pica": 0.9}


@pytest.mark.parametrize("content, message", [
    (None, "No such file"), ("Strix aluco: 7\n", "expected a mapping"), ("[1, 2]\n", "expected a mapping")])
def test_a_bad_thresholds_file_names_the_key(tmp_path, content, message):
    if content is not None:
        (tmp_path / "cal.yaml").write_text(content)
    path = write_config(tmp_path / "c.yaml", "detection:\n  thresholds_file: cal.yaml\n")
    with pytest.raises(ConfigError, match=f"detection.thresholds_file: .*cal.yaml: {message}"):
        load_settings(path)
