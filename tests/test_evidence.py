"""Clips through the whole station: a replay writes each closed event's audio, exactly, or says why not."""
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from conftest import REPO, station_cli, write_config
from helpers import rows
from station.messages import detection_payload
from station.store import detection_from_row

SCHEMA = json.loads((REPO / "station/schemas/detection.schema.json").read_text())


def test_a_replay_writes_a_clip_per_closed_event_equal_to_the_source_span(tiny_model, shared_data, tmp_path):
    import jsonschema

    magpie = shared_data / "audio" / "birds_misc" / "Pica_pica_30s.wav"
    assert sf.info(str(magpie)).subtype == "PCM_16"  # so a 16-bit FLAC clip can hold it exactly
    source, rate = sf.read(str(magpie), dtype="float32", always_2d=True)
    source = source.mean(axis=1)
    config = write_config(tmp_path / "c.yaml", "detection:\n  threshold: 0.3\nclips:\n  pre_roll_seconds: 1.0\n"
                                               "  post_roll_seconds: 1.0\n")
    db = tmp_path / "st.db"
    result = station_cli("replay", str(magpie), "--config", str(config), "--model", str(tiny_model),
                         "--db", str(db), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = rows(db, "SELECT * FROM detections")
    assert events and all(e["clip_path"] for e in events), "every closed event has its clip"
    for event in events:
        clip, clip_rate = sf.read(str(tmp_path / "clips" / event["clip_path"]), dtype="float32")
        assert clip_rate == rate
        assert event["clip_start_offset"] == max(0.0, event["start_offset"] - 1.0)
        assert event["clip_end_offset"] == min(event["end_offset"] + 1.0, len(source) / rate)
        lo, hi = round(event["clip_start_offset"] * rate), round(event["clip_end_offset"] * rate)
        np.testing.assert_array_equal(clip, source[lo:hi])
        jsonschema.validate(detection_payload(detection_from_row(event), first=False), SCHEMA)
    (run,) = rows(db, "SELECT clips_written, clips_missing FROM runs")
    assert run == {"clips_written": len(events), "clips_missing": 0}
    listed = station_cli("clips", "--db", str(db), "--json", cwd=tmp_path)
    assert {json.loads(line)["clip_path"] for line in listed.stdout.splitlines()} == {e["clip_path"] for e in events}
    shown = station_cli("clips", "show", events[0]["id"][:8], "--db", str(db), cwd=tmp_path)
    clip_file, png = shown.stdout.split()
    assert shown.returncode == 0 and clip_file.endswith(events[0]["clip_path"]) and png.endswith(".png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_with_the_disk_nearly_full_no_clip_is_written_but_detection_goes_on(tiny_model, gwwa, tmp_path):
    config = write_config(tmp_path / "c.yaml", "detection:\n  threshold: 0.3\nclips:\n  min_free_mb: 1.0e+12\n")
    db = tmp_path / "st.db"
    result = station_cli("replay", str(gwwa), "--config", str(config), "--model", str(tiny_model),
                         "--db", str(db), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = rows(db, "SELECT clip_path FROM detections")
    assert events and all(e["clip_path"] is None for e in events)
    assert rows(db, "SELECT count(*) AS n FROM alerts WHERE type = 'DISK_LOW'")[0]["n"] >= 1
    assert sum("no clips are written" in line for line in result.stderr.splitlines()) == 1, "said once"
    assert not list((tmp_path / "clips").rglob("*.flac"))
