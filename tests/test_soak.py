"""A short run of scripts/soak.py: each fault at least once, nothing lost, nothing broken.

The script itself judges the run (exit code); the figures are asserted here too so that a
failure says which one went wrong. About a minute on a busy 2-core machine.
"""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_short_soak_survives_broker_and_daemon_kills_losing_nothing(tiny_model, shared_data, tmp_path):
    figures_file = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak.py"), "--hours", "0.25", "--rate", "30",
         "--broker-kill-every", "8", "--daemon-kills", "2", "--seed", "3", "--stall-seconds", "90",
         "--model", str(tiny_model), "--data", str(shared_data), "--work", str(tmp_path / "work"),
         "--json", str(figures_file)],
        capture_output=True, text=True, timeout=600)
    output = result.stdout[-4000:] + result.stderr[-4000:]
    assert figures_file.exists(), output
    f = json.loads(figures_file.read_text())

    assert f["audio"]["placed_hours"] >= 0.25 and f["audio"]["covered_hours_final_run"] >= 0.25, output
    assert f["daemon_kills"] == 2 and f["runs_by_status"].get("crashed") == 2, output
    assert f["broker_restarts"] >= 1, output
    assert f["runs_by_status"].get("stopped") == 1 and f["final_exit_code"] in (0, 130), output
    assert f["messages"]["detections"]["produced"] > 0, "the tiny model detects something in 15 min of audio"
    for kind, m in f["messages"].items():
        assert m["lost"] == 0, (kind, m, output)
    assert f["outbox_unsent"] == 0 and f["integrity_check"] == "ok", output
    assert f["open_events_left"] == 0, output
    assert f["daemon_logs"]["tracebacks"] == 0 and f["daemon_logs"]["operational_errors"] == 0, output
    assert f["reader"]["polls"] > 0 and f["reader"]["failures"] == 0, output
    assert f["duplicate_detection_groups"] == 0 and f["duplicate_alert_groups"] == 0, output
    assert f["problems"] == [] and result.returncode == 0, output
