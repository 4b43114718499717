"""The Tokenizer contract: special ids, encode/decode, round trip, training on tiny corpora."""

import pytest

from transformer_jax.data import Tokenizer
from transformer_jax.data import synthetic

SENTENCES = [
    "A man in a blue shirt is standing on a ladder.",
    "Ein Mann in einem blauen Hemd steht auf einer Leiter.",
    "Two young children play in the grass near 3 dogs.",
    "Zwei kleine Kinder spielen im Gras neben 3 Hunden.",
    "Straße, Größe, Äpfel: ß ä ö ü — “quotes” and émigrés.",
] * 20 + [t for pair in synthetic.synthetic_pairs("dates", 200, 0) for t in pair]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return Tokenizer.train(SENTENCES, 300, tmp_path_factory.mktemp("tok") / "tokenizer.model")


def test_special_ids_and_vocab(tok):
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
  assert 10 < tok.vocab_size <= 300


def test_encode_adds_no_special_ids_and_round_trips(tok):
  for text in SENTENCES[:5] + ["2023-07-14", "fourteenth of july two thousand twenty three"]:
    ids = tok.encode(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert not {tok.pad_id, tok.bos_id, tok.eos_id} & set(ids)
    assert tok.decode(ids) == text
  assert tok.encode_batch(SENTENCES[:3]) == [tok.encode(s) for s in SENTENCES[:3]]


def test_decode_skips_pad_and_bos_and_stops_at_eos(tok):
  ids = tok.encode("Two dogs.")
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id] + tok.encode("junk") + [0, 0]) == "Two dogs."
  assert tok.decode([0, 0]) == ""


def test_load_gives_the_same_tokenizer(tok):
  again = Tokenizer.load(tok.path)
  assert again.vocab_size == tok.vocab_size and again.fingerprint == tok.fingerprint
  assert again.encode(SENTENCES[1]) == tok.encode(SENTENCES[1])


def test_training_is_deterministic(tok, tmp_path):
  assert Tokenizer.train(SENTENCES, 300, tmp_path / "t.model").fingerprint == tok.fingerprint


def test_byte_fallback_spells_unseen_characters(tmp_path):
  big = Tokenizer.train(SENTENCES, 1024, tmp_path / "big.model")
  text = "Unseen: 漢字 and 🙂."
  assert big.decode(big.encode(text)) == text
  assert big.unk_id not in big.encode(text)


def test_tiny_corpus_and_bad_requests(tmp_path):
  tiny = Tokenizer.train(["hello world", "hallo welt"], 100, tmp_path / "tiny.model")
  assert tiny.vocab_size <= 100 and tiny.decode(tiny.encode("hello welt")) == "hello welt"
  with pytest.raises(ValueError, match="vocab_size=8"):
    Tokenizer.train(["hello world", "hallo welt"], 8, tmp_path / "small.model")
  with pytest.raises(ValueError, match="empty"):
    Tokenizer.train(["", "  "], 100, tmp_path / "empty.model")
  with pytest.raises(FileNotFoundError, match="missing.model"):
    Tokenizer.load(tmp_path / "missing.model")
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(ValueError, match="junk.model"):
    Tokenizer.load(tmp_path / "junk.model")
