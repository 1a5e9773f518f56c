"""BirdNET's range filter: which species occur at a location in a week, from its range model.

The model takes [lat, lon, week] (BirdNET weeks 1-48, four per month; -1 for the whole
year) and gives each label an occurrence value. Species at or above the threshold pass.
The filter is known to drop real local species (Puerto Rican endemics get at most 1e-4),
so `keep` lists species that always pass, and every species the filter removes from a
detection is logged once a week so the user can see it.
"""
from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import numpy as np

from .errors import ModelError
from .inference import first_line, open_session, session_tensor
from .model_folder import ModelFolder
from .names import normalise_common, normalise_scientific
from .types import Species

log = logging.getLogger(__name__)


def birdnet_week(moment: datetime) -> int:
    return (moment.month - 1) * 4 + min(4, (moment.day - 1) // 7 + 1)


class RangeFilter:
    def __init__(self, folder: ModelFolder, lat: float, lon: float, threshold: float = 0.03,
                 keep: list[str] | tuple = (), week: int | None = None):
        info = folder.manifest.range_model
        if not info:
            raise ModelError(f"{folder.path}: this model has no range model (location needs BirdNET)")
        path = folder.path / info["file"]
        self.session = open_session(path)
        self.input, self.output = info["input"], info["output"]
        self.labels = folder.labels
        self.lat, self.lon, self.threshold, self.fixed_week = lat, lon, threshold, week
        self._check_signature(path)
        self.keep = {normalise_scientific(k) for k in keep} | {normalise_common(k) for k in keep}
        self._week: int | None = None
        self._allowed: set[str] = set()
        self._reported: set[tuple[int, str]] = set()

    def _check_signature(self, path: Path) -> None:
        session_tensor(self.session.get_inputs(), self.input, "range_model.input", path)
        session_tensor(self.session.get_outputs(), self.output, "range_model.output", path)
        try:
            values = self.occurrence(-1)
        except Exception as exc:  # onnxruntime's own exception types
            raise ModelError(f"{path}: fails on [lat, lon, week]: {first_line(exc)}") from None
        if values.shape != (len(self.labels),):
            raise ModelError(f"{path}: gives {values.shape[-1] if values.ndim else 1} values per place, "
                             f"but labels.tsv has {len(self.labels)}")

    def occurrence(self, week: int) -> np.ndarray:
        query = np.array([[self.lat, self.lon, float(week)]], np.float32)
        return self.session.run([self.output], {self.input: query})[0][0]

    def species(self, week: int) -> list[tuple[Species, float]]:
        """Species that pass this week, most likely first."""
        values = self.occurrence(week)
        order = np.argsort(-values, kind="stable")
        return [(self.labels[i], float(values[i])) for i in order if values[i] >= self.threshold]

    def allows(self, species: Species, moment: datetime, score: float) -> bool:
        week = self.fixed_week if self.fixed_week is not None else birdnet_week(moment)
        if week != self._week:
            self._week = week
            self._allowed = {s.label for s, _ in self.species(week)}
            log.info("range filter: %d species at (%.2f, %.2f) in week %d",
                     len(self._allowed), self.lat, self.lon, week)
        if species.label in self._allowed or self._kept(species):
            return True
        if (week, species.label) not in self._reported:
            self._reported.add((week, species.label))
            log.info("range filter removed %s (score %.2f) in week %d; add it to location.keep to keep it",
                     species.name, score, week)
        return False

    def _kept(self, species: Species) -> bool:
        return bool({normalise_scientific(species.scientific_name or ""), normalise_common(species.common_name)}
                    & self.keep)
