"""Real data for the examples from Debian packages in a local cache (nothing is downloaded at run time).

Set-up, once (any Debian/Ubuntu machine; `apt-get download` needs no root):

    mkdir -p ~/.cache/quweit/debian && cd ~/.cache/quweit/debian && apt-get download wordnet-base fortunes fortunes-min dataset-fashion-mnist && for f in *.deb; do dpkg -x "$f" .; done

`QUWEIT_DATA` overrides the cache folder; packages installed system-wide (`apt-get install`, as the
README's test command does) serve as well. Sources: WordNet 3.0 (`wordnet-base`, license in
converter/data/LICENSE-WordNet.txt) for glosses with their lexicographer class; `fortunes` (the
fortune-mod collection; the `fortunes` file itself is in `fortunes-min`) as a second text domain that no
tuning uses and as the character-level corpus of `examples/chargpt_fortunes.py`; Fashion-MNIST
(`dataset-fashion-mnist`) for `examples/vision_fashion_mnist.py`.
"""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

PACKAGES = ("wordnet-base", "fortunes", "fortunes-min", "dataset-fashion-mnist")
SETUP = ("mkdir -p ~/.cache/quweit/debian && cd ~/.cache/quweit/debian && apt-get download "
         f"{' '.join(PACKAGES)} && for f in *.deb; do dpkg -x \"$f\" .; done")
#: Where `apt-get install` puts the packages' files (a test may point it elsewhere).
SYSTEM = Path("/")
PARTS = ("noun", "verb", "adj", "adv")


def cache() -> Path:
    return Path(os.environ.get("QUWEIT_DATA", "~/.cache/quweit/debian")).expanduser()


def folder(relative: str) -> Path:
    """The packages' folder `relative` (e.g. `usr/share/games/fortunes`): in the cache, else system-wide."""
    for root in (cache(), SYSTEM):
        if (root / relative).is_dir():
            return root / relative
    raise SystemExit(f"{cache() / relative}: not found; set up the example data once with:\n  {SETUP}")


def fortunes(count: int, seed: int = 0, min_chars: int = 20, max_chars: int = 200) -> list[str]:
    """`count` distinct fortunes of `min_chars..max_chars` characters (whitespace collapsed), a seeded draw."""
    texts = set()
    for path in sorted(folder("usr/share/games/fortunes").iterdir()):
        if path.is_dir() or path.suffix or path.is_symlink():  # .dat indexes, .u8 links
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = " ".join(entry.split())
            if min_chars <= len(text) <= max_chars:
                texts.add(text)
    ordered = sorted(texts)
    random.Random(seed).shuffle(ordered)
    if count > len(ordered):
        raise SystemExit(f"asked for {count} fortunes, the collection has {len(ordered)}")
    return ordered[:count]


def lexname_synsets() -> list[tuple[str, int, str]]:
    """Every WordNet synset as `(id, lexicographer file number 0..44, gloss)`; id = `pos:offset`.

    The gloss is the definition before the first ';' (as `tools/wordnet_glosses.py` takes it).
    """
    wordnet = folder("usr/share/wordnet")
    found = []
    for part in PARTS:
        for line in (wordnet / f"data.{part}").read_text(encoding="utf-8").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue
            fields = line.split(" ", 3)
            gloss = line.split("|", 1)[1].strip().split(";")[0].strip()
            if gloss:
                found.append((f"{part}:{fields[0]}", int(fields[1]), gloss))
    return found


def split_of(synset_id: str) -> str:
    """The fixed split of a synset, from a checksum of its id: 80% train, 10% validation, 10% test."""
    bucket = zlib.crc32(synset_id.encode()) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"
