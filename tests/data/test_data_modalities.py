"""Modality vocabularies of the multi-omic model: appended feature tokens, ``vocab_mod`` and the
modality of every token."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scvi import REGISTRY_KEYS

from scgpt_scvi.data import (
    MODALITIES,
    GeneVocab,
    Modality,
    extend_vocab,
    modality_vocab,
    token_modalities,
)


def test_modalities_in_sequence_order():
    assert list(MODALITIES) == ["rna_layer", "protein_layer", "atac_layer"]
    assert MODALITIES["protein_layer"] == Modality(REGISTRY_KEYS.PROTEIN_EXP_KEY, "Protein", "p_")
    assert [m.prefix for m in MODALITIES.values()] == ["", "p_", "a_"]


def test_extend_vocab_appends_missing_tokens_after_the_last_id():
    vocab = GeneVocab({"A": 0, "B": 1, "<pad>": 5, "<cls>": 6, "<eoc>": 7})
    assert extend_vocab(vocab, ["A", "<pad>"]) is vocab
    extended = extend_vocab(vocab, ["p_A", "B", "p_C", "p_A"])
    assert extended.get_stoi() == vocab.get_stoi() | {"p_A": 8, "p_C": 9}
    assert "p_A" not in vocab  # the given vocabulary is left as it was


def test_modality_vocab_default_given_and_missing(tmp_path):
    built = modality_vocab(None, ["RNA", "Protein"])
    assert built.get_stoi() == {"Protein": 0, "RNA": 1, "<pad>": 2, "<cls>": 3, "<eoc>": 4}
    assert modality_vocab(built, ["RNA"]) is built
    table = {"RNA": 0, "ATAC": 1, "<pad>": 2, "<cls>": 3, "<eoc>": 4}
    assert modality_vocab(table, ["ATAC"]).get_stoi() == table
    (tmp_path / "vocab_mod.json").write_text(json.dumps(table))
    assert modality_vocab(tmp_path / "vocab_mod.json", ["RNA"]).get_stoi() == table
    with pytest.raises(ValueError, match=r"vocab_mod lacks the modalities \['Protein'\]"):
        modality_vocab(table, ["RNA", "Protein"])


def test_token_modalities_maps_features_and_special_tokens():
    vocab = GeneVocab.from_genes(["CD4", "LYZ", "UNMEASURED", "p_CD4"])
    vocab_mod = modality_vocab(None, ["RNA", "Protein"])
    features = {"rna_layer": ["CD4", "LYZ", "NOT_IN_VOCAB"], "protein_layer": ["p_CD4"]}
    token_ids = {
        "rna_layer": np.array([vocab["CD4"], vocab["LYZ"], -1]),
        "protein_layer": np.array([vocab["p_CD4"]]),
    }
    table = token_modalities(vocab, vocab_mod, features, token_ids)
    assert table.shape == (vocab.ntoken,)
    assert table[vocab["CD4"]] == table[vocab["LYZ"]] == vocab_mod["RNA"]
    assert table[vocab["p_CD4"]] == vocab_mod["Protein"]
    assert table[vocab["UNMEASURED"]] == vocab_mod["RNA"]  # tokens of no modality: RNA
    for special in ("<pad>", "<cls>", "<eoc>"):
        assert table[vocab[special]] == vocab_mod[special]
