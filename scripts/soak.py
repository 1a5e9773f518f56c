#!/usr/bin/env python3
"""Soak test: a station survives a season of audio while its broker and itself are killed.

Runs `station replay --watch` with MQTT on over hours of the shared recordings, placed into
the watched folder like a recorder's card fills (complete files only, in order, each with an
mtime on one continuous timeline, so a restarted daemon sees the same audio at the same
times). Meanwhile a real Mosquitto is SIGKILLed and restarted on a schedule, the daemon is
SIGKILLed and restarted at seeded moments, a persistent QoS 1 subscriber counts the message
ids it receives, and a reader polls the database. Then it stops everything cleanly and
reports what was produced, delivered, duplicated, leaked or broken; the exit code is 1 if
anything was lost or broken, so a short run is a CI smoke test. The work folder keeps the
database, the daemon's and the broker's logs and the RSS samples; the copies are removed.

    .venv/bin/python scripts/soak.py --hours 6 --json soak.json
"""
from __future__ import annotations

import argparse
import csv
import getpass
import json
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("soundscapes", "birds_misc", "xc_puerto_rico")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
STATION_ID = "soak"
KINDS = ("detections", "alerts")
STARTED = time.monotonic()
# The daemon and the readers run in the work folder: let them import this checkout's station.
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f} s] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=float, default=6.0, help="audio to place in the watched folder (default 6)")
    p.add_argument("--data", type=Path, help="the shared recordings (default $STATION_TEST_DATA, else ../shared/data)")
    p.add_argument("--model", type=Path, help="model folder (default: export the tiny random test model)")
    p.add_argument("--work", type=Path, help="folder for the database, logs and copies (default: a new temp folder)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--rate", type=float, default=20.0,
                   help="audio seconds placed per wall second at most; 0: as fast as the daemon reads (default 20)")
    p.add_argument("--lead", type=float, default=1800.0,
                   help="most audio seconds placed but not yet read (default 1800)")
    p.add_argument("--broker-kill-every", type=float, default=120.0,
                   help="seconds between broker SIGKILLs (default 120)")
    p.add_argument("--broker-down", type=float, default=2.0, help="seconds the broker stays down (default 2)")
    p.add_argument("--daemon-kills", type=int, default=3, help="daemon SIGKILLs at seeded moments (default 3)")
    p.add_argument("--seed", type=int, default=1, help="seed for the kill moments (default 1)")
    p.add_argument("--reader-every", type=float, default=1.0, help="seconds between database reads (default 1)")
    p.add_argument("--rss-every", type=float, default=3.0, help="seconds between RSS samples (default 3)")
    p.add_argument("--lazy-broker", action="store_true",
                   help="keep Mosquitto's default autosave (every 30 min): shows what a SIGKILL then loses")
    p.add_argument("--warmup", type=float, default=30.0,
                   help="seconds of a daemon life counted as warm-up (default 30)")
    p.add_argument("--drain-timeout", type=float, default=180.0,
                   help="longest wait for the outbox and the subscriber (default 180)")
    p.add_argument("--stall-seconds", type=float, default=300.0,
                   help="give up when the daemon makes no progress this long (default 300)")
    args = p.parse_args(argv)
    args.data = args.data or Path(os.environ.get("STATION_TEST_DATA") or REPO.parent / "shared" / "data")
    return args


# ---- the database, read as any other reader would ---------------------------------------------

def read(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """The harness's own reads: retried, so that its bookkeeping never stops the soak."""
    for attempt in range(10):
        try:
            with closing(sqlite3.connect(db, timeout=10)) as conn:
                return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            if attempt == 9:
                raise
            time.sleep(0.5)
    return []


def has_runs(db: Path) -> bool:
    return db.exists() and bool(read(db, "SELECT 1 FROM sqlite_master WHERE name = 'runs'"))


def run_audio_seconds(db: Path, pid: int, after_run: int) -> float | None:
    """Audio read so far by the daemon's current run (None until it has started one)."""
    if not has_runs(db):
        return None
    rows = read(db, "SELECT audio_seconds FROM runs WHERE pid = ? AND id > ? ORDER BY id DESC LIMIT 1",
                (pid, after_run))
    return rows[0][0] if rows else None


def last_run_id(db: Path) -> int:
    return read(db, "SELECT coalesce(max(id), 0) FROM runs")[0][0] if has_runs(db) else 0


def outbox_backlog(db: Path) -> int:
    return read(db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")[0][0]


# ---- the broker and the subscriber ------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """Debian's Mosquitto on a loopback port, persistent and durable enough to be SIGKILLed.

    Mosquitto saves its state only every `autosave_interval` (30 min by default); a SIGKILL
    loses whatever it acknowledged since. Saving after every change is what a broker that may
    die without warning needs, so the soak measures the station, not that window.
    """

    def __init__(self, folder: Path, lazy: bool = False):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join([
            f"user {getpass.getuser()}", f"listener {self.port} 127.0.0.1", "allow_anonymous true",
            "persistence true", f"persistence_location {folder}/",
            *([] if lazy else ["autosave_on_changes true", "autosave_interval 1"]),
            "max_queued_messages 0",  # the default 1000 drops QoS 1 messages for a slow subscriber
            f"log_dest file {folder}/mosquitto.log",
            "log_type error", "log_type warning", "log_type notice", "log_type information"]) + "\n")
        self.process: subprocess.Popen | None = None

    def start(self, attempts: int = 5) -> None:
        for _ in range(attempts):
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.05)
            self.kill()
            time.sleep(1)
        raise RuntimeError(f"mosquitto would not start on port {self.port}; see {self.folder}/mosquitto.log")

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.up:
            self.process.kill()
        if self.process:
            self.process.wait()

    def stop(self) -> None:
        if self.up:
            self.process.terminate()
            self.process.wait(10)


class BrokerChaos(threading.Thread):
    """SIGKILLs the broker every `every` seconds and restarts it after `down` seconds."""

    def __init__(self, broker: Broker, every: float, down: float):
        super().__init__(name="broker-chaos", daemon=True)
        self.broker, self.every, self.down = broker, every, down
        self.restarts = 0
        self.error: str | None = None
        self._halted = threading.Event()

    def run(self) -> None:
        try:
            while not self._halted.wait(self.every):
                self.broker.kill()
                time.sleep(self.down)
                self.broker.start()
                self.restarts += 1
        except RuntimeError as exc:
            self.error = str(exc)

    def halt(self) -> None:
        self._halted.set()

    def finish(self) -> None:
        """Stop killing; returns once the broker is up again."""
        self.halt()
        self.join()
        if not self.broker.up:
            self.broker.start()


class Subscriber:
    """A persistent QoS 1 session (fixed id, clean_session=False) counting ids per topic kind."""

    def __init__(self, port: int, prefix: str, client_id: str = "soak-subscriber"):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.received = {kind: Counter() for kind in KINDS}
        self.unreadable = 0
        self.health: tuple[float, dict] | None = None  # (when received, payload) of the last live one
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(0.2, 2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(f"{prefix}/detections", 1), (f"{prefix}/alerts/#", 1), (f"{prefix}/health", 1)])
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(15):
            raise RuntimeError("the subscriber could not subscribe")

    def _on_message(self, client, userdata, message) -> None:
        try:
            payload = json.loads(message.payload)
            message_id = payload["id"]
        except (ValueError, KeyError, TypeError):
            self.unreadable += 1
            return
        if message.topic.endswith("/health"):
            if not message.retain:  # a retained one may come from an earlier life
                self.health = (time.monotonic(), payload)
            return
        kind = "detections" if message.topic.endswith("/detections") else "alerts"
        with self.lock:
            self.received[kind][message_id] += 1

    def ids(self, kind: str) -> set[str]:
        with self.lock:
            return set(self.received[kind])

    def total(self, kind: str) -> int:
        with self.lock:
            return sum(self.received[kind].values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---- the recorder's card ----------------------------------------------------------------------

@dataclass(frozen=True)
class Recording:
    path: Path
    seconds: float


def recordings(data: Path) -> list[Recording]:
    """The shared recordings of FOLDERS with their lengths, from the data's manifest."""
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        raise SystemExit(f"soak: {manifest}: not found (set --data or $STATION_TEST_DATA)")
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if Path(r["path"]).parts[:2] in {("audio", d) for d in FOLDERS}]
    found = sorted((Recording(data / r["path"], float(r["duration_s"])) for r in rows
                    if (data / r["path"]).is_file()), key=lambda r: str(r.path))
    if not found:
        raise SystemExit(f"soak: no recordings of {', '.join(FOLDERS)} under {data}")
    return found


class Card:
    """The watched folder, filled in order with complete copies on one continuous timeline."""

    def __init__(self, folder: Path, playlist: list[Recording], start: float):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.playlist, self.start = folder, playlist, start
        self.files = 0
        self.seconds = 0.0

    def place_next(self) -> None:
        recording = self.playlist[self.files % len(self.playlist)]
        name = f"{self.files:06d}_{recording.path.name}"
        partial = self.folder / f"{name}.part"  # not a watched extension until the rename
        shutil.copyfile(recording.path, partial)
        end = self.start + self.seconds + recording.seconds  # a recorder's file ends when written
        os.utime(partial, (end, end))
        partial.rename(self.folder / name)
        self.files += 1
        self.seconds += recording.seconds


def timeline_start(hours: float) -> float:
    """Dawn of a day far enough in the past that the whole timeline has already happened."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today - timedelta(days=math.ceil(hours / 24) + 1, hours=-4)).timestamp()


# ---- the daemon and its watchers ----------------------------------------------------------------

class Daemon:
    def __init__(self, command: list[str], work: Path):
        self.command, self.work = command, work
        self.logs: list[Path] = []
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.after_run = 0  # runs of earlier lives have ids up to this

    @property
    def life(self) -> int:
        return len(self.logs)

    def start(self, db: Path) -> None:
        self.after_run = last_run_id(db)
        log = self.work / "logs" / f"daemon-{self.life + 1:02d}.log"
        log.parent.mkdir(exist_ok=True)
        self.logs.append(log)
        with log.open("w") as out:
            self.process = subprocess.Popen(self.command, cwd=self.work, stdout=out, stderr=subprocess.STDOUT,
                                            env=CHILD_ENV)
        self.started = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout: float = 120.0) -> int | None:
        """SIGTERM and wait; None if it had to be killed."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


class RssSampler(threading.Thread):
    """VmRSS of the running daemon every `every` seconds: (life, seconds into the life, MB)."""

    def __init__(self, daemon: Daemon, every: float):
        super().__init__(name="rss", daemon=True)
        self.daemon_, self.every = daemon, every
        self.samples: list[tuple[int, float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            d = self.daemon_
            try:
                with open(f"/proc/{d.process.pid}/status") as f:
                    kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            except (OSError, StopIteration, AttributeError):
                continue  # between lives
            self.samples.append((d.life, time.monotonic() - d.started, kb / 1024))


class Reader(threading.Thread):
    """Reads the database all along, as a user would: a sqlite3 query and `station detections`."""

    def __init__(self, db: Path, config: Path, every: float):
        super().__init__(name="reader", daemon=True)
        self.db, self.config, self.every = db, config, every
        self.polls = 0
        self.failures: Counter[str] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        cli = [sys.executable, "-m", "station.cli", "detections", "--json", "--limit", "5",
               "--db", str(self.db), "--config", str(self.config)]
        while not self.stop.wait(self.every):
            self.polls += 1
            try:
                with closing(sqlite3.connect(self.db, timeout=5)) as conn:
                    conn.execute("SELECT count(*), max(end_time) FROM detections").fetchone()
            except sqlite3.Error as exc:
                self.failures[f"sqlite3: {exc}"] += 1
            try:
                result = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=CHILD_ENV)
                for line in result.stdout.splitlines():
                    json.loads(line)
                if result.returncode != 0 or "Traceback" in result.stderr:
                    self.failures[f"station detections: exit {result.returncode}: "
                                  f"{(result.stderr.strip().splitlines() or [''])[-1]}"] += 1
            except subprocess.TimeoutExpired:
                self.failures["station detections: no answer in 60 s"] += 1
            except ValueError as exc:
                self.failures[f"station detections: not JSON lines: {exc}"] += 1


# ---- the soak ---------------------------------------------------------------------------------

def export_tiny_model(folder: Path) -> Path:
    """tests/conftest.py's tiny random wav2vec2, exported in a child process: torch stays out of the soak."""
    code = ("import sys; from pathlib import Path; from station.export import ExportOptions, export_model; "
            "from station.random_model import build_random_wav2vec2; root = Path(sys.argv[1]); "
            "hf = build_random_wav2vec2(root / 'hf', size='tiny'); "
            "export_model(ExportOptions(str(hf), root / 'tiny', window_seconds=3.0, name='tiny-random'))")
    result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=CHILD_ENV)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"soak: could not export the tiny model (needs the export extra; or pass --model DIR): {last}")
    return folder / "tiny"


def write_config(work: Path, port: int) -> Path:
    config = work / "soak.yaml"
    config.write_text(f"""station:
  id: {STATION_ID}
replay:
  poll_seconds: 0.5
mqtt:
  enabled: true
  port: {port}
  client_id: soak-station
  reconnect_max_seconds: 2
  health_seconds: 1  # its live counters tell when every placed file was read
logging:
  summary_seconds: 1
""")
    return config


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = (args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"station-soak-{os.getpid()}").resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.db = self.work / "station.db"
        self.target = args.hours * 3600
        self.rng = random.Random(args.seed)
        self.problems: list[str] = []
        self.unexpected_exits: list[int | None] = []
        self.kills = 0

    def run(self) -> dict:
        say(f"work folder {self.work}")
        playlist = recordings(self.args.data)
        model = self.args.model or export_tiny_model(self.work / "model")
        self.broker = Broker(self.work / "broker", self.args.lazy_broker)
        self.broker.start()
        subscriber = Subscriber(self.broker.port, f"station/{STATION_ID}")
        self.config = write_config(self.work, self.broker.port)
        card = Card(self.work / "card", playlist, timeline_start(self.args.hours))
        self.daemon = Daemon([sys.executable, "-m", "station.cli", "replay", str(card.folder), "--watch",
                              "--config", str(self.config), "--db", str(self.db), "--model", str(model)], self.work)
        chaos = BrokerChaos(self.broker, self.args.broker_kill_every, self.args.broker_down)
        rss = RssSampler(self.daemon, self.args.rss_every)
        reader = Reader(self.db, self.config, self.args.reader_every)
        started = time.monotonic()
        try:
            self.daemon.start(self.db)
            chaos.start()
            rss.start()
            try:
                self._season(card, reader)
                chaos.finish()
                self._wait_until_read(card, subscriber)
            except Stalled as exc:
                self.problems.append(str(exc))
                chaos.finish()
            final_exit = self._stop_cleanly()
            received_all = self._wait_for_subscriber(subscriber)
        finally:
            for thread in (reader, rss):
                thread.stop.set()
            if self.daemon.alive:
                self.daemon.kill()
            chaos.halt()
            subscriber.close()
            self.broker.stop()
        wall = time.monotonic() - started
        figures = self._figures(card, subscriber, chaos, rss, reader, final_exit, received_all, wall)
        shutil.rmtree(card.folder)  # copies of the shared recordings; the same seed places them again
        return figures

    def _season(self, card: Card, reader: Reader) -> None:
        """Place the audio, killing the daemon at seeded moments, until all of it is placed."""
        kill_points = sorted(self.rng.uniform(0.15, 0.85) * self.target for _ in range(self.args.daemon_kills))
        kill_at, last_report, placing_since = None, 0.0, time.monotonic()
        progress = Progress(self.args.stall_seconds)
        while card.seconds < self.target or kill_points:
            now = time.monotonic()
            if not self.daemon.alive:
                self._restart_after_exit()
            state = run_audio_seconds(self.db, self.daemon.process.pid, self.daemon.after_run)
            started = state is not None
            if started and reader.ident is None:
                reader.start()  # once the daemon has made the database: a reader never creates it
            # The run row is updated once a second while audio flows; the lead covers its staleness.
            read = state or 0.0
            allowed = self.target if self.args.rate <= 0 else self.args.rate * (now - placing_since)
            while card.seconds < min(self.target, allowed) and card.seconds - read < self.args.lead:
                card.place_next()
            if kill_points and card.seconds >= kill_points[0] and started:
                kill_at = kill_at or now + self.rng.uniform(0.0, 2.0)  # somewhere inside the work
                if now >= kill_at:
                    self.daemon.kill()
                    self.kills += 1
                    say(f"daemon SIGKILLed ({self.kills}/{self.args.daemon_kills}) at {card.seconds / 3600:.2f} h "
                        "placed; restarting")
                    self.daemon.start(self.db)
                    kill_points.pop(0)
                    kill_at = None
            if now - last_report >= 30:
                last_report = now
                say(f"placed {card.seconds / 3600:.2f} h in {card.files} files; life {self.daemon.life} "
                    f"has read {read / 3600:.2f} h")
            progress.check(self.daemon.life, state, card.files)
            time.sleep(0.2)

    def _wait_until_read(self, card: Card, subscriber: Subscriber) -> None:
        """Until the daemon's live health message (MQTT, every second) counts every placed file as read."""
        asked = time.monotonic()
        progress = Progress(self.args.stall_seconds)
        while True:
            if not self.daemon.alive:
                self._restart_after_exit()
            received, figures = subscriber.health or (0.0, {})
            if received > asked and figures.get("files_ok", 0) + figures.get("files_failed", 0) >= card.files:
                say(f"all {card.seconds / 3600:.2f} h placed and read")
                return
            progress.check(self.daemon.life, figures.get("audio_seconds"))
            time.sleep(0.2)

    def _restart_after_exit(self) -> None:
        code = self.daemon.process.returncode
        self.unexpected_exits.append(code)
        self.problems.append(f"daemon life {self.daemon.life} exited by itself with code {code} "
                             f"(see {self.daemon.logs[-1]})")
        say(f"daemon exited by itself with code {code}; restarting")
        self.daemon.start(self.db)

    def _stop_cleanly(self) -> int | None:
        """With the broker up: let the outbox drain, then SIGTERM the daemon and wait."""
        if not wait_until(lambda: outbox_backlog(self.db) == 0, self.args.drain_timeout):
            self.problems.append(f"the outbox still held {outbox_backlog(self.db)} message(s) after "
                                 f"{self.args.drain_timeout:.0f} s with the broker up")
        say(f"outbox backlog {outbox_backlog(self.db)}; SIGTERM to the daemon")
        code = self.daemon.terminate()
        if code not in (0, 130):
            self.problems.append(f"the daemon's clean stop ended with {code!r} (0 or 130 expected)")
        return code

    def _wait_for_subscriber(self, subscriber: Subscriber) -> bool:
        produced = produced_ids(self.db)
        return wait_until(lambda: all(produced[k] <= subscriber.ids(k) for k in KINDS), self.args.drain_timeout)

    def _figures(self, card, subscriber, chaos, rss, reader, final_exit, received_all, wall) -> dict:
        db = self.db
        produced = produced_ids(db)
        messages = {}
        for kind in KINDS:
            got = subscriber.ids(kind)
            messages[kind] = {"produced": len(produced[kind]), "received_distinct": len(got),
                              "received_total": subscriber.total(kind),
                              "duplicates_received": subscriber.total(kind) - len(got),
                              "lost": len(produced[kind] - got), "unexpected": len(got - produced[kind])}
        runs = read(db, "SELECT status, count(*), sum(audio_seconds) FROM runs GROUP BY status")
        final_run = read(db, "SELECT audio_seconds, files_ok, files_failed FROM runs ORDER BY id DESC LIMIT 1")[0]
        logs = scan_logs(self.daemon.logs)
        figures = {
            "work": str(self.work), "wall_seconds": round(wall, 1), "options": vars_json(self.args),
            "audio": {"target_hours": self.args.hours, "placed_hours": round(card.seconds / 3600, 3),
                      "placed_files": card.files,
                      "processed_hours_all_runs": round(sum(r[2] or 0 for r in runs) / 3600, 3),
                      "covered_hours_final_run": round(final_run[0] / 3600, 3),
                      "final_run_files": final_run[1] + final_run[2], "final_run_files_failed": final_run[2]},
            "daemon_kills": self.kills, "daemon_lives": self.daemon.life, "unexpected_exits": self.unexpected_exits,
            "final_exit_code": final_exit, "broker_restarts": chaos.restarts,
            "messages": messages, "unreadable_messages": subscriber.unreadable,
            "subscriber_has_everything": received_all,
            "outbox_unsent": outbox_backlog(db),
            "integrity_check": "; ".join(r[0] for r in read(db, "PRAGMA integrity_check")),
            "open_events_left": read(db, "SELECT count(*) FROM detections WHERE status = 'open'")[0][0],
            "runs_by_status": {status: count for status, count, _ in runs},
            "detection_rows": read(db, "SELECT count(*) FROM detections")[0][0],
            "duplicate_detection_groups": duplicates(db, "detections", "source, label, start_offset"),
            "alert_rows": read(db, "SELECT count(*) FROM alerts")[0][0],
            "duplicate_alert_groups": duplicates(db, "alerts", "type, label, event_time"),
            "reader": {"polls": reader.polls, "failures": sum(reader.failures.values()),
                       "kinds": dict(reader.failures.most_common(5))},
            "daemon_logs": logs,
            "rss": rss_figures(rss.samples, self.args.warmup, self.work / "rss.csv"),
        }
        if chaos.error:
            self.problems.append(f"the broker chaos stopped: {chaos.error}")
        figures["problems"] = self.problems + judge(figures, self.args)
        return figures


class Stalled(Exception):
    pass


class Progress:
    """Raises Stalled when the values it is shown have not changed for `seconds`."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.last, self.changed = None, time.monotonic()

    def check(self, *values) -> None:
        if values != self.last:
            self.last, self.changed = values, time.monotonic()
        elif time.monotonic() - self.changed > self.seconds:
            raise Stalled(f"the daemon made no progress for {self.seconds:.0f} s; gave up")


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def produced_ids(db: Path) -> dict[str, set[str]]:
    """Every message id the station produced: in its outbox, or owed by a closed detection or an alert."""
    ids = {kind: set() for kind in KINDS}
    for topic, payload in read(db, "SELECT topic, payload FROM outbox"):
        kind = "detections" if topic.endswith("/detections") else "alerts" if "/alerts/" in topic else None
        if kind:
            ids[kind].add(json.loads(payload)["id"])
    ids["detections"] |= {r[0] for r in read(db, "SELECT id FROM detections WHERE status = 'closed'")}
    ids["alerts"] |= {r[0] for r in read(db, "SELECT id FROM alerts")}
    return ids


def duplicates(db: Path, table: str, columns: str) -> int:
    return read(db, f"SELECT count(*) - (SELECT count(*) FROM (SELECT DISTINCT {columns} FROM {table})) "
                    f"FROM {table}")[0][0]


def scan_logs(logs: list[Path]) -> dict:
    """Tracebacks, OperationalErrors and ERROR lines in the daemon's logs, with excerpts."""
    tracebacks = operational = 0
    errors: Counter[str] = Counter()
    excerpts: list[str] = []
    for log in logs:
        lines = log.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            tracebacks += "Traceback (most recent call last)" in line
            operational += "OperationalError" in line or "database is locked" in line
            if " ERROR " in line:
                errors[line.split(" ERROR ", 1)[1][:160]] += 1
            if ("Traceback" in line or "OperationalError" in line) and len(excerpts) < 3:
                excerpts.append(f"{log.name}:{i + 1}:\n" + "\n".join(lines[i:i + 25]))
    return {"folder": str(logs[0].parent) if logs else None, "tracebacks": tracebacks,
            "operational_errors": operational, "error_lines": sum(errors.values()),
            "errors": dict(errors.most_common(5)), "excerpts": excerpts}


def rss_figures(samples: list[tuple[int, float, float]], warmup: float, csv_path: Path) -> dict:
    """Per life: RSS at the end of warm-up and the max after it; the slope over the longest life.

    Every sample goes to `csv_path` (life, seconds into the life, MB) for a closer look.
    """
    with csv_path.open("w", newline="") as f:
        rows = [(n, round(t, 1), round(mb, 2)) for n, t, mb in samples]
        csv.writer(f).writerows([("life", "seconds", "rss_mb"), *rows])
    lives = {}
    for life in sorted({s[0] for s in samples}):
        mine = [(t, mb) for n, t, mb in samples if n == life]
        after = [(t, mb) for t, mb in mine if t >= warmup]
        lives[life] = {"seconds": round(mine[-1][0], 1), "samples": len(mine),
                       "warmup_mb": round(after[0][1], 1) if after else None,
                       "max_after_warmup_mb": round(max(mb for _, mb in after), 1) if after else None,
                       "last_mb": round(mine[-1][1], 1), "max_mb": round(max(mb for _, mb in mine), 1)}
    longest = max(lives, key=lambda n: lives[n]["seconds"], default=None)
    slope = growth = None
    if longest is not None:
        points = [(t / 3600, mb) for n, t, mb in samples if n == longest and t >= warmup]
        if len(points) >= 10:  # peaks follow the file being decoded: compare medians, not extremes
            fifth = len(points) // 5
            growth = round(statistics.median(mb for _, mb in points[-fifth:])
                           - statistics.median(mb for _, mb in points[:fifth]), 1)
        if len(points) >= 3:
            mean_t = sum(t for t, _ in points) / len(points)
            mean_mb = sum(mb for _, mb in points) / len(points)
            var = sum((t - mean_t) ** 2 for t, _ in points)
            slope = round(sum((t - mean_t) * (mb - mean_mb) for t, mb in points) / var, 2) if var else None
    return {"lives": lives, "longest_life": longest, "slope_mb_per_hour_after_warmup": slope,
            "median_growth_mb_first_to_last_fifth": growth, "samples": str(csv_path)}


def judge(f: dict, args: argparse.Namespace) -> list[str]:
    """What makes the soak fail (exit 1)."""
    problems = []
    for kind, m in f["messages"].items():
        if m["lost"]:
            problems.append(f"{m['lost']} {kind} message(s) produced but never received")
    if f["integrity_check"] != "ok":
        problems.append(f"integrity_check: {f['integrity_check']}")
    if f["daemon_logs"]["tracebacks"] or f["daemon_logs"]["operational_errors"]:
        problems.append(f"{f['daemon_logs']['tracebacks']} Traceback(s), {f['daemon_logs']['operational_errors']} "
                        f"OperationalError(s) in the daemon's logs")
    if f["duplicate_detection_groups"] or f["duplicate_alert_groups"]:
        problems.append(f"{f['duplicate_detection_groups']} duplicate detection row(s), "
                        f"{f['duplicate_alert_groups']} duplicate alert row(s)")
    if f["outbox_unsent"]:
        problems.append(f"{f['outbox_unsent']} message(s) left unsent in the outbox")
    if f["open_events_left"]:
        problems.append(f"{f['open_events_left']} event(s) still open after a clean stop")
    if f["reader"]["failures"]:
        problems.append(f"{f['reader']['failures']} failed database read(s)")
    if set(f["runs_by_status"]) - {"stopped", "crashed"}:
        problems.append(f"runs by status: {f['runs_by_status']}")
    if f["daemon_kills"] < args.daemon_kills:
        problems.append(f"only {f['daemon_kills']} of {args.daemon_kills} daemon kills happened")
    if f["audio"]["covered_hours_final_run"] < 0.99 * f["audio"]["placed_hours"]:
        problems.append("the final run did not read all the audio placed")
    return problems


def vars_json(args: argparse.Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def report(f: dict) -> str:
    a, rss = f["audio"], f["rss"]
    lines = [
        f"soak: {a['placed_hours']:.2f} h of audio placed ({a['placed_files']} files) "
        f"in {f['wall_seconds'] / 60:.1f} min",
        f"  audio read: {a['processed_hours_all_runs']:.2f} h over all runs; the final run covered "
        f"{a['covered_hours_final_run']:.2f} h ({a['final_run_files']} files, {a['final_run_files_failed']} skipped)",
        f"  daemon SIGKILLs {f['daemon_kills']}, lives {f['daemon_lives']}, exits by itself "
        f"{len(f['unexpected_exits'])}, clean stop exit {f['final_exit_code']}; broker SIGKILLs {f['broker_restarts']}",
    ]
    for kind, m in f["messages"].items():
        lines.append(f"  {kind}: produced {m['produced']}, received {m['received_distinct']} distinct "
                     f"({m['received_total']} in all, {m['duplicates_received']} duplicates), lost {m['lost']}")
    lines += [
        f"  outbox unsent {f['outbox_unsent']}; integrity_check {f['integrity_check']}; open events left "
        f"{f['open_events_left']}; runs {f['runs_by_status']}",
        f"  detections {f['detection_rows']} rows, {f['duplicate_detection_groups']} duplicates; alerts "
        f"{f['alert_rows']} rows, {f['duplicate_alert_groups']} duplicates",
        f"  reader: {f['reader']['polls']} polls, {f['reader']['failures']} failures {f['reader']['kinds'] or ''}",
        f"  daemon logs ({f['daemon_logs']['folder']}): {f['daemon_logs']['tracebacks']} Tracebacks, "
        f"{f['daemon_logs']['operational_errors']} OperationalErrors, {f['daemon_logs']['error_lines']} ERROR lines "
        f"{f['daemon_logs']['errors'] or ''}",
        "  RSS per life (MB): " + ", ".join(
            f"#{n} {life['seconds']:.0f} s: warm-up {life['warmup_mb']}, max after {life['max_after_warmup_mb']}, "
            f"last {life['last_mb']}"
            for n, life in rss["lives"].items()),
        f"  RSS slope after warm-up over the longest life (#{rss['longest_life']}): "
        f"{rss['slope_mb_per_hour_after_warmup']} MB/h; median of its last fifth minus its first: "
        f"{rss['median_growth_mb_first_to_last_fifth']} MB",
    ]
    lines += [f"  excerpt {e}" for e in f["daemon_logs"]["excerpts"]]
    lines.append("  PASS" if not f["problems"] else "  FAIL: " + "; ".join(f["problems"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures = Soak(args).run()
    print(report(figures), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if figures["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
