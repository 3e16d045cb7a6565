"""Rebuild converter/data/wordnet_glosses.txt, the real text the MiniLM example and tests use.

    apt-get download wordnet-base && dpkg -x wordnet-base_*.deb wordnet
    python tools/wordnet_glosses.py wordnet/usr/share/wordnet --force [--count 20000] [-o OUT]

Glosses are the definition part (before the first ';') of every synset line of data.{noun,verb,adj,adv}
(WordNet 3.0, Debian wordnet-base 1:3.0-37), kept when 20-160 characters long, shuffled with
`random.Random(0)`. The first 3,000 lines are that order's first 3,000, the sample of the first release
(unchanged, with its two repeated glosses); the rest continue the order, leaving out any gloss already in
the file, so text taken from the end (the examples' held-out glosses) appears nowhere before it.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from quweit.onnxio import write_text

PARTS = ("noun", "verb", "adj", "adv")
FIRST_RELEASE = 3000
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "converter" / "data" / "wordnet_glosses.txt"


def glosses(wordnet: Path) -> list[str]:
    """Definitions of every synset, in file order (duplicates kept: the shuffle below depends on them)."""
    found = []
    for part in PARTS:
        path = wordnet / f"data.{part}"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (pass the folder holding WordNet's data.* files)")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("  ") or "|" not in line:  # the license header, then one synset per line
                continue
            definition = line.split("|", 1)[1].strip().split(";")[0].strip()
            if 20 <= len(definition) <= 160:
                found.append(definition)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wordnet", type=Path, help="folder with WordNet 3.0's data.{noun,verb,adj,adv}")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    args = parser.parse_args()
    if args.count < FIRST_RELEASE:
        raise SystemExit(f"--count must be at least {FIRST_RELEASE} (the first release's sample), got {args.count}")
    if args.output.exists() and not args.force:
        raise SystemExit(f"{args.output} exists; pass --force to replace it")
    order = glosses(args.wordnet)
    random.Random(0).shuffle(order)
    sample = order[:FIRST_RELEASE]
    seen = set(sample)
    for text in order[FIRST_RELEASE:]:
        if len(sample) >= args.count:
            break
        if text not in seen:
            seen.add(text)
            sample.append(text)
    if len(sample) < args.count:
        raise SystemExit(f"only {len(sample)} distinct glosses, asked for {args.count}")
    write_text(args.output, "\n".join(sample) + "\n", force=args.force)
    print(f"wrote {len(sample)} glosses to {args.output}")


if __name__ == "__main__":
    main()
