"""Hierarchical answers (imgcls.trust.hierarchy): the deepest node that reaches the target,
taxonomy files checked at the boundary, and the shipped WordNet tree of ImageNet."""

from __future__ import annotations

import numpy as np
import pytest

from imgcls.errors import DataError
from imgcls.models.labels import imagenet_labels
from imgcls.trust.hierarchy import Taxonomy, read_taxonomy_file, wordnet_parents

CARDS = ("clubs", "diamonds", "hearts", "spades")
SUITS = {"hearts": "red", "diamonds": "red", "clubs": "black", "spades": "black"}


def test_siblings_sharing_the_mass_answer_their_parent_and_a_clean_image_its_leaf():
    taxonomy = Taxonomy(SUITS, CARDS)
    probabilities = np.array(
        [
            [0.01, 0.48, 0.49, 0.02],  # hearts or diamonds: red
            [0.01, 0.02, 0.96, 0.01],  # hearts
            [0.45, 0.05, 0.05, 0.45],  # black
            [0.30, 0.20, 0.30, 0.20],  # no node reaches 0.9
        ]
    )
    red, hearts, black, spread = taxonomy.answers(probabilities, 0.9)
    assert (red.label, red.path, red.probability) == ("red", ("red",), pytest.approx(0.97))
    assert hearts.label == "hearts" and hearts.path == ("red", "hearts")
    assert black.label == "black" and spread is None
    # a lower target is met deeper: the leaf at 0.45
    assert taxonomy.answers(probabilities[2:3], 0.45)[0].label in {"clubs", "spades"}


def test_inner_nodes_take_display_names_and_classes_keep_their_labels():
    taxonomy = Taxonomy(
        {"c1": "n1", "c2": "n1"}, ["c1", "c2"], ["tabby", "tiger cat"], {"n1": "cat"}
    )
    answer = taxonomy.answers(np.array([[0.5, 0.5]]), 0.9)[0]
    assert answer.to_dict() == {"label": "cat", "probability": 1.0, "path": ["cat"]}
    assert taxonomy.answers(np.array([[0.95, 0.05]]), 0.9)[0].path == ("cat", "tabby")


def test_taxonomy_file_rows_are_checked_against_the_classes(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("child,parent\nhearts,red\ndiamonds,red\nclubs,black\nspades,black\nred,card\n")
    assert read_taxonomy_file(good, CARDS)["red"] == "card"
    problems = {
        "hearts,red\n": "no parent for class",
        "hearts,red\nhearts,black\n": "already has parent",
        "hearts\n": "expected child,parent",
        "clubs,a\ndiamonds,a\nhearts,a\nspades,a\na,b\nb,a\n": "cycle",
    }
    for text, reason in problems.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(DataError, match=reason) as caught:
            read_taxonomy_file(bad, CARDS)
        assert str(bad) in str(caught.value)
    with pytest.raises(DataError, match="cannot read"):
        read_taxonomy_file(tmp_path / "missing.csv", CARDS)


def test_wordnet_maps_every_imagenet_class_to_a_path_ending_at_entity():
    labels = imagenet_labels()
    parents, names = wordnet_parents()
    taxonomy = Taxonomy(parents, labels.class_ids, labels.names, names)
    class_paths = [taxonomy.paths[taxonomy.nodes.index(c)] for c in labels.class_ids]
    assert len(class_paths) == 1000
    assert all(path[0] == "entity" and len(path) >= 3 for path in class_paths)
    cats = [labels.index_of(name) for name in ("tabby", "tiger cat", "Egyptian cat")]
    probabilities = np.zeros((1, 1000))
    probabilities[0, cats] = [0.4, 0.35, 0.2]
    probabilities[0, labels.index_of("espresso")] = 0.05
    answer = taxonomy.answers(probabilities, 0.9)[0]
    assert answer.label == "domestic cat" and answer.probability == pytest.approx(0.95)
    assert answer.path[:3] == ("entity", "physical entity", "object")
