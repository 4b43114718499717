"""Behaviour of the sacreBLEU metrics and of batched translation."""

import string

import jax
import numpy as np
import pytest

from transformer_jax import Transformer, TransformerConfig
from transformer_jax import decoding, evaluation

CONFIG = TransformerConfig.tiny(20, num_encoder_layers=1, num_decoder_layers=1)
REFERENCES = ["The cat sat on the mat.", "A man rides a bike down the street.",
              "Two dogs play in the snow."]


class CharTokenizer:
  """Letters a..q are ids 3..19; pad 0, bos 1, eos 2, as the model expects."""

  pad_id, bos_id, eos_id = 0, 1, 2

  def encode(self, text):
    return [3 + string.ascii_lowercase.index(c) for c in text if c in "abcdefghijklmnopq"]

  def decode(self, ids):
    return "".join(string.ascii_lowercase[i - 3] for i in ids if i >= 3)


@pytest.fixture(scope="module")
def params():
  src = np.ones((1, 4), np.int32)
  return jax.jit(lambda: Transformer(CONFIG).init(jax.random.key(1), src, src)["params"])()


def test_references_against_themselves_score_100():
  scores = evaluation.corpus_scores(REFERENCES, REFERENCES)
  assert scores["bleu"].score == pytest.approx(100.0)
  assert scores["chrf"].score == pytest.approx(100.0)
  assert "tok:13a" in scores["bleu"].signature and "case:mixed" in scores["bleu"].signature
  assert str(scores["bleu"]).startswith("BLEU|nrefs:1|") and scores["chrf"].name == "chrF2"
  worse = evaluation.bleu(["The cat sat.", "A man rides.", "Dogs play."], REFERENCES)
  assert 0.0 <= worse.score < 50.0


def test_tokenized_lowercased_bleu():
  hyps = ["the cat sat on the mat ."]
  refs = ["The cat sat on the mat ."]
  assert evaluation.bleu(hyps, refs).score < 100.0  # Case matters by default.
  paper = evaluation.bleu(hyps, refs, tokenize="none", lowercase=True)
  assert paper.score == pytest.approx(100.0)
  assert "tok:none" in paper.signature and "case:lc" in paper.signature
  # tokenize="none" takes the text as already tokenized: "mat." is not "mat ."
  assert evaluation.bleu(["the cat sat on the mat."], refs, tokenize="none",
                         lowercase=True).score < 100.0
  assert evaluation.bleu(["the cat sat on the mat."], refs, lowercase=True).score == pytest.approx(
      100.0)


def test_tokenized_bleu_does_not_warn_about_tokenized_text(caplog):
  lines = [f"a dog number {i} runs ." for i in range(120)]
  with caplog.at_level("WARNING", logger="sacrebleu"):
    evaluation.bleu(lines, lines, tokenize="13a")
  assert "forgot to detokenize" in caplog.text  # sacreBLEU's check, as on detokenized scoring.
  caplog.clear()
  with caplog.at_level("WARNING", logger="sacrebleu"):
    score = evaluation.bleu(lines, lines, tokenize="none")
  assert score.score == pytest.approx(100.0) and "tok:none" in score.signature
  assert "detokenize" not in caplog.text  # Tokenized text is what tokenize="none" is for.


def test_several_reference_streams_and_bad_references():
  other = ["A cat is on the mat.", "A man on a bike.", "Dogs in snow."]
  assert evaluation.bleu(other, [REFERENCES, other]).score == pytest.approx(100.0)
  assert "nrefs:2" in evaluation.bleu(other, [REFERENCES, other]).signature
  with pytest.raises(ValueError, match="one reference per hypothesis"):
    evaluation.bleu(REFERENCES, REFERENCES[:2])
  with pytest.raises(ValueError, match="not one string"):
    evaluation.chrf("a b c", "a b c")


def test_bucket_lengths_and_batches():
  assert [evaluation.bucket_length(n) for n in (1, 16, 17, 24, 25, 33, 49, 100)] == [
      16, 16, 24, 24, 32, 48, 64, 128]
  batches = evaluation.length_batches([30, 20, 18, 17, 16, 5, 3], batch_tokens=64)
  assert [(b.rows, b.size, b.length) for b in batches] == [
      ([0], 1, 32), ([1, 2], 2, 24), ([3], 1, 24), ([4, 5, 6], 4, 16)]


def _greedy_alone(params, ids, width):
  src = np.zeros((1, width), np.int32)
  src[0, :len(ids)] = ids
  tokens = decoding.greedy_search(Transformer(CONFIG), params, src)
  return CharTokenizer().decode(decoding.ids_until_eos(tokens[0], eos_id=2))


def test_translate_batches_in_input_order_like_each_line_alone(params, capsys):
  tokenizer = CharTokenizer()
  lines = ["abc", "", "hello", "   ", "a", "qpo", "badge", "fig"]  # Batches of 4, then 1.
  out = evaluation.translate(Transformer(CONFIG), params, tokenizer, lines, beam_size=1,
                             batch_tokens=64, progress=True)
  assert len(out) == len(lines) and out[1] == "" and out[3] == ""
  assert "translate" in capsys.readouterr().err  # The progress bar, on stderr.
  for line, got in zip(lines, out):
    if line.strip():
      ids = tokenizer.encode(line) + [2]
      assert got == _greedy_alone(params, ids, evaluation.bucket_length(len(ids)))
  no_eos = evaluation.translate(Transformer(CONFIG), {"params": params}, tokenizer, lines[:1],
                                beam_size=1, append_eos=False)
  assert no_eos == [_greedy_alone(params, tokenizer.encode(lines[0]), 16)]


def test_translate_with_beam_search_and_score(params):
  tokenizer = CharTokenizer()
  sources = ["bad", ""]
  hyps, scores = evaluation.translate_and_score(Transformer(CONFIG), params, tokenizer, sources,
                                                ["bad", ""], beam_size=2)
  src = np.zeros((1, 16), np.int32)
  src[0, :4] = tokenizer.encode("bad") + [2]
  tokens, _ = decoding.beam_search(Transformer(CONFIG), params, src, beam_size=2)
  assert hyps == [tokenizer.decode(decoding.ids_until_eos(tokens[0, 0], eos_id=2)), ""]
  assert set(scores) == {"bleu", "chrf"} and 0.0 <= scores["bleu"].score <= 100.0


def test_translate_rejects_a_mismatched_tokenizer(params):
  tokenizer = CharTokenizer()
  tokenizer.eos_id = 3
  with pytest.raises(ValueError, match="eos_id"):
    evaluation.translate(Transformer(CONFIG), params, tokenizer, ["abc"])
