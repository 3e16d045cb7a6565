"""Example data from Debian packages in a cache: fortunes, WordNet synsets with their lexicographer class,
the fixed split by synset id, a clear message when the cache is missing; nearest-neighbour agreement."""

from __future__ import annotations

import numpy as np
import pytest
from quweit.converter import minilm, textdata

NOUNS = """  1 This software and database is being provided to you, the LICENSEE, by
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived or known or inferred to have its own distinct existence
00002137 05 n 02 abstraction 0 abstract_entity 0 010 | a general concept formed by extracting common features; "a thought"
"""
VERBS = "00001740 29 v 04 breathe 0 | draw air into, and expel out of, the lungs; \"I can breathe better now\"\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QUWEIT_DATA", str(tmp_path))
    wordnet = tmp_path / "usr/share/wordnet"
    wordnet.mkdir(parents=True)
    (wordnet / "data.noun").write_text(NOUNS)
    (wordnet / "data.verb").write_text(VERBS)
    (wordnet / "data.adj").write_text("")
    (wordnet / "data.adv").write_text("")
    fortunes = tmp_path / "usr/share/games/fortunes"
    fortunes.mkdir(parents=True)
    (fortunes / "wisdom").write_text("A short one\n%\nA fortune that is long enough,\n  over two lines.\n%\nAnother "
                                     "fortune of good length.\n")
    (fortunes / "wisdom.dat").write_bytes(b"\x00\x01binary index")
    return tmp_path


def test_synsets_with_lexnames_and_glosses(cache):
    assert textdata.lexname_synsets() == [
        ("noun:00001740", 3, "that which is perceived or known or inferred to have its own distinct existence"),
        ("noun:00002137", 5, "a general concept formed by extracting common features"),
        ("verb:00001740", 29, "draw air into, and expel out of, the lungs"),
    ]


def test_fortunes_whitespace_collapsed_short_ones_and_indexes_skipped(cache):
    got = textdata.fortunes(2)
    assert sorted(got) == ["A fortune that is long enough, over two lines.", "Another fortune of good length."]
    assert textdata.fortunes(2, seed=0) == got
    with pytest.raises(SystemExit, match="has 2"):
        textdata.fortunes(3)


def test_missing_cache_says_how_to_set_it_up(tmp_path, monkeypatch):
    monkeypatch.setenv("QUWEIT_DATA", str(tmp_path / "nothing"))
    monkeypatch.setattr(textdata, "SYSTEM", tmp_path / "no-system-install")
    with pytest.raises(SystemExit, match="apt-get download wordnet-base fortunes"):
        textdata.lexname_synsets()


def test_split_by_synset_id_is_fixed_and_about_80_10_10():
    ids = [f"noun:{i:08d}" for i in range(20000)]
    split = [textdata.split_of(i) for i in ids]
    assert split == [textdata.split_of(i) for i in ids]
    shares = {name: split.count(name) / len(split) for name in ("train", "validation", "test")}
    assert abs(shares["train"] - 0.8) < 0.02 and abs(shares["test"] - 0.1) < 0.02


def test_neighbour_agreement():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((50, 8))
    assert minilm.neighbour_agreement(e, e * 2) == 1.0
    assert minilm.neighbour_agreement(e, rng.standard_normal((50, 8))) < 0.3


def test_packages_installed_system_wide_serve_too(tmp_path, monkeypatch):
    monkeypatch.setenv("QUWEIT_DATA", str(tmp_path / "no-cache"))
    monkeypatch.setattr(textdata, "SYSTEM", tmp_path)
    (tmp_path / "usr/share/games/fortunes").mkdir(parents=True)
    assert textdata.folder("usr/share/games/fortunes") == tmp_path / "usr/share/games/fortunes"
