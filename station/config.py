"""Typed settings from config.yaml. Every problem is reported at once, each with its key and line.

Reading the file safely is station.config_file's job; types and ranges are pydantic's
here; what values mean together (a window the model can take, a database folder that
can be written, topics a broker delivers) is station.config_check's.

Secrets never live in this file: `read_secret` takes them from systemd credentials
($CREDENTIALS_DIRECTORY/<name>) or the environment (STATION_<NAME>).
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config_check import semantic_problems
from .config_file import Document, Problem, Refused, line_of, read_yaml
from .errors import ConfigError

MAX_KEY_CHARS = 60  # longer keys are cut in messages


def _no_nul(path: Path) -> Path:
    if "\x00" in str(path):
        raise ValueError("a path must not contain a NUL character")
    return path


FilePath = Annotated[Path, AfterValidator(_no_nul)]


class Section(BaseModel):
    # NaN and infinity pass every range check or crash later (int(inf)): no float field takes them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StationSettings(Section):
    id: str = Field("field-station", pattern=r"^[A-Za-z0-9_.-]+$", max_length=200)


class StorageSettings(Section):
    database: FilePath = Path("data/station.db")


class ModelSettings(Section):
    path: FilePath = Path("models/birdnet-v2.4")
    variant: str = "fp32"  # "fp32" is model.onnx; any other name is model.<variant>.onnx
    threads: int = Field(2, ge=1, le=64)
    batch_size: int = Field(1, ge=1, le=256)
    sensitivity: float = Field(1.0, gt=0.0, le=1.5)  # sigmoid models only (BirdNET)


class AudioSettings(Section):
    device: str | int | None = None  # name (substring) or index; None: system default
    sample_rate: int = Field(48000, ge=8000, le=384000)
    channels: int = Field(1, ge=1, le=32)
    block_seconds: float = Field(0.5, ge=0.01, le=10.0)  # a callback per few samples would eat the CPU
    queue_seconds: float = Field(60.0, gt=0.0, le=3600.0)
    reconnect_max_seconds: float = Field(30.0, gt=0.0, le=3600.0)  # a wait: threading refuses huge timeouts
    stall_seconds: float = Field(5.0, gt=0.0, le=3600.0)  # no callback for this long = device lost
    wait_for_device: bool = False  # a `device` that matches nothing at start: wait for it instead of exit 4


class WindowSettings(Section):
    # How they fit the model's window and rate is checked in config_check; 60 s is a model folder's longest window.
    window_seconds: float | None = Field(None, gt=0.0, le=60.0)  # None: the model's own
    hop_seconds: float = Field(1.5, gt=0.0, le=60.0)
    tail_min_seconds: float = Field(1.0, ge=0.0, le=60.0)


class DetectionSettings(Section):
    # Defaults chosen on the shared soundscapes (scripts/compare_detectors.py); README says what they trade.
    threshold: float = Field(0.6, ge=0.0, le=1.0)  # one window at or above this detects
    pair_threshold: float | None = Field(0.25, ge=0.0, le=1.0)  # two neighbouring windows at or above this detect
    non_birds_mask: bool = True  # a bird below a non-bird class (Dog, Human vocal) in a window gets no evidence there
    dynamic_threshold: float | None = Field(None, ge=0.0, le=1.0)  # after a confident window, the species' threshold
    dynamic_trigger: float = Field(0.9, ge=0.0, le=1.0)  # a window at or above this is confident
    dynamic_hold_seconds: float = Field(1800.0, gt=0.0)  # how long the lowered threshold lasts
    top_k: int = Field(3, ge=1, le=50)
    species_thresholds: dict[str, float] = {}
    thresholds_file: FilePath | None = None  # YAML {species: threshold}, e.g. from `station xc calibrate`
    include: list[str] = []
    exclude: list[str] = []
    merge_gap_seconds: float = Field(0.0, ge=0.0)
    classes: Literal["birds", "all"] = "birds"  # birds: a model's non-bird classes (Dog, frogs ...) are not detected

    @field_validator("species_thresholds")
    @classmethod
    def _thresholds_are_probabilities(cls, value: dict[str, float]) -> dict[str, float]:
        for name, threshold in value.items():
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold for {name[:MAX_KEY_CHARS]!r} must be between 0 and 1")
        return value


class LocationSettings(Section):
    """BirdNET's range filter; needs a model folder with a range model."""

    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    week: int | None = Field(None, ge=-1, le=48)  # None: from the audio's date; -1: the whole year
    threshold: float = Field(0.03, ge=0.0, le=1.0)
    keep: list[str] = []  # species the filter must never remove (scientific or common names)
    out_of_range_threshold: float | None = Field(0.9, ge=0.0, le=1.0)  # None: out of range is never detected

    @property
    def enabled(self) -> bool:
        return self.lat is not None and self.lon is not None


class ReplaySettings(Section):
    realtime: bool = False
    watch: bool = False
    poll_seconds: float = Field(5.0, ge=0.1, le=3600.0)
    extensions: list[str] = [".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".aac"]
    chunk_seconds: float = Field(10.0, ge=0.1, le=300.0)  # decoded at once: memory grows with it


class TlsSettings(Section):
    ca_file: FilePath | None = None  # CA that signed the broker's certificate; None: the system's CAs
    cert_file: FilePath | None = None  # client certificate, for brokers that require one
    key_file: FilePath | None = None
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
    topic_prefix: str = "station"  # checked in config_check.topic_problem
    reconnect_max_seconds: float = Field(60.0, ge=1, le=86400)  # paho takes whole seconds
    health_seconds: float = Field(60.0, gt=0)  # how often the retained health message is refreshed
    keep_sent_hours: float = Field(168.0, ge=0, le=87600)  # sent messages are deleted from the outbox after this
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()


class AlertSettings(Section):
    enabled: bool = True
    rare_species: list[str] = []  # by label, scientific or common name
    low_confidence: float = Field(0.5, ge=0.0, le=1.0)  # a loud window whose best score is below this
    unknown_sound: float = Field(0.3, ge=0.0, le=1.0)  # ... and below this: nothing explains it
    loud_dbfs: float = Field(-35.0, le=0.0)  # how loud a window must be for those two
    new_species: bool = True  # NEW_SPECIES: first today (local time) and first ever at this station
    # Time spans below become timedeltas, which overflow past 999,999,999 days: the bounds keep them sane.
    frequency_window_minutes: float = Field(60.0, gt=0, le=10080)  # HIGH/LOW_FREQUENCY: activity in this window...
    baseline_windows: int = Field(24, ge=3, le=1000)  # ... against this many previous windows of the same length
    min_history_hours: float = Field(24.0, ge=0, le=87600)  # no frequency alerts before the station has this history
    high_sigma: float = Field(2.0, gt=0)
    low_sigma: float = Field(1.5, gt=0)
    min_count: int = Field(3, ge=1)  # HIGH_FREQUENCY needs at least this many detections in the window
    cooldown_minutes: float = Field(30.0, ge=0, le=525600)  # per alert type and species
    type_cooldown_minutes: dict[str, float] = {}  # per type, e.g. {UNKNOWN_SOUND: 120}
    no_audio_seconds: float = Field(60.0, gt=0)  # health: no audio for this long
    lag_seconds: float = Field(30.0, gt=0)  # health: inference this far behind the microphone
    disk_free_mb: float = Field(500.0, ge=0)  # health: free space where the database lives
    check_seconds: float = Field(10.0, ge=0.1, le=3600)  # how often health is checked

    @field_validator("type_cooldown_minutes")
    @classmethod
    def _cooldowns_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for name, minutes in value.items():
            if not 0.0 <= minutes <= 525600:
                raise ValueError(f"cooldown for {name[:MAX_KEY_CHARS]!r} must be between 0 and 525600 minutes")
        return value


class ClipSettings(Section):
    """An audio clip of each closed event, at the capture rate, under a disk budget that keeps the best."""

    enabled: bool = True
    folder: FilePath | None = None  # None: "clips" beside the database
    format: Literal["flac", "wav"] = "flac"
    subtype: Literal["PCM_16", "PCM_24", "FLOAT"] = "PCM_16"  # FLOAT: wav only, the exact samples of a float source
    pre_roll_seconds: float = Field(1.0, ge=0.0, le=30.0)
    post_roll_seconds: float = Field(1.0, ge=0.0, le=30.0)
    buffer_seconds: float = Field(60.0, ge=5.0, le=600.0)  # recent audio held for cutting clips
    spectrogram: bool = False  # a PNG beside each clip (12-45 ms each: opt in on a small Pi)
    min_free_mb: float = Field(200.0, ge=0.0)  # below this free space no clip is written (the database comes first)
    max_disk_mb: float | None = Field(2000.0, gt=0.0)
    max_disk_percent: float | None = Field(None, gt=0.0, le=100.0)
    keep_best_per_species: int = Field(3, ge=0, le=1000)
    prune_seconds: float = Field(300.0, ge=1.0, le=86400.0)

    @field_validator("subtype")
    @classmethod
    def _flac_holds_integers(cls, value: str, info) -> str:
        if value == "FLOAT" and info.data.get("format") == "flac":
            raise ValueError("FLAC holds integers only: use PCM_16 or PCM_24, or format: wav for FLOAT")
        return value


class PrivacySettings(Section):
    """Human voices never reach a clip, the database or a message (unless turned off)."""

    enabled: bool = True
    threshold: float = Field(0.3, ge=0.0, le=1.0)  # a human class at or above this in a window
    human_labels: list[str] = ["Human vocal", "Human non-vocal", "Human whistle"]


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    summary_seconds: float = Field(60.0, ge=1.0)


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
    clips: ClipSettings = ClipSettings()
    privacy: PrivacySettings = PrivacySettings()
    logging: LoggingSettings = LoggingSettings()


class ConfigProblems(ConfigError):
    """Every problem found in a config, one line each; str() is the lines joined by newlines."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


@dataclass(frozen=True)
class Override:
    """A value from the command line in place of the file's, e.g. --db for storage.database."""

    key: str  # section.field
    value: Any
    flag: str


def load_settings(path: Path | None, overrides: Iterable[Override] = (), *, check: bool = True,
                  require_model: bool = False) -> Settings:
    """Settings from a YAML file (None: all defaults); relative paths resolve against its folder.

    Raises ConfigProblems listing every problem: YAML, types and ranges, the thresholds file,
    and (with `check`) what the values mean; `require_model` makes an unloadable model
    folder one of them (`config check`) instead of the model loader's error later.
    """
    overrides = list(overrides)
    document = Document({}, None, []) if path is None else _read_config(Path(path))
    settings, invalid, found = _validate(document.data)
    problems = document.problems + found
    settings = _apply(_resolve_paths(settings, Path(path).parent if path else Path()), overrides)
    if "detection" not in invalid:
        settings, found = _with_thresholds_file(settings)
        problems += found
    if check:
        problems += semantic_problems(settings, invalid, require_model)
    if problems:
        raise ConfigProblems(_lines(problems, path, document.root, overrides))
    return settings


def _read_config(path: Path) -> Document:
    try:
        document = read_yaml(path)
    except Refused as exc:
        if exc.unreadable:
            raise ConfigError(f"{path}: cannot read config: {exc.reason}") from None
        raise ConfigError(f"{path}{f':{exc.line}' if exc.line else ''}: {exc.reason}") from None
    if not document.built:  # a value YAML cannot build, e.g. a 5,000-digit number
        raise ConfigProblems(_lines(document.problems, path, document.root, []))
    if document.data is None:  # an empty file: all defaults
        return Document({}, None, [])
    if not isinstance(document.data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return document


# Validation: each section on its own, so the meaning checks can still run on the valid ones.

def _validate(data: dict) -> tuple[Settings, set[str], list[Problem]]:
    sections: dict[str, Section] = {}
    invalid: set[str] = set()
    problems: list[Problem] = []
    fields = Settings.model_fields
    for name, value in data.items():
        if name not in fields:
            problems.append(Problem((name,), _unknown_key(name, fields)))
            continue
        try:
            sections[name] = _section_model(name).model_validate({} if value is None else value)
        except ValidationError as exc:
            invalid.add(name)
            problems += _pydantic_problems(exc, name, value)
    return Settings(**sections), invalid, problems


def _section_model(section: str) -> type[Section]:
    """The model class of one top-level section of Settings (each is a Section subclass)."""
    model = Settings.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, Section)  # every field of Settings is a Section
    return model


def _pydantic_problems(exc: ValidationError, section: str, value: Any) -> list[Problem]:
    """One Problem per key: a union's alternatives (str | int) become one message."""
    by_key: dict[tuple, list[str]] = {}
    for error in exc.errors():
        loc = (section, *_in_data(error["loc"], value))
        if error["type"] == "extra_forbidden":
            model = _section_model(section)
            message = _unknown_key(error["loc"][-1], _fields_at(model, error["loc"][:-1]))
        else:
            message = error["msg"]
        if message not in by_key.setdefault(loc, []):
            by_key[loc].append(message)
    return [Problem(loc, "; ".join(messages)) for loc, messages in by_key.items()]


def _in_data(loc: tuple, value: Any) -> tuple:
    """The part of pydantic's error location that names keys in the file (not union members)."""
    kept = []
    for part in loc:
        in_list = isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)
        if (isinstance(value, dict) and part in value) or in_list:
            value = value[part]
        else:
            break
        kept.append(part)
    return tuple(kept)


def _fields_at(model: type[BaseModel], loc: tuple) -> dict:
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        inner = getattr(field, "annotation", None)
        candidates = [t for t in getattr(inner, "__args__", (inner,))
                      if isinstance(t, type) and issubclass(t, BaseModel)]
        if not candidates:
            return {}
        model = candidates[0]
    return model.model_fields


def _unknown_key(key: Any, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key)[:100], list(known), n=1) if isinstance(key, str) else []
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def resolve(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    s, tls = settings, settings.mqtt.tls
    if tls is not None:
        tls = tls.model_copy(update={k: resolve(getattr(tls, k)) for k in ("ca_file", "cert_file", "key_file")})
    return s.model_copy(update={
        "storage": s.storage.model_copy(update={"database": resolve(s.storage.database)}),
        "model": s.model.model_copy(update={"path": resolve(s.model.path)}),
        "detection": s.detection.model_copy(update={"thresholds_file": resolve(s.detection.thresholds_file)}),
        "mqtt": s.mqtt.model_copy(update={"tls": tls}),
        "clips": s.clips.model_copy(update={"folder": resolve(s.clips.folder)}),
    })


def _apply(settings: Settings, overrides: list[Override]) -> Settings:
    for o in overrides:
        section, key = o.key.split(".")
        part = getattr(settings, section).model_copy(update={key: o.value})
        settings = settings.model_copy(update={section: part})
    return settings


def _with_thresholds_file(settings: Settings) -> tuple[Settings, list[Problem]]:
    """Merge a thresholds file under species_thresholds: entries in config.yaml win."""
    detection, path = settings.detection, settings.detection.thresholds_file
    if path is None:
        return settings, []
    loc = ("detection", "thresholds_file")
    try:
        document = read_yaml(path)
    except Refused as exc:
        return settings, [Problem(loc, f"{path}{f':{exc.line}' if exc.line else ''}: {exc.reason}")]
    if document.problems:
        return settings, [Problem(loc, f"{path}:{p.line}: {_dotted(p.loc)}: {p.message}") for p in document.problems]
    loaded = document.data or {}
    if not isinstance(loaded, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in loaded.values()):
        return settings, [Problem(loc, f"{path}: expected a mapping of species to thresholds in [0, 1]")]
    merged = {**{str(k): float(v) for k, v in loaded.items()}, **detection.species_thresholds}
    return settings.model_copy(update={"detection": detection.model_copy(update={"species_thresholds": merged})}), []


# Reporting: FILE:LINE: key.path: message, in the file's order.

def _lines(problems: list[Problem], path: Path | None, root: yaml.Node | None,
           overrides: list[Override]) -> list[str]:
    flags = {tuple(o.key.split(".")): o.flag for o in overrides}
    located = []
    for p in problems:
        flag = flags.get(tuple(p.loc[:2]))
        line = None if flag else (p.line or line_of(root, p.loc))
        where = f"{path}:{line}" if line else str(path or "(no config file)")
        located.append((line or float("inf"), f"{where}: {_dotted(p.loc)}{f' ({flag})' if flag else ''}: {p.message}"))
    return [text for _, text in sorted(located, key=lambda item: item[0])]


def _dotted(loc: tuple) -> str:
    parts = [str(part) for part in loc]
    return ".".join(p if len(p) <= MAX_KEY_CHARS else p[:MAX_KEY_CHARS] + "..." for p in parts)


def read_secret(name: str) -> str | None:
    """A secret from systemd credentials or STATION_<NAME>; None when neither has it."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / name
        # An empty credential is the unit's default (SetCredential=) when no file was given: not set.
        if cred.is_file() and (value := cred.read_text(encoding="utf-8").strip()):
            return value
    return os.environ.get("STATION_" + name.upper().replace("-", "_"))
