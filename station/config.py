"""Typed settings from config.yaml. Unknown keys and bad values fail with the key path and line.

Secrets never live in this file: `read_secret` takes them from systemd credentials
($CREDENTIALS_DIRECTORY/<name>) or the environment (STATION_<NAME>).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationSettings(Section):
    id: str = Field("field-station", pattern=r"^[A-Za-z0-9_.-]+$")


class StorageSettings(Section):
    database: Path = Path("data/station.db")


class ModelSettings(Section):
    path: Path = Path("models/bird_sounds_classification")
    variant: str = "fp32"  # "fp32" is model.onnx; any other name is model.<variant>.onnx
    threads: int = Field(2, ge=1, le=64)
    batch_size: int = Field(1, ge=1, le=256)
    sensitivity: float = Field(1.0, gt=0.0, le=1.5)  # sigmoid models only (BirdNET)


class AudioSettings(Section):
    device: str | int | None = None  # name (substring) or index; None: system default
    sample_rate: int = Field(48000, ge=8000, le=384000)
    channels: int = Field(1, ge=1, le=32)
    block_seconds: float = Field(0.5, gt=0.0, le=10.0)
    queue_seconds: float = Field(60.0, gt=0.0, le=3600.0)
    reconnect_max_seconds: float = Field(30.0, gt=0.0)
    stall_seconds: float = Field(5.0, gt=0.0)  # no callback for this long = device lost


class WindowSettings(Section):
    window_seconds: float | None = Field(None, gt=0.0)  # None: the model's own
    hop_seconds: float = Field(1.5, gt=0.0)
    tail_min_seconds: float = Field(1.0, ge=0.0)


class DetectionSettings(Section):
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    top_k: int = Field(3, ge=1, le=50)
    species_thresholds: dict[str, float] = {}
    thresholds_file: Path | None = None  # YAML {species: threshold}, e.g. from `station xc calibrate`
    include: list[str] = []
    exclude: list[str] = []
    merge_gap_seconds: float = Field(0.0, ge=0.0)

    @field_validator("species_thresholds")
    @classmethod
    def _thresholds_are_probabilities(cls, value: dict[str, float]) -> dict[str, float]:
        for name, threshold in value.items():
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold for {name!r} must be between 0 and 1")
        return value


class LocationSettings(Section):
    """BirdNET's range filter; needs a model folder with a range model."""

    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    week: int | None = Field(None, ge=-1, le=48)  # None: from the audio's date; -1: the whole year
    threshold: float = Field(0.03, ge=0.0, le=1.0)
    keep: list[str] = []  # species the filter must never remove (scientific or common names)

    @property
    def enabled(self) -> bool:
        return self.lat is not None and self.lon is not None


class ReplaySettings(Section):
    realtime: bool = False
    watch: bool = False
    poll_seconds: float = Field(5.0, gt=0.0)
    extensions: list[str] = [".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".aac"]
    chunk_seconds: float = Field(10.0, gt=0.0)


class TlsSettings(Section):
    ca_file: Path | None = None  # CA that signed the broker's certificate; None: the system's CAs
    cert_file: Path | None = None  # client certificate, for brokers that require one
    key_file: Path | None = None
    insecure: bool = False  # skip host name verification (test setups only)


class HomeAssistantSettings(Section):
    enabled: bool = False
    discovery_prefix: str = "homeassistant"


class MqttSettings(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None  # None: field-station-<station.id>
    keepalive: int = Field(60, ge=5, le=3600)
    username: str | None = None  # the password comes from read_secret("mqtt_password")
    tls: TlsSettings | None = None
    topic_prefix: str = Field("station", pattern=r"^[^#+]+$")
    reconnect_max_seconds: float = Field(60.0, gt=0)
    health_seconds: float = Field(60.0, gt=0)  # how often the retained health message is refreshed
    keep_sent_hours: float = Field(168.0, ge=0)  # sent messages are deleted from the outbox after this
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()


class AlertSettings(Section):
    enabled: bool = True
    rare_species: list[str] = []  # by label, scientific or common name
    low_confidence: float = Field(0.5, ge=0.0, le=1.0)  # a loud window whose best score is below this
    unknown_sound: float = Field(0.3, ge=0.0, le=1.0)  # ... and below this: nothing explains it
    loud_dbfs: float = Field(-35.0, le=0.0)  # how loud a window must be for those two
    new_species: bool = True  # NEW_SPECIES: first today (local time) and first ever at this station
    frequency_window_minutes: float = Field(60.0, gt=0)  # HIGH/LOW_FREQUENCY: activity in this window...
    baseline_windows: int = Field(24, ge=3)  # ... against this many previous windows of the same length
    min_history_hours: float = Field(24.0, ge=0)  # no frequency alerts before the station has this history
    high_sigma: float = Field(2.0, gt=0)
    low_sigma: float = Field(1.5, gt=0)
    min_count: int = Field(3, ge=1)  # HIGH_FREQUENCY needs at least this many detections in the window
    cooldown_minutes: float = Field(30.0, ge=0)  # per alert type and species
    type_cooldown_minutes: dict[str, float] = {}  # per type, e.g. {UNKNOWN_SOUND: 120}
    no_audio_seconds: float = Field(60.0, gt=0)  # health: no audio for this long
    lag_seconds: float = Field(30.0, gt=0)  # health: inference this far behind the microphone
    disk_free_mb: float = Field(500.0, ge=0)  # health: free space where the database lives
    check_seconds: float = Field(10.0, gt=0)  # how often health is checked


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    summary_seconds: float = Field(60.0, gt=0.0)


class Settings(Section):
    station: StationSettings = StationSettings()
    storage: StorageSettings = StorageSettings()
    model: ModelSettings = ModelSettings()
    audio: AudioSettings = AudioSettings()
    windowing: WindowSettings = WindowSettings()
    detection: DetectionSettings = DetectionSettings()
    location: LocationSettings = LocationSettings()
    replay: ReplaySettings = ReplaySettings()
    alerts: AlertSettings = AlertSettings()
    mqtt: MqttSettings = MqttSettings()
    logging: LoggingSettings = LoggingSettings()


def load_settings(path: Path | None) -> Settings:
    """Settings from a YAML file (None: all defaults); relative paths resolve against its folder."""
    if path is None:
        return Settings()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, root)) from None
    return _resolve_paths(settings, Path(path).parent)


def _describe(exc: ValidationError, path: Path, root: yaml.Node | None) -> str:
    error = exc.errors()[0]
    key_path = ".".join(str(part) for part in error["loc"])
    line = _line_of(root, error["loc"])
    where = f"{path}:{line}" if line else str(path)
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {key_path}: {message}{more}"


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based YAML line of the deepest node on `loc` that exists in the file."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    return settings.model_copy(
        update={
            "storage": settings.storage.model_copy(update={"database": resolve(settings.storage.database)}),
            "model": settings.model.model_copy(update={"path": resolve(settings.model.path)}),
            "detection": _with_thresholds_file(settings.detection, base),
            "mqtt": _with_tls_paths(settings.mqtt, resolve),
        }
    )


def _with_tls_paths(mqtt: MqttSettings, resolve) -> MqttSettings:
    if mqtt.tls is None:
        return mqtt
    paths = {k: resolve(v) for k, v in mqtt.tls.model_dump().items() if isinstance(v, Path)}
    return mqtt.model_copy(update={"tls": mqtt.tls.model_copy(update=paths)})


def _with_thresholds_file(detection: DetectionSettings, base: Path) -> DetectionSettings:
    """Merge a thresholds file under species_thresholds: entries in config.yaml win."""
    if detection.thresholds_file is None:
        return detection
    path = detection.thresholds_file if detection.thresholds_file.is_absolute() else base / detection.thresholds_file
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"detection.thresholds_file: {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(loaded, dict) or not all(
            isinstance(v, (int, float)) and 0 <= v <= 1 for v in loaded.values()):
        raise ConfigError(f"detection.thresholds_file: {path}: expected a mapping of species to thresholds in [0, 1]")
    merged = {**{str(k): float(v) for k, v in loaded.items()}, **detection.species_thresholds}
    return detection.model_copy(update={"thresholds_file": path, "species_thresholds": merged})


def read_secret(name: str) -> str | None:
    """A secret from systemd credentials or STATION_<NAME>; None when neither has it."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / name
        if cred.is_file():
            return cred.read_text(encoding="utf-8").strip()
    return os.environ.get("STATION_" + name.upper().replace("-", "_"))
