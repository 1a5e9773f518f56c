"""Calibration writes thresholds that keep every score they were chosen to keep."""
import numpy as np
import yaml

from station.calibrate import Threshold, calibrate, floor_threshold, snippet


def test_a_written_threshold_is_never_above_the_computed_one():
    rng = np.random.default_rng(7)
    scores = rng.random((60, 3)).astype(np.float32)
    truth = rng.integers(-1, 3, 60)
    found = calibrate(scores, truth, ["a", "b", "c"], 0.5)
    assert found
    written = yaml.safe_load(snippet(found, 0.5, "test"))
    for t in found:
        assert written[t.label] <= t.threshold
        assert t.threshold - written[t.label] < 1e-4
        # the file's threshold still keeps the lowest score it was chosen for
        assert (scores[:, ["a", "b", "c"].index(t.label)] >= written[t.label]).sum() \
            >= (scores[:, ["a", "b", "c"].index(t.label)] >= t.threshold).sum()


def test_rounding_down_where_rounding_to_nearest_would_go_up():
    assert floor_threshold(0.123456) == 0.1234  # round() gives 0.1235, above the score it must keep
    assert floor_threshold(0.5) == 0.5
    assert floor_threshold(0.29) <= 0.29  # 0.29 * 10000 is 2899.999... in floats
    for value in np.random.default_rng(1).random(2000):
        assert floor_threshold(float(value)) <= float(value)
    assert snippet([Threshold("x", 0.98765, 1.0, 1.0, 3)], 0.9, "s").endswith("x: 0.9876\n")
