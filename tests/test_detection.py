from datetime import timedelta

import numpy as np
import pytest

from conftest import T0
from station.detection import Detector, DynamicThreshold, SpeciesFilter
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


# The rules: evidence across neighbouring windows, a dynamic threshold, non-birds masking, range as evidence.

def rules(threshold=0.6, pair=0.25, dynamic=None, range_filter=None, out_of_range=0.9, mask=False,
          per_species=None, blocked=()) -> Detector:
    return Detector("st1", "m", SpeciesFilter(threshold, per_species or {}, [], [], blocked), 3, 0.0, range_filter,
                    pair_threshold=pair, dynamic=dynamic, out_of_range_threshold=out_of_range, non_birds_mask=mask)


def test_an_isolated_low_score_is_not_a_detection():
    low, none = [0.4, 0.0, 0.0], [0.1, 0.0, 0.0]
    assert run(rules(), [scores(0, none), scores(1.5, low), scores(3.0, none)]) == {}


def test_two_neighbouring_low_windows_are_one_event_opened_at_the_second_starting_at_the_first():
    det = rules()
    assert det.push([scores(0, [0.3, 0, 0])]) == []  # not yet: one low window is not enough
    (opened,) = det.push([scores(1.5, [0.35, 0, 0])])  # opens one hop late, covering both windows
    assert opened.status == "open" and opened.window_count == 2
    assert (opened.start_offset, opened.end_offset) == (0.0, 4.5)
    assert opened.confidence == pytest.approx(0.35) and opened.mean_confidence == pytest.approx(0.325)
    (closed,) = det.flush()
    assert closed.id == opened.id


def test_low_windows_with_audio_between_them_are_not_neighbours():
    assert run(rules(), [scores(0, [0.3, 0, 0]), scores(4.5, [0.3, 0, 0])]) == {}
    det = rules()
    det.push([scores(0, [0.3, 0, 0], source="a.wav")])
    assert det.push([scores(1.5, [0.3, 0, 0], source="b.wav")]) == []  # another source's window


def test_one_high_window_is_enough_and_a_low_neighbour_extends_it():
    events = run(rules(), [scores(0, [0.1, 0, 0]), scores(1.5, [0.7, 0, 0]), scores(3.0, [0.3, 0, 0]),
                           scores(4.5, [0.1, 0, 0])])
    (owl,) = events.values()
    assert (owl.start_offset, owl.end_offset, owl.window_count) == (1.5, 6.0, 2)


def test_a_species_own_threshold_scales_its_pair_threshold():
    stream = [scores(0, [0.3, 0, 0]), scores(1.5, [0.3, 0, 0])]
    assert run(rules(per_species={"Tawny Owl": 0.9}), stream) == {}  # pair threshold 0.25 * 0.9 / 0.6 = 0.375
    assert len(run(rules(per_species={"Tawny Owl": 0.6}), stream)) == 1


def test_without_a_pair_threshold_two_low_windows_stay_undetected():
    assert run(rules(pair=None), [scores(0, [0.3, 0, 0]), scores(1.5, [0.3, 0, 0])]) == {}


def test_a_confident_window_lowers_the_species_threshold_until_the_hold_expires():
    def stream(later: float):
        return [scores(0, [0.95, 0, 0]), scores(30, [0.1, 0, 0]), scores(later, [0.35, 0.35, 0])]
    within = run(rules(pair=None, dynamic=DynamicThreshold(0.9, 0.3, 60)), stream(50))
    assert sorted((e.species.common_name, e.start_offset) for e in within.values()) == [
        ("Tawny Owl", 0.0), ("Tawny Owl", 50.0)]  # the magpie had no confident window: not lowered
    expired = run(rules(pair=None, dynamic=DynamicThreshold(0.9, 0.3, 60)), stream(61.5))
    assert [e.start_offset for e in expired.values()] == [0.0]


def test_a_detection_below_the_trigger_does_not_lower_the_threshold():
    det = rules(pair=None, dynamic=DynamicThreshold(0.9, 0.3, 600))
    assert len(run(det, [scores(0, [0.8, 0, 0]), scores(30, [0.35, 0, 0])])) == 1


def test_a_bird_below_a_non_bird_class_gets_no_evidence_from_that_window():
    dog = Species("Dog_Dog", None, "Dog")
    labels = (*LABELS, dog)

    def window_scores(start, values):
        return Scores(window(start), np.asarray(values, np.float32), labels)
    stream = [window_scores(0, [0, 0, 0.52, 0.24]), window_scores(1.5, [0, 0, 0.37, 0.77]),
              window_scores(3.0, [0, 0, 0.66, 0.80])]  # the shared chihuahua clip's Common Raven
    assert run(rules(mask=True, blocked=["Dog_Dog"]), stream) == {}
    unmasked = run(rules(mask=False, blocked=["Dog_Dog"]), stream)
    assert {e.species.common_name for e in unmasked.values()} == {"Common Raven"}
    # a bird above the dog still counts
    assert len(run(rules(mask=True, blocked=["Dog_Dog"]), [window_scores(0, [0.8, 0, 0, 0.7])])) == 1


class OnlyOwls:
    """A range filter that expects the Tawny Owl alone (the Detector only asks `allows`)."""

    def allows(self, species, moment, score):
        return species.common_name == "Tawny Owl"


def test_an_out_of_range_species_passes_only_with_strong_evidence():
    det = rules(range_filter=OnlyOwls())
    weak = run(det, [scores(0, [0.7, 0.7, 0]), scores(1.5, [0.3, 0.3, 0])])
    assert {e.species.common_name for e in weak.values()} == {"Tawny Owl"}
    assert {(r.species.common_name, r.reason) for r in det.take_removed()} == {("Eurasian Magpie", "range")}
    strong = run(rules(range_filter=OnlyOwls()), [scores(0, [0.0, 0.95, 0])])
    assert {e.species.common_name for e in strong.values()} == {"Eurasian Magpie"}
    never = run(rules(range_filter=OnlyOwls(), out_of_range=None), [scores(0, [0.0, 0.95, 0])])
    assert never == {}


def test_location_keep_always_passes(birdnet_folder):
    from station.model_folder import load_folder
    from station.range_filter import RangeFilter

    folder = load_folder(birdnet_folder)
    magpie = next(s for s in folder.labels if s.scientific_name == "Pica pica")
    labels = (magpie,)
    stream = [Scores(window(0), np.asarray([0.7], np.float32), labels)]

    def at_sea(keep=()):  # mid-Pacific in week 1: BirdNET's range model expects no magpie there
        return rules(range_filter=RangeFilter(folder, 0.0, -150.0, 0.03, keep, 1))
    assert run(at_sea(), stream) == {}
    assert len(run(at_sea(["Eurasian Magpie"]), stream)) == 1
