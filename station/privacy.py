"""Keep people out of the record: no human detection, and nothing heard next to a voice.

BirdNET scores three human classes ("Human vocal", "Human non-vocal", "Human whistle").
When one of them reaches the threshold in a window, that window and its neighbours (the
windows just before and after it in the same stream, overlapping or adjacent) lose every
score, so no detection can overlap the sound of a person; and the human classes lose their
scores in every window, so a person is never stored or published as a "detection", even
below the privacy threshold. To know a window's next neighbour the filter holds each window
back by one: `push` returns the previous window of that source.

The windows where a person was heard are kept as offset spans (`human_spans`), so that no
clip containing one is written. They are counted, never logged: the log says how many
windows were masked, never what was in them.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence

import numpy as np

from .names import name_key
from .types import Scores, Species
from .windowing import GAP_TOLERANCE_SECONDS

DEFAULT_HUMAN_LABELS = ("Human vocal", "Human non-vocal", "Human whistle")
SPANS_KEPT = 256  # per source: far more than any clip buffer holds
SOURCES_KEPT = 16  # a replayed folder is one source per file: the latest few are enough


@dataclasses.dataclass
class _Held:
    scores: Scores
    human: bool  # this window itself reached the threshold
    after_human: bool  # the window before it, in the same stream, did


class PrivacyFilter:
    def __init__(self, human_labels: Iterable[str] = DEFAULT_HUMAN_LABELS, threshold: float = 0.5):
        self.human_keys = {name_key(label) for label in human_labels}
        self.threshold = threshold
        self.masked_windows = 0  # windows whose scores were all set to 0
        self.human_windows = 0  # windows where a human class reached the threshold
        self._held: dict[str, _Held] = {}
        self._judged: dict[str, float] = {}  # the latest sources: the end of the last window released
        self._spans: OrderedDict[str, deque[tuple[float, float]]] = OrderedDict()
        self._columns: tuple[Sequence[Species], np.ndarray] | None = None

    def push(self, scores: Scores) -> list[Scores]:
        """Take a window's scores; return the previous window of its source, filtered."""
        source = scores.window.source
        human = self._is_human(scores)
        if human:
            self.human_windows += 1
            self._add_span(source, scores.window.start_offset, scores.window.end_offset)
        previous = self._held.pop(source, None)
        out: list[Scores] = []
        after_human = False
        if previous is not None:
            neighbours = _adjacent(previous.scores, scores)
            out.append(self._release(previous, next_human=neighbours and human))
            after_human = neighbours and previous.human
        self._held[source] = _Held(scores, human, after_human)
        return out

    def flush(self, source: str | None = None) -> list[Scores]:
        """Release what is held (of one source, or all): the end of a stream, or shutdown."""
        keys = [k for k in self._held if source is None or k == source]
        return [self._release(self._held.pop(k), next_human=False) for k in keys]

    def human_spans(self, source: str) -> list[tuple[float, float]]:
        """Offsets (start, end) of the recent windows of `source` where a person was heard."""
        return list(self._spans.get(source, ()))

    def judged_until(self, source: str) -> float | None:
        """Where the last window of `source` the filter has seen ends: audio after it is not judged yet,
        so a clip's post-roll should stop there."""
        held = self._held.get(source)
        return held.scores.window.end_offset if held else self._judged.get(source)

    def overlaps_human(self, source: str, start_offset: float, end_offset: float) -> bool:
        """Whether [start, end) of `source` touches audio where a person was heard: no clip of it."""
        return any(a < end_offset and start_offset < b for a, b in self._spans.get(source, ()))

    def _release(self, held: _Held, next_human: bool) -> Scores:
        source = held.scores.window.source
        self._judged.pop(source, None)
        self._judged[source] = held.scores.window.end_offset
        if len(self._judged) > SOURCES_KEPT:
            del self._judged[next(iter(self._judged))]
        if held.human or held.after_human or next_human:
            self.masked_windows += 1
            return dataclasses.replace(held.scores, values=np.zeros_like(held.scores.values))
        values = held.scores.values.copy()
        values[self._human_columns(held.scores)] = 0.0
        return dataclasses.replace(held.scores, values=values)

    def is_human_label(self, species: Species) -> bool:
        return bool(_names(species) & self.human_keys)

    def _is_human(self, scores: Scores) -> bool:
        columns = self._human_columns(scores)
        return bool(len(columns)) and float(scores.values[columns].max()) >= self.threshold

    def _human_columns(self, scores: Scores) -> np.ndarray:
        """The indices of the human labels in this model's output (cached per label list)."""
        if self._columns is None or self._columns[0] is not scores.labels:
            found = [i for i, species in enumerate(scores.labels) if _names(species) & self.human_keys]
            self._columns = (scores.labels, np.array(found, dtype=np.intp))
        return self._columns[1]

    def _add_span(self, source: str, start: float, end: float) -> None:
        spans = self._spans.setdefault(source, deque(maxlen=SPANS_KEPT))
        self._spans.move_to_end(source)
        while len(self._spans) > SOURCES_KEPT:
            self._spans.popitem(last=False)
        if spans and start <= spans[-1][1] + GAP_TOLERANCE_SECONDS:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))


def _names(species: Species) -> set[str]:
    return {name_key(n) for n in (species.label, species.scientific_name, species.common_name) if n}


def _adjacent(before: Scores, after: Scores) -> bool:
    """Whether two windows of one source are neighbours in one stream: overlapping or touching."""
    a, b = before.window, after.window
    return a.source == b.source and b.start_offset <= a.end_offset + GAP_TOLERANCE_SECONDS \
        and b.start_offset >= a.start_offset
