"""scripts/compare_detectors.py runs once on one shared soundscape: its structure, not its figures."""
import json

from conftest import require_or_skip
from test_benchmarks import run_script


def test_compare_detectors_prints_both_ways_side_by_side(birdnet_folder, shared_data, tmp_path):
    soundscapes = shared_data / "audio" / "soundscapes"
    audio, labels = soundscapes / "SSW49.mp3", soundscapes / "SSW49_5s_labels.csv"
    if not (audio.exists() and labels.exists()):
        require_or_skip(f"{audio} and its labels are not in the shared data")
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / audio.name).symlink_to(audio)
    (folder / labels.name).symlink_to(labels)
    result = run_script("compare_detectors.py", str(folder), "--model", str(birdnet_folder),
                        "--json", str(tmp_path / "figures.json"))
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert [name.endswith("SSW49.mp3") for name in figures["files"]] == [True]
    rows = figures["rows"]
    assert {r["method"] for r in rows} == {"birdnetlib (3 s chunks)", "station (hop 1.5 s)"}
    assert [r["location"] for r in rows if r["default"]] == [False, True]
    for row in rows:
        assert 0 <= row["precision"] <= 100 and 0 <= row["recall"] <= 100 and 0 <= row["f1"] <= 100
        # SSW49 labels two calls; every row scores the same segments
        assert row["true_positives"] + row["false_negatives"] == 2
    assert "<- default" in result.stdout
