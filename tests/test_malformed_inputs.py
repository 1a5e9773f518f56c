"""A folder of over a thousand malformed inputs, replayed as a user would: one line per bad file.

The corpus (tests/malformed_corpus.py) mixes random bytes, absurd headers, NaN samples,
cut recordings, FIFOs, link loops and devices with a few good files. One `station replay`
must go through all of it: exit 0, no traceback, nothing but formatted log lines on
stderr (no raw chatter from C libraries), exactly one line for each bad file, and every
good file stored.
"""
import math
import os
import re

import pytest

from conftest import station_cli, write_config
from helpers import rows
from malformed_corpus import build_corpus

CONFIG = """
station:
  id: corpus
detection:
  threshold: 0.0
  top_k: 1
replay:
  chunk_seconds: 0.25
logging:
  summary_seconds: 3600
"""
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )?(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def expected_windows(seconds: float, window=3.0, hop=1.5, tail_min=1.0) -> int:
    full = max(0, math.floor((seconds - window) / hop) + 1)
    covered = (full - 1) * hop + window if full else 0.0
    return full + (seconds - covered >= tail_min)


@pytest.fixture(scope="module")
def replayed(tiny_model, shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("malformed")
    corpus = build_corpus(root / "corpus", shared_data)
    config = write_config(root / "c.yaml", CONFIG)
    result = station_cli("replay", str(corpus.folder), "--config", str(config), "--model", str(tiny_model),
                         "--db", str(root / "st.db"), cwd=root, timeout=900)
    return corpus, result, root / "st.db"


def test_the_corpus_is_large_and_mixed(replayed):
    corpus, _, _ = replayed
    kinds = [e.expect for e in corpus.entries]
    assert kinds.count("bad") >= 1000 and kinds.count("good") >= 10
    assert len({e.name for e in corpus.entries}) == len(corpus.entries)


def test_the_replay_finishes_cleanly(replayed):
    corpus, result, _ = replayed
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    bad = sum(e.expect == "bad" for e in corpus.entries)
    assert f"{bad} file(s) skipped" in result.stdout


def test_stderr_holds_only_formatted_log_lines(replayed):
    _, result, _ = replayed
    raw = [line for line in result.stderr.splitlines() if not LOG_LINE.match(line)]
    assert not raw, f"{len(raw)} raw line(s) on stderr, e.g. {raw[:5]}"


def lines_naming_files(stderr: str, folder) -> dict[str, list[str]]:
    """Log lines by the corpus path they name (the corpus has no ':' in its names)."""
    named = {}
    for line in stderr.splitlines():
        start = line.find(f"{folder}/")
        if start >= 0:
            path = line[start:].split(":", 1)[0]
            named.setdefault(path, []).append(line)
    return named


def test_each_bad_file_is_one_line_and_no_file_has_more(replayed):
    corpus, result, _ = replayed
    lines_of = lines_naming_files(result.stderr, corpus.folder)
    wrong = []
    for entry in corpus.entries:
        named = lines_of.get(str(corpus.folder / entry.name), [])
        skipped = [line for line in named if " skipped: " in line]
        if entry.expect == "bad" and (len(named), len(skipped)) != (1, 1):
            wrong.append((entry.name, entry.why, named))
        if entry.expect == "good" and (len(named) > 1 or skipped):
            wrong.append((entry.name, entry.why, named))
    assert not wrong, f"{len(wrong)} file(s) not reported as expected, e.g. {wrong[:5]}"
    for folder in corpus.folder_problems:
        assert [line for line in lines_of[str(corpus.folder / folder)] if "skipped folder: " in line]
        assert len(lines_of[str(corpus.folder / folder)]) == 1
    expected = {str(corpus.folder / name) for name in [e.name for e in corpus.entries] + corpus.folder_problems}
    assert set(lines_of) <= expected, f"lines about paths not in the corpus: {sorted(set(lines_of) - expected)[:5]}"


def test_the_counts_match_the_corpus(replayed):
    corpus, _, db = replayed
    (run,) = rows(db, "SELECT * FROM runs")
    assert run["status"] == "stopped"
    assert run["files_failed"] == sum(e.expect == "bad" for e in corpus.entries)
    assert run["files_ok"] == sum(e.expect == "good" for e in corpus.entries)
    good_windows = sum(expected_windows(e.seconds) for e in corpus.entries if e.expect == "good")
    assert run["windows"] >= good_windows  # bad files cut mid-way add the windows of what came before


def test_every_good_file_is_stored_to_its_end(replayed):
    corpus, _, db = replayed
    ends = {r["source"]: r["end"] for r in rows(db, "SELECT source, max(end_offset) AS end FROM detections "
                                                     "GROUP BY source")}
    for entry in corpus.entries:
        if entry.expect != "good" or not expected_windows(entry.seconds):
            continue
        end = ends.get(str(corpus.folder / entry.name))
        assert end is not None, f"{entry.name} ({entry.why}): no detections stored"
        # threshold 0 makes every window a detection: the last one ends within a tail of the file's end
        assert entry.seconds - 1.1 <= end <= entry.seconds + 0.1, (entry.name, end, entry.seconds)


def test_a_replay_with_nothing_readable_exits_4_with_one_line(tiny_model, tmp_path):
    os.symlink("loop", tmp_path / "loop")
    os.mkfifo(tmp_path / "fifo.wav")
    cases = [
        ("nope", "nope: no such file or folder"),
        ("loop", "loop: symbolic link loop"),
        ("fifo.wav", "fifo.wav: not a regular file (a FIFO); not opened"),
    ]
    for name, message in cases:
        result = station_cli("replay", str(tmp_path / name), "--model", str(tiny_model),
                             "--db", str(tmp_path / "st.db"), cwd=tmp_path, timeout=120)
        assert result.returncode == 4, (name, result.stderr)
        said = [line for line in result.stderr.splitlines() if name in line and "replay:" not in line]
        assert len(said) == 1 and message in said[0], (name, result.stderr)
        assert "Traceback" not in result.stderr
