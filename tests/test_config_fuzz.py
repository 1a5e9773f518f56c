"""Config fuzz: whatever a config file holds, the outcome is settings the daemon can build its
stages from, or a ConfigError whose every line names the file; never a traceback or a hang.

In-process cases call `load_settings(path, require_model=True)`, which is what `station config
check` runs (through cli.settings_for, which only adds --db/--model); a few run the real CLI.
"Settings the daemon can build from" is checked, not assumed: `exercise` builds the windower
and pushes audio through it, the capture queue, the time spans the alert rules compute, a
paho client with the configured TLS files and last will, the topics it publishes to, and an
SQLite database in WAL mode where storage.database says.
"""
from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, station_cli
from station.config import Settings, load_settings
from station.errors import ConfigError
from test_config import model_folder

SHIPPED = (REPO / "config.yaml").read_text(encoding="utf-8")
T0 = datetime(2026, 5, 1, 6, 0, tzinfo=timezone.utc)

HOSTILE = [
    "null", '""', "-1", "0", "1", "1.0e-9", "1.0e+308", "-1.0e+308", ".nan", ".inf", "-.inf", "1.0e+400", "-0.0",
    "9" * 5000, "0x7fffffffffffffffffff", "1:30:00", '"' + "x" * 70000 + '"', "[1, 2]", "{a: 1}", "[]", "{}",
    "true", '"\\0"', '"$SYS"', '"a/+/#"', '"/"', "2026-13-45", "2026-05-01", "!!binary aGk=", "&r [1, *r]",
    "!!python/name:os.system", "'ü/x'", '"\\t"', "*undefined",
]


@pytest.fixture(scope="module")
def station_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    model_folder(folder / "models" / "birdnet-v2.4")
    return folder


def outcome(path: Path) -> Settings | list[str]:
    """Settings, or the problem lines; anything else (a traceback) fails the test."""
    try:
        return load_settings(path, require_model=True)
    except ConfigError as exc:
        lines = str(exc).splitlines()
        assert lines, "an empty error"
        for line in lines:
            assert line.startswith(str(path)) and "Traceback" not in line, line
        return lines


def exercise(settings: Settings) -> None:
    """Build what the daemon builds from these settings (no device, broker or onnxruntime)."""
    from station.capture import MicSource
    from station.homeassistant import discovery_messages
    from station.messages import Topics
    from station.model_folder import load_folder
    from station.mqtt import make_client
    from station.types import AudioChunk
    from station.windowing import Windower

    manifest = load_folder(settings.model.path).manifest
    w = settings.windowing
    windower = Windower(manifest.sample_rate, w.window_seconds or manifest.window_seconds, w.hop_seconds,
                        w.tail_min_seconds, manifest.resampler)
    windows = windower.push(AudioChunk(np.zeros(4 * 22050, np.float32), 22050, "fuzz", 0.0, T0, final=True))
    assert 1 <= len(windows) <= 4 / w.hop_seconds + 2

    a = settings.audio
    MicSource(a.device, a.sample_rate, a.channels, a.block_seconds, a.queue_seconds, a.reconnect_max_seconds,
              a.stall_seconds)
    waits = [a.reconnect_max_seconds, settings.replay.poll_seconds, settings.alerts.check_seconds]
    assert all(0 < wait <= threading.TIMEOUT_MAX for wait in waits)

    al = settings.alerts
    now = datetime.now(timezone.utc)
    _ = now - timedelta(minutes=al.frequency_window_minutes) * (al.baseline_windows + 1)
    _ = now - timedelta(hours=al.min_history_hours) - timedelta(hours=settings.mqtt.keep_sent_hours)
    _ = [now - timedelta(minutes=m) for m in [al.cooldown_minutes, *al.type_cooldown_minutes.values()]]

    topics = Topics(settings.mqtt.topic_prefix, settings.station.id)
    client = make_client(settings.mqtt, topics, "password", "run")
    messages = discovery_messages(topics, settings.mqtt.homeassistant.discovery_prefix, manifest.name)
    for topic in [topics.detections, topics.alert("INFERENCE_BEHIND"), topics.health, *(t for t, _ in messages)]:
        client.publish(topic, "{}", qos=0)  # not connected: only the topic's validity is at stake

    import sqlite3
    settings.storage.database.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(settings.storage.database)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS fuzz (x)")
        db.commit()
    finally:
        db.close()


def value_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, key path) of every value node in a YAML text: leaves and whole sections."""
    spans = []

    def walk(node, loc):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = f"{loc}.{key.value}" if loc else key.value
                spans.append((value.start_mark.index, value.end_mark.index, path))
                walk(value, path)

    walk(yaml.compose(text), "")
    return spans


def substituted(text: str, start: int, end: int, value: str) -> str:
    tail = "\n" if text[start:end].endswith("\n") else ""
    return text[:start] + value + tail + text[end:]


def rewrite(path: Path, content: bytes) -> None:
    """Overwrite in place: on ext4, truncating to zero first makes every close flush to disk (auto_da_alloc)."""
    path.touch()
    with open(path, "r+b") as f:
        f.write(content)
        f.truncate()


def check(path: Path, content: bytes | str) -> Settings | list[str]:
    rewrite(path, content.encode("utf-8") if isinstance(content, str) else content)
    result = outcome(path)
    if isinstance(result, Settings):
        exercise(result)
    return result


def test_every_key_of_the_shipped_config_with_hostile_values(station_dir):
    spans = value_spans(SHIPPED)
    assert len(spans) > 70  # every leaf and every section of config.yaml
    accepted = refused = 0
    for start, end, _key in spans:
        for value in HOSTILE:
            result = check(station_dir / "c.yaml", substituted(SHIPPED, start, end, value))
            if isinstance(result, Settings):
                accepted += 1
            else:
                refused += 1
    print(f"{len(spans)} keys x {len(HOSTILE)} values: {accepted} accepted, {refused} refused")
    assert accepted and refused


def test_random_byte_mutations_of_the_shipped_config(station_dir):
    rng = random.Random(20260501)
    data = SHIPPED.encode("utf-8")
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(1500):
        mutant = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(mutant))
            op = rng.choice(("flip", "insert", "delete", "duplicate"))
            if op == "flip":
                mutant[at] = rng.randrange(256)
            elif op == "insert":
                mutant[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            elif op == "delete":
                del mutant[at:at + rng.randint(1, 40)]
            else:
                line_start = mutant.rfind(b"\n", 0, at) + 1
                line_end = mutant.find(b"\n", at) + 1 or len(mutant)
                mutant[line_end:line_end] = mutant[line_start:line_end]
        result = check(station_dir / "c.yaml", bytes(mutant))
        outcomes["accepted" if isinstance(result, Settings) else "refused"] += 1
    print(outcomes)
    assert outcomes["accepted"] and outcomes["refused"]


@pytest.mark.parametrize("encoding, accepted", [
    ("utf-8", True), ("utf-8-sig", True), ("utf-16", True),  # UTF-16 with a byte-order mark is read
    ("utf-16-le", False), ("utf-16-be", False), ("utf-32", False), ("cp1252", False), ("cp037", False),
])
def test_the_shipped_config_in_other_encodings(station_dir, encoding, accepted):
    text = SHIPPED.replace("# Field Station", "# Field Station \u00e9t\u00e9")  # not ASCII: encodings differ
    result = check(station_dir / "c.yaml", text.encode(encoding))
    assert isinstance(result, Settings) == accepted, result


def _laughs(levels: int, width: int) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [
    _laughs(10, 9), _laughs(30, 2), _laughs(4, 200),
    "a: &a {b: *a}\n", "a: &a [[[[*a]]]]\n",
    "a: " + "[" * 33 + "]" * 33 + "\n", "a: " + "- " * 50 + "x\n", "a: " + "{b: " * 300000 + "}" * 300000 + "\n",
    "x: &x " + "[" * 30 + "1" + "]" * 30 + "\n" + "".join(f"x{i}: &x{i} [*x{'' if i == 0 else i - 1}]\n"
                                                          for i in range(40)),
])
def test_yaml_bombs_and_deep_nesting_are_refused(station_dir, text):
    result = check(station_dir / "c.yaml", text)
    assert isinstance(result, list) and len(result) == 1, result


def test_structure_mutations_of_the_shipped_config(station_dir):
    document = yaml.safe_load(SHIPPED)
    cases = []
    for section in document:
        cases.append({k: v for k, v in document.items() if k != section})  # a section left out
        for hostile in (None, [], "x", 1, [document[section]], {"nested": document[section]}):
            cases.append({**document, section: hostile})
        cases.append({**document, "extra": document[section]})  # a section under a name that does not exist
        other = next(s for s in document if s != section and isinstance(document[s], dict))
        if isinstance(document[section], dict):
            cases.append({**document, other: {**document[other], **document[section]}})  # keys in the wrong section
    for case in cases:
        check(station_dir / "c.yaml", yaml.safe_dump(case, allow_unicode=True))
    for top in ("[]", "7", "null", "'text'", "[a, {b: c}]", "? [a]\n: b\n", "!!set {a, b}\n", "--- a\n--- b\n"):
        assert isinstance(check(station_dir / "c.yaml", top + "\n"), (Settings, list))


@pytest.mark.parametrize("content", [
    "detection:\n  threshold: 0.7\n".encode("utf-16-le"),
    b"audio:\n  channels: " + b"9" * 5000 + b"\n",
    b"a: " + b"[" * 100000 + b"]" * 100000 + b"\n",
    _laughs(10, 9).encode(),
    b"windowing:\n  window_seconds: 1.0e-9\n  hop_seconds: 5\nstorage:\n  database: /\nmqtt:\n  topic_prefix: $SYS\n",
])
def test_config_check_via_the_cli_is_exit_2_with_one_line_per_problem(station_dir, content):
    path = station_dir / "cli.yaml"
    path.write_bytes(content)
    result = station_cli("config", "check", str(path), cwd=station_dir, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith(f"station: error: {path}") for line in lines), lines


def test_an_unexpected_error_is_still_one_line(station_dir, monkeypatch, capsys):
    import station.cli as cli

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(cli, "settings_for", broken)
    path = station_dir / "x.yaml"
    assert cli.main(["config", "check", str(path)]) == 2
    assert capsys.readouterr().err == f"station: error: {path}: cannot check: RuntimeError: something nobody foresaw\n"
