"""Which of a model's labels are birds, and readable names for those that are not.

BirdNET v2.4 has 6,522 labels: 6,421 birds and 101 others. Its labels file says nothing
about which are which, so the others are named here, by rule and by list:

- 11 named classes whose "scientific" and common halves are the same word(s):
  Dog, Engine, Environmental, Fireworks, Gun, Human non-vocal, Human vocal, Human whistle,
  Noise, Power tools, Siren.
- 90 animals that are not birds, all North American: frogs and toads, crickets, katydids
  and a honey bee, and a few mammals. They are listed below by genus (36 genera), since a
  genus names the animal whatever its common name says ("Gryllus assimilis" has none).
  None of these genera holds a bird in BirdNET's list. The list was checked against BirdNET-
  Analyzer's own eBird code table, where exactly these 90 labels carry an iNaturalist
  taxon id ("t-...") instead of an eBird species code, and against their common names
  (Frog, Toad, Treefrog, Cricket, Katydid, Conehead, Trig, Squirrel, ...): tests/test_taxonomy.py.

Labels of other models (dima806's tinamous, say) match neither rule and count as birds.
"""
from __future__ import annotations

from collections.abc import Iterable

from .types import Species

BIRD = "bird"

# The named classes by their label's first half: what kind of sound each is.
NAMED_NON_BIRDS = {
    "Dog": "mammal",
    "Human non-vocal": "human", "Human vocal": "human", "Human whistle": "human",
    "Engine": "sound", "Environmental": "sound", "Fireworks": "sound", "Gun": "sound",
    "Noise": "sound", "Power tools": "sound", "Siren": "sound",
}

_AMPHIBIANS = (
    "Acris",  # cricket frogs
    "Anaxyrus", "Incilius",  # true toads (Bufonidae)
    "Dryophytes", "Hyliola", "Pseudacris",  # treefrogs, chorus frogs, the spring peeper (Hylidae)
    "Eleutherodactylus",  # greenhouse frog
    "Gastrophryne",  # narrow-mouthed toads
    "Lithobates",  # bullfrog, green, pickerel and wood frogs (Ranidae)
    "Scaphiopus", "Spea",  # spadefoots
)
_INSECTS = (
    "Allonemobius", "Eunemobius", "Neonemobius",  # ground crickets
    "Gryllus", "Miogryllus",  # field crickets
    "Oecanthus", "Orocharis",  # tree and bush crickets
    "Anaxipha", "Cyrtoxipha", "Phyllopalpus",  # trigs
    "Amblycorypha", "Atlanticus", "Conocephalus", "Microcentrum", "Neoconocephalus", "Orchelimum",
    "Pterophylla", "Scudderia",  # katydids, coneheads, shieldbacks
    "Apis",  # honey bee
)
_MAMMALS = (
    "Alouatta",  # howler monkey
    "Canis",  # coyote, gray wolf
    "Odocoileus",  # white-tailed deer
    "Sciurus", "Tamias", "Tamiasciurus",  # squirrels, chipmunk
)
NON_BIRD_GENERA = {**{g: "amphibian" for g in _AMPHIBIANS}, **{g: "insect" for g in _INSECTS},
                   **{g: "mammal" for g in _MAMMALS}}


def _halves(label: str) -> tuple[str, str]:
    """'Genus species_Common Name' -> both halves; a label without '_' is its first half only."""
    first, _, second = label.partition("_")
    return first, second


def label_group(label: str | Species) -> str:
    """'bird', or what else the label is: 'amphibian', 'insect', 'mammal', 'human' or 'sound'."""
    label = label.label if isinstance(label, Species) else label
    first, _ = _halves(label)
    if first in NAMED_NON_BIRDS:
        return NAMED_NON_BIRDS[first]
    words = first.split()
    if len(words) >= 2 and words[0] in NON_BIRD_GENERA:
        return NON_BIRD_GENERA[words[0]]
    return BIRD


def is_bird(label: str | Species) -> bool:
    return label_group(label) == BIRD


def non_bird_labels(labels: Iterable[str | Species]) -> set[str]:
    """The labels (as the labels file has them) that are not birds."""
    return {(label.label if isinstance(label, Species) else label) for label in labels if not is_bird(label)}


def groups(labels: Iterable[str | Species]) -> dict[str, list[str]]:
    """Non-bird labels by group, sorted: what a model folder's manifest records."""
    found: dict[str, list[str]] = {}
    for label in sorted(non_bird_labels(labels)):
        found.setdefault(label_group(label), []).append(label)
    return found


def readable_name(species: Species | str) -> str:
    """What a user reads: 'Dog' for 'Dog_Dog', 'Tawny Owl' for 'Strix aluco_Tawny Owl'."""
    if isinstance(species, str):
        first, second = _halves(species)
        return second or first
    first, second = _halves(species.label)
    if first == second:  # 'Dog_Dog'
        return first
    common = species.common_name
    if common and "_" in common:
        return readable_name(common)
    return species.name


def readable_species(species: Species) -> Species:
    """A named class as a species with a readable common name and no pretend scientific name."""
    first, second = _halves(species.label)
    if first not in NAMED_NON_BIRDS or second not in (first, ""):
        return species
    return Species(species.label, None, first)
