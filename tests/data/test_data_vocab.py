"""GeneVocab: scGPT's vocab.json format and special tokens."""

from __future__ import annotations

import json

import pytest

from scgpt_scvi.data import CLS_TOKEN, EOC_TOKEN, PAD_TOKEN, GeneVocab


def test_from_genes_appends_specials_in_order():
    v = GeneVocab.from_genes(["CD3E", "MS4A1", "CD3E"])
    assert v.get_itos() == ["CD3E", "MS4A1", PAD_TOKEN, CLS_TOKEN, EOC_TOKEN]
    assert (v.pad_id, v.cls_id, v.ntoken, len(v)) == (2, 3, 5, 5)
    assert v.lookup(["MS4A1", "nope"]) == [1, -1]


def test_missing_specials_are_appended_with_warning(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"A": 0, "B": 5, PAD_TOKEN: 1}))
    with pytest.warns(UserWarning, match="<cls>") as rec:
        v = GeneVocab.from_file(path)
    assert "<pad>" not in str(rec[0].message), "only missing tokens are named"
    assert v[PAD_TOKEN] == 1
    assert v[CLS_TOKEN] == 6 and v[EOC_TOKEN] == 7
    assert v.ntoken == 8


def test_no_pad_no_cls_warns_and_appends():
    with pytest.warns(UserWarning, match=r"<pad>.*<cls>"):
        v = GeneVocab({"A": 0, "B": 1})
    assert (v.pad_id, v.cls_id) == (2, 3)


def test_no_warning_when_specials_present(recwarn):
    GeneVocab({"A": 0, PAD_TOKEN: 1, CLS_TOKEN: 2, EOC_TOKEN: 3})
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_add_specials_false_leaves_vocab_alone():
    v = GeneVocab({"A": 0}, add_specials=False)
    assert list(v) == ["A"]
    with pytest.raises(KeyError):
        _ = v.pad_id


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="unique"):
        GeneVocab({"A": 0, "B": 0})


def test_json_round_trip(tmp_path):
    v = GeneVocab.from_genes(["g1", "g2"])
    v.save_json(tmp_path / "v.json")
    w = GeneVocab.from_file(tmp_path / "v.json")
    assert w.get_stoi() == v.get_stoi()
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        GeneVocab.from_file(tmp_path / "bad.json")


def test_fixture_vocab(fixtures_dir):
    v = GeneVocab.from_file(fixtures_dir / "scgpt_pretrained_layout" / "vocab.json")
    assert (v.pad_id, v.cls_id, v[EOC_TOKEN], v.ntoken) == (765, 766, 767, 768)
