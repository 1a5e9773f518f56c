from datetime import timedelta

import numpy as np
import pytest

from conftest import T0
from station.detection import Detector, SpeciesFilter
from station.types import Scores, Species, Window

LABELS = (
    Species("Strix aluco_Tawny Owl", "Strix aluco", "Tawny Owl"),
    Species("Pica pica_Eurasian Magpie", "Pica pica", "Eurasian Magpie"),
    Species("Corvus corax_Common Raven", "Corvus corax", "Common Raven"),
)


def window(start: float, seconds: float = 3.0, source: str = "f.wav", valid: float | None = None) -> Window:
    return Window(np.zeros(10, np.float32), 16000, source, start, T0 + timedelta(seconds=start),
                  valid if valid is not None else seconds)


def scores(start: float, values, source: str = "f.wav") -> Scores:
    return Scores(window(start, source=source), np.asarray(values, np.float32), LABELS)


def detector(threshold=0.5, per_species=None, include=(), exclude=(), top_k=3, gap=0.0) -> Detector:
    return Detector("st1", "m", SpeciesFilter(threshold, per_species or {}, include, exclude), top_k, gap)


def run(det: Detector, stream) -> dict:
    """Feed window scores; return the final state of every event by id."""
    final = {}
    for item in stream:
        for d in det.push([item]):
            final[d.id] = d
    for d in det.flush():
        final[d.id] = d
    return final


def test_consecutive_windows_merge_into_one_event():
    events = run(detector(), [scores(1.5 * i, [0.9 - 0.01 * i, 0.1, 0.0]) for i in range(13)])
    assert len(events) == 1
    owl = next(iter(events.values()))
    assert owl.species.common_name == "Tawny Owl" and owl.status == "closed"
    assert owl.window_count == 13
    assert (owl.start_offset, owl.end_offset) == (0.0, 21.0)
    assert owl.end_time - owl.start_time == timedelta(seconds=21)
    assert owl.confidence == pytest.approx(0.9)
    assert owl.mean_confidence == pytest.approx(np.mean([0.9 - 0.01 * i for i in range(13)]), abs=1e-6)


def test_one_missed_window_does_not_split_but_two_do():
    hit, miss = [0.9, 0.1, 0.0], [0.1, 0.1, 0.0]
    one_gap = run(detector(), [scores(0, hit), scores(1.5, miss), scores(3.0, hit)])
    assert len(one_gap) == 1 and next(iter(one_gap.values())).window_count == 2
    two_gap = run(detector(), [scores(0, hit), scores(1.5, miss), scores(3.0, miss), scores(4.5, hit)])
    assert sorted(e.start_offset for e in two_gap.values()) == [0.0, 4.5]


def test_merge_gap_setting_bridges_longer_silences():
    hit, miss = [0.9, 0.1, 0.0], [0.1, 0.1, 0.0]
    stream = [scores(0, hit), scores(1.5, miss), scores(3.0, miss), scores(4.5, hit)]
    assert len(run(detector(gap=1.5), stream)) == 1


def test_events_are_emitted_open_then_closed_with_a_stable_id():
    det = detector()
    first = det.push([scores(0, [0.9, 0, 0])])
    second = det.push([scores(1.5, [0.8, 0, 0])])
    closing = det.push([scores(9.0, [0.0, 0, 0])])
    assert [d.status for d in first + second] == ["open", "open"]
    assert first[0].id == second[0].id == closing[0].id
    assert closing[0].status == "closed" and closing[0].window_count == 2


def test_thresholds_global_and_per_species_by_any_name():
    stream = [scores(0, [0.45, 0.6, 0.3])]
    assert {e.species.common_name for e in run(detector(0.5), stream).values()} == {"Eurasian Magpie"}
    per_species = {"tawny owl": 0.4, "Pica pica": 0.7}
    assert {e.species.common_name for e in run(detector(0.5, per_species), stream).values()} == {"Tawny Owl"}


def test_include_and_exclude_lists():
    stream = [scores(0, [0.9, 0.8, 0.7])]
    assert {e.species.common_name for e in run(detector(include=["Corvus corax"]), stream).values()} == {"Common Raven"}
    assert {e.species.common_name for e in run(detector(exclude=["Eurasian Magpie", "Strix_aluco"]), stream).values()} \
        == {"Common Raven"}


def test_only_top_k_species_can_be_detected_and_alternatives_are_kept():
    events = run(detector(0.5, top_k=1), [scores(0, [0.7, 0.9, 0.6])])
    (only,) = events.values()
    assert only.species.common_name == "Eurasian Magpie"
    assert only.alternatives == (("Pica pica_Eurasian Magpie", pytest.approx(0.9)),)
    events = run(detector(0.5, top_k=3), [scores(0, [0.7, 0.9, 0.6])])
    assert len(events) == 3
    assert [label for label, _ in next(iter(events.values())).alternatives] == [
        "Pica pica_Eurasian Magpie", "Strix aluco_Tawny Owl", "Corvus corax_Common Raven"]


def test_a_new_source_closes_the_old_sources_events():
    det = detector()
    det.push([scores(0, [0.9, 0, 0], source="a.wav")])
    changed = det.push([scores(0, [0.9, 0, 0], source="b.wav")])
    assert {(d.source, d.status) for d in changed} == {("a.wav", "closed"), ("b.wav", "open")}


def test_a_padded_tail_window_ends_the_event_where_the_audio_ends():
    det = detector()
    det.push([scores(0, [0.9, 0, 0])])
    tail = Scores(window(1.5, valid=2.0), np.asarray([0.9, 0, 0], np.float32), LABELS)
    det.push([tail])
    (event,) = det.flush()
    assert event.end_offset == 3.5
