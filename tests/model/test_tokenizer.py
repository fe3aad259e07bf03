from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models

from model.tokenizer import EOS_TOKEN, PAD_TOKEN, load_tokenizer, train_tokenizer
from tests.model.conftest import VOCAB


def test_trained_tokenizer_round_trips_real_text_and_fixes_special_ids(store, tokenizer_uri, source_docs):
    assert tokenizer_uri.endswith("/tokenizer/tokenizer.json")
    tok = load_tokenizer(tokenizer_uri, store)
    assert 256 < tok.get_vocab_size() <= VOCAB
    assert tok.token_to_id(EOS_TOKEN) == 0 and tok.token_to_id(PAD_TOKEN) == 1
    for text in [source_docs[0]["text"], "Grüße aus München, naïve café", "emoji 🙂 and\ttabs\n\n  spaces"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text  # byte-level: lossless, no unknown token
        assert 0 not in ids and 1 not in ids  # special tokens never come out of plain text
    # Merges were learned: real text takes clearly fewer tokens than bytes.
    text = source_docs[1]["text"]
    assert len(tok.encode(text).ids) < 0.6 * len(text.encode())


def test_tokenizer_saves_to_a_local_file_and_rejects_bad_input(tmp_path, store, source_dataset):
    uri = train_tokenizer(source_dataset.dataset_uri, source_dataset.version, str(tmp_path / "tok.json"), 300, store=store, max_docs=20)
    assert uri == str(tmp_path / "tok.json") and load_tokenizer(uri, store).get_vocab_size() <= 300
    with pytest.raises(ValueError, match="at least"):
        train_tokenizer(source_dataset.dataset_uri, source_dataset.version, str(tmp_path), 100, store=store)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(Tokenizer(models.BPE()).to_str())
    with pytest.raises(ValueError, match="special token"):
        load_tokenizer(str(foreign), store)
