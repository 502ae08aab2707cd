"""Class labels: the 1000 ImageNet classes, or the class names of a trained run."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

__all__ = ["Labels", "imagenet_labels", "labels_for"]

IMAGENET_NUM_CLASSES = 1000


@dataclass(frozen=True)
class Labels:
    """`class_ids[i]` and `names[i]` describe output index i of a model."""

    class_ids: tuple[str, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.class_ids)

    def index_of(self, label: str, *, ignore_case: bool = False) -> int | None:
        """The output index of the class named `label` or with that class id; None when
        no class is."""
        lookup = self._folded_lookup if ignore_case else self._lookup
        return lookup.get(label.lower() if ignore_case else label)

    @cached_property
    def _lookup(self) -> dict[str, int]:
        return {**{c: i for i, c in enumerate(self.class_ids)}, **_first(self.names)}

    @cached_property
    def _folded_lookup(self) -> dict[str, int]:
        folded = [c.lower() for c in self.class_ids]
        return {**_first(n.lower() for n in self.names), **{c: i for i, c in enumerate(folded)}}

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...]) -> Labels:
        """Labels of a model trained on class folders: the folder name is both id and name."""
        return cls(tuple(names), tuple(names))


def _first(names) -> dict[str, int]:
    """Each name's first index (ImageNet has two "crane"s and two "maillot"s)."""
    lookup: dict[str, int] = {}
    for i, name in enumerate(names):
        lookup.setdefault(name, i)
    return lookup


@lru_cache(maxsize=1)
def imagenet_labels() -> Labels:
    """ImageNet-1k: WordNet ids (n02123045) and short names (tabby), in model output order.

    timm ships the synset list and WordNet lemmas; the short name is the first lemma, as
    in Keras' `decode_predictions`.
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    ids = tuple(info.index_to_label_name(i) for i in range(info.num_classes()))
    names = tuple(info.index_to_description(i).split(",")[0].strip() for i in range(len(ids)))
    return Labels(ids, names)


def labels_for(num_classes: int) -> Labels:
    """ImageNet labels for a 1000-way model, else numbered placeholders."""
    if num_classes == IMAGENET_NUM_CLASSES:
        return imagenet_labels()
    return Labels.from_names([f"class_{i}" for i in range(num_classes)])
