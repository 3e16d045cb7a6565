"""The examples' real data sets, from Debian packages: Fashion-MNIST and the `fortunes` text corpus.

One-line set-up (once per machine; the README's test command installs the packages system-wide instead):

    python examples/datasets.py

It runs `apt-get download` for the packages below and unpacks them with `dpkg -x` into a cache folder
(`$QUWEIT_DATA_DIR`, default `~/.cache/quweit/debian`); no root needed. The examples read the system-wide
files (`apt-get install dataset-fashion-mnist fortunes`) when present, else the cache, and download
nothing themselves: without either they stop with the set-up line above.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

#: Debian packages the examples read (the README's test command installs them; tests check it does).
PACKAGES = ("dataset-fashion-mnist", "fortunes", "fortunes-min")  # fortunes-min: a dependency of fortunes
FASHION_MNIST = Path("usr/share/datasets/fashion-mnist")
FORTUNES = Path("usr/share/games/fortunes")
SETUP = "python examples/datasets.py"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


class MissingDataError(FileNotFoundError):
    """A data set is neither installed system-wide nor in the cache."""


def cache_dir() -> Path:
    return Path(os.environ.get("QUWEIT_DATA_DIR") or Path.home() / ".cache" / "quweit" / "debian")


def locate(relative: Path, marker: str) -> Path:
    """The folder holding `marker`: the system-wide install first, then the cache."""
    for root in (Path("/"), cache_dir()):
        if (root / relative / marker).is_file():
            return root / relative
    raise MissingDataError(f"{relative} not found under / or {cache_dir()}: run `{SETUP}` once "
                           f"(or `apt-get install {' '.join(PACKAGES)}`)")


def fetch(packages: tuple[str, ...] = PACKAGES, into: Path | None = None) -> Path:
    """Download the Debian packages and unpack them into the cache (idempotent: unpacking overwrites)."""
    into = into or cache_dir()
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quweit-deb-") as folder:
        subprocess.run(["apt-get", "download", *packages], cwd=folder, check=True)
        for deb in sorted(Path(folder).glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(into)], check=True)
    return into


# ----- Fashion-MNIST ---------------------------------------------------------------------------------
def _idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian magic, dims, then uint8 data), gzipped."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(rank)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def fashion_mnist() -> dict[str, np.ndarray]:
    """`{"train_images": uint8 [60000, 28, 28], "train_labels": [60000], "test_images": [10000, 28, 28], ...}`."""
    folder = locate(FASHION_MNIST, "train-images-idx3-ubyte.gz")
    return {f"{split}_{kind}": _idx(folder / f"{prefix}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte.gz")
            for split, prefix in (("train", "train"), ("test", "t10k")) for kind in ("images", "labels")}


# ----- fortunes --------------------------------------------------------------------------------------
def fortune_entries() -> list[str]:
    """Every fortune (the text between `%` lines) of every file of the `fortunes` package, in file order.

    Overstruck characters (`c BACKSPACE c`, old terminal bold) are reduced to the character; anything
    outside printable ASCII, newline and tab is dropped, so the vocabulary is small and fixed.
    """
    folder = locate(FORTUNES, "computers")
    entries = []
    for path in sorted(folder.iterdir()):
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


def main() -> int:
    try:
        into = fetch()
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"datasets: error: fetching {' '.join(PACKAGES)} failed: {err}", file=sys.stderr)
        return 2
    print(f"unpacked {', '.join(PACKAGES)} into {into}")
    print(f"Fashion-MNIST: {locate(FASHION_MNIST, 'train-images-idx3-ubyte.gz')}")
    print(f"fortunes: {locate(FORTUNES, 'computers')} ({len(fortune_entries())} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
