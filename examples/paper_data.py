"""The paper experiments' data, read from Debian packages: Fashion-MNIST and the `fortunes` text corpus.

The packages are found where `quweit.converter.textdata` looks (the example data cache, set up once with
the line in its docstring and the README, or a system-wide `apt-get install`); nothing is downloaded here.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import numpy as np
from quweit.converter.textdata import folder

#: What the paper examples read; the README's test command installs these (tests check it does).
PACKAGES = ("dataset-fashion-mnist", "fortunes", "fortunes-min")  # fortunes-min holds the file `fortunes`


def _idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic with the type and rank, big-endian dimensions, data), gzipped."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(rank)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def fashion_mnist() -> dict[str, np.ndarray]:
    """`{"train_images": uint8 [60000, 28, 28], "train_labels": [60000], "test_images": [10000, 28, 28], ...}`."""
    where = folder("usr/share/datasets/fashion-mnist")
    return {f"{split}_{kind}": _idx(where / f"{prefix}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte.gz")
            for split, prefix in (("train", "train"), ("test", "t10k")) for kind in ("images", "labels")}


def fortune_entries() -> list[str]:
    """Every fortune (the text between `%` lines) of every file of the collection, in file order.

    Overstruck characters (`c BACKSPACE c`, old terminal bold) are reduced to the character, tabs become
    four spaces, and anything else outside printable ASCII and newline is dropped: a small, fixed vocabulary.
    """
    entries = []
    for path in sorted(folder("usr/share/games/fortunes").iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        text = re.sub(r".\x08", "", text)
        text = re.sub(r"[^\x20-\x7e\n\t]", "", text).replace("\t", "    ")
        entries.extend(e.strip("\n") for e in re.split(r"^%$", text, flags=re.MULTILINE) if e.strip())
    return entries


def split_entries(entries: list[str], fractions: tuple[float, float] = (0.05, 0.05)) -> dict[str, list[str]]:
    """Train / validation / test by a hash of each entry's text: stable across machines and orderings."""
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for entry in entries:
        u = int.from_bytes(hashlib.sha256(entry.encode()).digest()[:8], "big") / 2.0**64
        name = "validation" if u < fractions[0] else "test" if u < fractions[0] + fractions[1] else "train"
        splits[name].append(entry)
    return splits
