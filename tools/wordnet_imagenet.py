"""Derive src/imgcls/trust/wordnet_imagenet.tsv: the WordNet 3.0 hypernym tree of the 1,000
ImageNet-1k classes, the taxonomy `imgcls` gives ImageNet models (docs/trust.md).

Each class's synset (its WordNet id, n + the synset's offset) climbs by its first hypernym
("@", or "@i" for an instance) up to `entity` (n00001740). The file holds one row per
synset on those paths: `wnid<TAB>parent wnid<TAB>name` (the root's parent is empty; the
name is the synset's first lemma). It is derived once and shipped; imgcls never reads
WordNet at run time.

    apt-get install wordnet-base          # WordNet 3.0's database files, /usr/share/wordnet
    .venv/bin/python tools/wordnet_imagenet.py [--wordnet /usr/share/wordnet/data.noun]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgcls.models.labels import imagenet_labels

ROOT = "n00001740"  # entity
OUT = Path(__file__).resolve().parents[1] / "src/imgcls/trust/wordnet_imagenet.tsv"


def read_nouns(path: Path) -> dict[str, tuple[str, str | None]]:
    """wnid -> (first lemma, first hypernym's wnid or None), from WordNet's data.noun."""
    nouns: dict[str, tuple[str, str | None]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("  "):  # the licence header
            continue
        fields = line.split(" | ", 1)[0].split()
        offset, words = fields[0], int(fields[3], 16)
        lemma = fields[4].replace("_", " ")
        pointers_at = 4 + 2 * words
        pointers = [
            fields[pointers_at + 1 + 4 * i : pointers_at + 5 + 4 * i]
            for i in range(int(fields[pointers_at]))
        ]
        parents = [f"n{p[1]}" for p in pointers if p[0] == "@" and p[2] == "n"]
        parents = parents or [f"n{p[1]}" for p in pointers if p[0] == "@i" and p[2] == "n"]
        nouns[f"n{offset}"] = (lemma, parents[0] if parents else None)
    return nouns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet/data.noun"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    nouns = read_nouns(args.wordnet)
    rows: dict[str, tuple[str, str]] = {}
    for wnid in imagenet_labels().class_ids:
        node = wnid
        while node is not None and node not in rows:
            name, parent = nouns[node]
            rows[node] = (parent or "", name)
            node = parent
    lines = [f"{wnid}\t{parent}\t{name}" for wnid, (parent, name) in sorted(rows.items())]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(lines)} synsets")


if __name__ == "__main__":
    main()
