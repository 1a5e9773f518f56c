"""A Xeno-Canto API v3 stand-in on 127.0.0.1, built from the real fixtures in shared/data.

Recordings are the real v2 Puerto Rico response with v3's field names, limited to those
whose audio is in shared/data (served at /<id>/download), plus one restricted recording.
Knobs: `fail_next` answers that many requests with 503; `truncate_next` cuts that many
downloads short; `requests` logs every path served.
"""
from __future__ import annotations

import json
import re
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

KEY = "test-key-5f1e9c"


def v3_recordings(data: Path, base: str) -> list[dict]:
    v2 = json.loads((data / "xeno-canto" / "xc_v2_real_response_puerto_rico.json").read_text())
    audio = {p.stem[2:] for p in (data / "audio" / "xc_puerto_rico").glob("XC*.mp3")}
    out = []
    for i, r in enumerate(v2["recordings"]):
        if r["id"] not in audio:
            continue
        r = {("grp" if k == "group" else "lon" if k == "lng" else k): v for k, v in r.items() if k != "bird-seen"}
        host = base.split("//", 1)[1]
        r["file"] = f"//{host}/{r['id']}/download" if i % 2 else f"{base}/{r['id']}/download"
        r["annotation-set"] = []
        out.append(r)
    restricted = dict(out[0], id="999999", file="", en="Puerto Rican Parrot", gen="Amazona", sp="vittata")
    return [*out, restricted]


def matches(recording: dict, query: str) -> bool:
    for token in shlex.split(query):
        tag, _, value = token.partition(":")
        value = value.strip('"')
        if tag == "gen" and recording["gen"].lower() != value.lower():
            return False
        if tag == "sp" and recording["sp"].lower() != value.lower():
            return False
        if tag == "en" and recording["en"].lower() != value.lstrip("=").lower():
            return False
        if tag == "cnt" and recording["cnt"].lower() != value.lower():
            return False
        if tag == "q" and value.startswith(">") and recording["q"] >= value[1:]:
            return False
    return True


class FakeXenoCanto:
    def __init__(self, data: Path):
        self.data = data
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.recordings = v3_recordings(data, self.base)
        self.fail_next = 0
        self.truncate_next = 0
        self.requests: list[str] = []
        self._lock = threading.Lock()

    @property
    def api_url(self) -> str:
        return f"{self.base}/api/3/recordings"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _take(self, knob: str) -> bool:
        with self._lock:
            if getattr(self, knob) > 0:
                setattr(self, knob, getattr(self, knob) - 1)
                return True
            return False

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                fake.requests.append(url.path)
                if fake._take("fail_next"):
                    return self._send(503, b"Service Unavailable", "text/plain")
                if url.path == "/api/3/recordings":
                    return self._api(parse_qs(url.query))
                match = re.fullmatch(r"/(\d+)/download", url.path)
                if match:
                    return self._audio(match.group(1))
                self._send(404, b"not found", "text/plain")

            def _api(self, params):
                if params.get("key", [""])[0] != KEY:
                    body = (fake.data / "xeno-canto" / "xc_v3_real_error_401_missing_key.json").read_bytes()
                    return self._send(401, body)
                query = params.get("query", [""])[0]
                if any(":" not in t for t in shlex.split(query)):
                    body = (fake.data / "xeno-canto" / "xc_v3_assembled_error_400_untagged_query.json").read_bytes()
                    return self._send(400, body)
                per_page, page = int(params.get("per_page", ["100"])[0]), int(params.get("page", ["1"])[0])
                found = [r for r in fake.recordings if matches(r, query)]
                pages = max(1, -(-len(found) // per_page))
                body = {"numRecordings": str(len(found)), "numSpecies": str(len({r["sp"] for r in found})),
                        "page": page, "numPages": pages, "recordings": found[(page - 1) * per_page: page * per_page]}
                self._send(200, json.dumps(body).encode())

            def _audio(self, xc_id):
                path = fake.data / "audio" / "xc_puerto_rico" / f"XC{xc_id}.mp3"
                if not path.is_file():
                    return self._send(404, b"no such recording", "text/plain")
                body = path.read_bytes()
                if fake._take("truncate_next"):
                    self.send_response(200)
                    self.send_header("Content-Type", "audio/mpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the transfer breaks off
                    return
                self._send(200, body, "audio/mpeg")

            def _send(self, status, body: bytes, content_type="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
