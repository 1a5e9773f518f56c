"""A real Mosquitto on a free 127.0.0.1 port, with optional password file and TLS, restartable.

Persistence is on so that a subscriber's session (clean_session=False) and its queued
QoS 1 messages survive a broker restart, as on a real deployment.
"""
from __future__ import annotations

import getpass
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    def __init__(self, folder: Path, users: dict[str, str] | None = None, tls: dict[str, Path] | None = None):
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        # As root, mosquitto would switch to user "mosquitto", which cannot write in pytest's 0700 folders.
        lines = [f"user {getpass.getuser()}", f"listener {self.port} 127.0.0.1", "persistence true",
                 f"persistence_location {folder}/",
                 # Mosquitto drops QoS 1 messages beyond 1000 queued for a slow subscriber by default.
                 "max_queued_messages 0",
                 f"log_dest file {folder}/mosquitto.log", "log_type all"]
        if users:
            passwords = folder / "passwd"
            passwords.write_text("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> Mosquitto:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.process.stderr.read().decode()}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def log(self) -> str:
        path = self.folder / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        """kill -9: no goodbye to clients, nothing saved since the last save."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def save(self) -> None:
        """Write the broker's persistence file now (SIGUSR1), e.g. to keep a subscriber's session over a kill."""
        before = self._persistence_mtime()
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while self._persistence_mtime() == before and time.monotonic() < deadline:
            time.sleep(0.05)

    def _persistence_mtime(self) -> float | None:
        db = self.folder / "mosquitto.db"
        return db.stat().st_mtime_ns if db.exists() else None


class Subscriber:
    """Collects (topic, payload) from a persistent session; reconnects by itself."""

    def __init__(self, port: int, topic: str = "#", client_id: str = "test-subscriber", **credentials):
        self.messages: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if credentials:
            self.client.username_pw_set(credentials["username"], credentials["password"])
        self.client.reconnect_delay_set(0.2, 1)
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), self.connected.set())
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("subscriber could not connect")
        time.sleep(0.2)  # let the SUBACK arrive

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload.decode(), message.retain))

    def json(self, prefix: str) -> list[dict]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t.startswith(prefix)]

    def wait_for(self, condition, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {len(self.messages)} messages")
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_test_ca(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost, made with openssl."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key", "-out", "ca.crt",
        "-subj", "/CN=field-station test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    return {"ca": folder / "ca.crt", "cert": folder / "server.crt", "key": folder / "server.key"}
