"""What a config means: values of the right type that the station still cannot run with.

A zero-sample window loops forever, a hop longer than the window crashes the windower, a
database where nothing can be written fails at the first event, a missing CA file fails
when MQTT starts, and a topic prefix with a NUL or a leading `$` loses every message
without an error. Each check here reads one or two sections and is skipped when one of
them already failed validation, so one mistake is reported once. Checks that need the
model read its folder's manifest. `config check` loads the whole folder as the daemon will
(every file's sha256), but never opens it with onnxruntime: as the unit's ExecStartPre it
runs before every start, and the daemon's own load reports a model onnxruntime refuses
(exit 3). At the daemon's start only the manifest is read here, so the model is hashed once.
"""
from __future__ import annotations

import csv
import json
import os
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .config_file import Problem
from .errors import ModelError
from .model_folder import MANIFEST, Manifest, load_folder

if TYPE_CHECKING:
    from .config import Settings

MAX_MANIFEST_BYTES = 16 << 20
MQTT_MAX_BYTES = 65535  # MQTT's UTF-8 string length field
MIN_HOP_FRACTION = 0.01  # a smaller hop makes so many windows per chunk that memory runs out
SQLITE_HEADER = b"SQLite format 3\x00"
ALERT_TYPES = tuple(json.loads((Path(__file__).parent / "schemas" / "alert.schema.json").read_text(
    encoding="utf-8"))["properties"]["type"]["enum"])


def semantic_problems(settings: Settings, invalid: set[str], require_model: bool) -> list[Problem]:
    """Problems of meaning in `settings`; sections in `invalid` already failed validation.

    `require_model`: a model folder that cannot be loaded is a problem (`config check`);
    otherwise the checks that need it are skipped and the model loader reports it (exit 3).
    """
    problems: list[Problem] = []
    manifest = None
    if "model" not in invalid:
        manifest, found = _model(settings) if require_model else (_manifest_only(settings.model.path), [])
        problems += found
    for sections, check in CHECKS:
        if not invalid.intersection(sections):
            problems += check(settings, manifest)
    return problems


def _model(settings: Settings) -> tuple[Manifest | None, list[Problem]]:
    """The folder loaded and verified as the daemon will load it; its problems name model.path/variant."""
    path = settings.model.path
    try:
        folder = load_folder(path)
    except ModelError as exc:
        return None, [Problem(("model", "path"), str(exc))]
    except (OSError, ValueError, csv.Error) as exc:  # a malformed folder the loader does not name yet
        return None, [Problem(("model", "path"), f"{path}: cannot load the model folder: {exc}")]
    try:
        model_file = folder.model_path(settings.model.variant)
    except ModelError as exc:
        return folder.manifest, [Problem(("model", "variant"), str(exc))]
    if not model_file.is_file():
        return folder.manifest, [Problem(("model", "path"), f"{model_file}: missing from the model folder")]
    return folder.manifest, []


def _manifest_only(folder: Path) -> Manifest | None:
    """The manifest without hashing the model (the daemon's loader does that next); None if unreadable."""
    path = folder / MANIFEST
    try:
        if not path.is_file():  # a FIFO would block
            return None
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            return None
        return Manifest.from_json(json.loads(raw.decode("utf-8")), str(path))
    except (ModelError, OSError, ValueError, RecursionError):
        return None  # the model loader reports it, with exit 3


def _windowing(settings: Settings, manifest: Manifest | None) -> list[Problem]:
    w, problems = settings.windowing, []
    window, rate = w.window_seconds, None
    if manifest is not None:
        m = manifest  # the windower is given the model's rate, and the classifier wants the model's window
        if m.sample_rate < 1 or _samples(m.window_seconds, m.sample_rate) < 1:
            return [Problem(("model", "path"), f"the model's manifest gives a window ({m.window_seconds:g} s "
                                               f"at {m.sample_rate} Hz) shorter than one sample")]
        rate = m.sample_rate
        if window is not None and _samples(window, rate) != _samples(m.window_seconds, rate):
            problems.append(Problem(("windowing", "window_seconds"),
                                    f"the model takes {m.window_seconds:g} s windows ({rate} Hz); leave this "
                                    f"null or set it to {m.window_seconds:g}"))
        window = m.window_seconds
    hop = ("windowing", "hop_seconds")
    if rate is not None and _samples(w.hop_seconds, rate) < 1:
        problems.append(Problem(hop, f"is shorter than one sample at the model's {rate} Hz"))
    if window is not None:
        if w.hop_seconds > window:
            problems.append(Problem(hop, f"must not exceed the window ({window:g} s): audio between windows "
                                         "would never be heard"))
        elif w.hop_seconds < window * MIN_HOP_FRACTION:
            problems.append(Problem(hop, f"must be at least 1% of the window ({window * MIN_HOP_FRACTION:g} s): "
                                         "a smaller hop makes more windows than memory holds"))
        if w.tail_min_seconds > window:
            problems.append(Problem(("windowing", "tail_min_seconds"), f"must not exceed the window ({window:g} s)"))
    return problems


def _samples(seconds: float, rate: int) -> int:
    """As the windower counts them (round), without overflowing on absurd values."""
    return round(min(seconds * rate, 1e12))


def _location(settings: Settings, manifest: Manifest | None) -> list[Problem]:
    where, problems = settings.location, []
    if (where.lat is None) != (where.lon is None):
        given, missing = ("lat", "lon") if where.lon is None else ("lon", "lat")
        problems.append(Problem(("location", given), f"set location.{missing} too, or neither"))
    if where.week == 0:
        problems.append(Problem(("location", "week"), "BirdNET weeks are 1-48, or -1 for the whole year"))
    if where.enabled and manifest is not None and not manifest.range_model:
        problems.append(Problem(("location", "lat"), f"the model {manifest.name!r} has no range model "
                                                     "(location needs BirdNET); set lat and lon to null"))
    return problems


def _storage(settings: Settings, manifest: Manifest | None) -> list[Problem]:
    database = settings.storage.database
    reason = database_problem(database)
    return [Problem(("storage", "database"), f"{database}: {reason}")] if reason else []


def database_problem(database: Path) -> str | None:
    """Why SQLite could not open or create `database` (WAL needs its folder writable too), or None."""
    try:
        if database.exists() or database.is_symlink():
            if database.is_dir():
                return "is a folder; name a file in it, e.g. station.db"
            if not database.is_file():
                return "is not a regular file"
            if not os.access(database, os.R_OK | os.W_OK):
                return "is not writable"
            if not _looks_like_sqlite(database):
                return "is not an SQLite database"
            if not os.access(database.parent, os.W_OK | os.X_OK):
                return f"its folder {database.parent} is not writable (SQLite writes its -wal file there)"
            return None
        ancestor = database.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            return f"cannot be created: {ancestor} is not a folder"
        if not os.access(ancestor, os.W_OK | os.X_OK):
            return f"cannot be created: {ancestor} is not writable"
    except OSError as exc:
        return f"cannot be checked: {exc.strerror or exc}"
    return None


def _looks_like_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    return header in (b"", SQLITE_HEADER)


def _audio(settings: Settings, manifest: Manifest | None) -> list[Problem]:
    a, problems = settings.audio, []
    if a.queue_seconds < a.block_seconds:
        problems.append(Problem(("audio", "queue_seconds"), f"must hold at least one block "
                                                            f"(audio.block_seconds: {a.block_seconds:g})"))
    if a.stall_seconds <= a.block_seconds:
        problems.append(Problem(("audio", "stall_seconds"), f"must be longer than audio.block_seconds "
                                                            f"({a.block_seconds:g}): a block arrives only that often"))
    return problems


def _replay(settings: Settings, manifest: Manifest | None) -> list[Problem]:
    return [Problem(("replay", "extensions", i), f"{ext!r} should start with a dot, e.g. .wav")
            for i, ext in enumerate(settings.replay.extensions) if len(ext) < 2 or not ext.startswith(".")]


def _alerts(settings: Settings, manifest: Manifest | None) -> list[Problem]:
    return [Problem(("alerts", "type_cooldown_minutes", name), f"unknown alert type (known: {', '.join(ALERT_TYPES)})")
            for name in settings.alerts.type_cooldown_minutes if name not in ALERT_TYPES]


def _mqtt(settings: Settings, manifest: Manifest | None) -> list[Problem]:
    m, station = settings.mqtt, settings.station.id
    longest_alert = max(ALERT_TYPES, key=len)
    texts = [
        (("mqtt", "topic_prefix"), topic_problem(m.topic_prefix, f"/{station}/alerts/{longest_alert}")),
        (("mqtt", "homeassistant", "discovery_prefix"),
         topic_problem(m.homeassistant.discovery_prefix,
                       f"/binary_sensor/field_station_{station}/detections_today/config")),
        (("mqtt", "host"), _host_problem(m.host)),
        (("mqtt", "client_id"), _text_problem(m.client_id) if m.client_id is not None else None),
        (("mqtt", "username"), _text_problem(m.username) if m.username is not None else None),
    ]
    return [Problem(loc, reason) for loc, reason in texts if reason] + _tls(settings)


def _text_problem(value: str) -> str | None:
    """Why a broker would refuse `value` as an MQTT UTF-8 string (mosquitto drops the connection)."""
    if "\x00" in value:
        return "contains a NUL character"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        return "contains a control character"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    return f"is longer than MQTT's {MQTT_MAX_BYTES} bytes" if size > MQTT_MAX_BYTES else None


def topic_problem(prefix: str, longest_suffix: str) -> str | None:
    """Why topics `<prefix><suffix>` would not reach subscribers, or None."""
    if not prefix:
        return "must not be empty"
    reason = _text_problem(prefix)
    if reason:
        return reason
    if "+" in prefix or "#" in prefix:
        return "must not contain the wildcards + or #"
    if prefix.startswith("$"):
        return "must not start with $ (brokers keep $ topics for themselves and deliver them to no subscriber)"
    if "" in prefix.split("/"):
        return "has an empty level (a leading, trailing or double /)"
    if len((prefix + longest_suffix).encode("utf-8")) > MQTT_MAX_BYTES:
        return f"makes topics longer than MQTT's {MQTT_MAX_BYTES} bytes"
    return None


def _host_problem(host: str) -> str | None:
    if not host.strip():
        return "must not be empty"
    if "://" in host:
        return "give the host name only, not a URL (the port goes in mqtt.port)"
    if any(c.isspace() or ord(c) < 0x20 for c in host) or len(host) > 253:
        return "is not a host name or address"
    return None


def _tls(settings: Settings) -> list[Problem]:
    tls = settings.mqtt.tls
    if tls is None:
        return []
    problems = []
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        reason = _unreadable(path) if path is not None else None
        if reason:
            problems.append(Problem(("mqtt", "tls", name), f"{path}: {reason}"))
    if tls.key_file is not None and tls.cert_file is None:
        problems.append(Problem(("mqtt", "tls", "key_file"), "needs mqtt.tls.cert_file, the certificate it belongs to"))
    return problems or _tls_contents(tls)


def _unreadable(path: Path) -> str | None:
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            return "is a folder, not a file"
        if not stat.S_ISREG(mode):
            return "is not a regular file"
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _tls_contents(tls) -> list[Problem]:
    """Load the files as paho will, so a wrong file fails here rather than when MQTT starts."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    problems = []
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError) as exc:
            problems.append(Problem(("mqtt", "tls", "ca_file"),
                                    f"{tls.ca_file}: not a PEM CA certificate ({_ssl_reason(exc)})"))
    if tls.cert_file is not None:
        try:  # a key with a pass phrase fails here: paho would prompt for it on a terminal the daemon lacks
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None,
                                    password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            problems.append(Problem(("mqtt", "tls", "cert_file"),
                                    f"{tls.cert_file}: cannot load the client certificate and key ({_ssl_reason(exc)}; "
                                    "a key protected by a pass phrase is not supported)"))
    return problems


def _ssl_reason(exc: OSError) -> str:
    return getattr(exc, "reason", None) or exc.strerror or str(exc)


# (sections a check reads, the check): skipped when one of those sections failed validation
CHECKS: list[tuple[tuple[str, ...], Callable[[Settings, Manifest | None], list[Problem]]]] = [
    (("windowing",), _windowing),
    (("location",), _location),
    (("storage",), _storage),
    (("audio",), _audio),
    (("replay",), _replay),
    (("alerts",), _alerts),
    (("mqtt", "station"), _mqtt),
]
