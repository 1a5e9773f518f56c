"""Match species names across sources: model labels, Xeno-Canto, manifests.

The notebook compared English names as raw strings and silently lost every species whose
spelling differed ("Bartletts Tinamou" vs "Bartlett's Tinamou"). Here a name matches a
label by scientific name first (through a synonym table, since taxonomies move), then by
a normalised common name; whatever matches nothing is reported, never dropped silently.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from .types import Species

# Scientific names that sources spell differently: any name -> the name models use.
# Add an entry only when it is checked against both sources' lists.
SCIENTIFIC_SYNONYMS = {
    "setophaga aestiva": "setophaga petechia",  # Xeno-Canto splits American Yellow Warbler; BirdNET does not
}

# dima806/bird_sounds_classification has English labels only; their scientific names.
DIMA806_SCIENTIFIC = {
    "Andean Guan": "Penelope montagnii", "Andean Tinamou": "Nothoprocta pentlandii",
    "Australian Brushturkey": "Alectura lathami", "Band-tailed Guan": "Penelope argyrotis",
    "Bartletts Tinamou": "Crypturellus bartletti", "Bearded Guan": "Penelope barbata",
    "Black-capped Tinamou": "Crypturellus atrocapillus", "Blue-throated Piping Guan": "Pipile cumanensis",
    "Brazilian Tinamou": "Crypturellus strigulosus", "Brown Tinamou": "Crypturellus obsoletus",
    "Brushland Tinamou": "Nothoprocta cinerascens", "Cauca Guan": "Penelope perspicax",
    "Chaco Chachalaca": "Ortalis canicollis", "Chestnut-winged Chachalaca": "Ortalis garrula",
    "Cinereous Tinamou": "Crypturellus cinereus", "Colombian Chachalaca": "Ortalis columbiana",
    "Crested Guan": "Penelope purpurascens", "Dusky Megapode": "Megapodius freycinet",
    "Dusky-legged Guan": "Penelope obscura", "Dwarf Tinamou": "Taoniscus nanus",
    "Great Tinamou": "Tinamus major", "Grey Tinamou": "Tinamus tao",
    "Grey-headed Chachalaca": "Ortalis cinereiceps", "Highland Tinamou": "Nothocercus bonapartei",
    "Little Chachalaca": "Ortalis motmot", "Little Tinamou": "Crypturellus soui",
    "Orange-footed Scrubfowl": "Megapodius reinwardt", "Pale-browed Tinamou": "Crypturellus transfasciatus",
    "Plain Chachalaca": "Ortalis vetula", "Red-legged Tinamou": "Crypturellus erythropus",
    "Red-winged Tinamou": "Rhynchotus rufescens", "Rufous-bellied Chachalaca": "Ortalis wagleri",
    "Rufous-headed Chachalaca": "Ortalis erythroptera", "Rufous-vented Chachalaca": "Ortalis ruficauda",
    "Rusty-margined Guan": "Penelope superciliaris", "Slaty-breasted Tinamou": "Crypturellus boucardi",
    "Small-billed Tinamou": "Crypturellus parvirostris", "Solitary Tinamou": "Tinamus solitarius",
    "Speckled Chachalaca": "Ortalis guttata", "Spixs Guan": "Penelope jacquacu",
    "Spotted Nothura": "Nothura maculosa", "Tataupa Tinamou": "Crypturellus tataupa",
    "Tawny-breasted Tinamou": "Nothocercus julius", "Thicket Tinamou": "Crypturellus cinnamomeus",
    "Undulated Tinamou": "Crypturellus undulatus", "Variegated Tinamou": "Crypturellus variegatus",
    "West Mexican Chachalaca": "Ortalis poliocephala", "White-bellied Nothura": "Nothura boraquira",
    "White-throated Tinamou": "Tinamus guttatus", "Yellow-legged Tinamou": "Crypturellus noctivagus",
}


def normalise_common(name: str) -> str:
    """'Bartlett's Tinamou', 'Bartletts tinamou', 'Grey' / 'Gray' -> one key."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"['\u2019`]s\b", "s", text.casefold())
    text = re.sub(r"[-_'\u2019`.,]", " ", text)
    text = re.sub(r"\bgrey\b", "gray", text)
    return " ".join(text.split())


def name_key(name: str) -> str:
    """A species name as a key: case, underscores and spacing do not matter ('Strix_aluco' = 'strix  aluco')."""
    return " ".join(name.replace("_", " ").split()).casefold()


def normalise_scientific(name: str) -> str:
    key = name_key(name)
    return SCIENTIFIC_SYNONYMS.get(key, key)


def species_from_label(label: str) -> Species:
    """'Genus species_Common Name' (BirdNET's form) gives both names; other labels are common names."""
    scientific, sep, common = label.partition("_")
    if sep and len(scientific.split()) >= 2 and scientific[:1].isupper():
        return Species(label, scientific, common)
    return Species(label, None, label)


def with_scientific_names(labels: Iterable[Species], table: dict[str, str]) -> list[Species]:
    """Fill in scientific names a model's labels lack, from a table keyed by label."""
    return [s if s.scientific_name else Species(s.label, table.get(s.label), s.common_name) for s in labels]


class LabelIndex:
    """Finds a model's label for a species named by another source."""

    def __init__(self, labels: Sequence[Species]):
        self.labels = list(labels)
        self._scientific = {normalise_scientific(s.scientific_name): s for s in labels if s.scientific_name}
        self._common = {normalise_common(s.common_name): s for s in labels if s.common_name}

    def match(self, scientific_name: str | None, common_name: str | None) -> Species | None:
        if scientific_name:
            found = self._scientific.get(normalise_scientific(scientific_name))
            if found:
                return found
        if common_name:
            return self._common.get(normalise_common(common_name))
        return None
