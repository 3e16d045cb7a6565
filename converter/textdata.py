"""Real text for the MiniLM examples from Debian packages in a local cache (nothing is downloaded at run time).

Set-up, once (any Debian/Ubuntu machine; `apt-get download` needs no root):

    mkdir -p ~/.cache/quweit/debian && cd ~/.cache/quweit/debian && apt-get download wordnet-base fortunes && for f in *.deb; do dpkg -x "$f" .; done

`QUWEIT_DATA` overrides the cache folder. Sources: WordNet 3.0 (`wordnet-base`, license in
converter/data/LICENSE-WordNet.txt) for glosses with their lexicographer class, and `fortunes` (the
fortune-mod collection) as a second text domain that no tuning uses.
"""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

SETUP = ("mkdir -p ~/.cache/quweit/debian && cd ~/.cache/quweit/debian && apt-get download wordnet-base fortunes "
         "&& for f in *.deb; do dpkg -x \"$f\" .; done")
PARTS = ("noun", "verb", "adj", "adv")


def cache() -> Path:
    return Path(os.environ.get("QUWEIT_DATA", "~/.cache/quweit/debian")).expanduser()


def _folder(relative: str) -> Path:
    folder = cache() / relative
    if not folder.is_dir():
        raise SystemExit(f"{folder}: not found; set up the example data once with:\n  {SETUP}")
    return folder


def fortunes(count: int, seed: int = 0, min_chars: int = 20, max_chars: int = 200) -> list[str]:
    """`count` distinct fortunes of `min_chars..max_chars` characters (whitespace collapsed), a seeded draw."""
    folder = _folder("usr/share/games/fortunes")
    texts = set()
    for path in sorted(folder.iterdir()):
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
    folder = _folder("usr/share/wordnet")
    found = []
    for part in PARTS:
        for line in (folder / f"data.{part}").read_text(encoding="utf-8").splitlines():
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
