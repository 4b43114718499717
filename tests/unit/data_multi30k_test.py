"""The pipeline on the real Multi30k corpus (skipped when ../shared/data/multi30k is absent)."""

import collections
import json

import numpy as np
import pytest

from transformer_jax.data import (BATCH_KEYS, Tokenizer, filter_pairs, load_local_split,
                                  make_train_iterator, pairs_to_dataset, tokenize_split)

BATCH, SEQ_LEN, MAX_LEN = 64, 128, 128


@pytest.fixture(scope="session")
def multi30k(multi30k_dir, tmp_path_factory):
  """Splits, an 8k tokenizer trained once on train, and the tokenized train split."""
  splits = {s: load_local_split(multi30k_dir, s, source_lang="en", target_lang="de")
            for s in ("train", "val", "test_2016_flickr")}
  work = tmp_path_factory.mktemp("multi30k")
  tok = Tokenizer.train([t for p in splits["train"] for t in p], 8000, work / "tokenizer.model")
  tokens = tokenize_split(pairs_to_dataset(splits["train"]), tok, str(work / "cache"), "train")
  return splits, tok, tokens, filter_pairs(tokens, MAX_LEN, "multi30k train")


def examples(batch):
  out = []
  for r in range(len(batch["src"])):
    for s in range(1, batch["src_segments"][r].max() + 1):
      out.append((tuple(batch["src"][r][batch["src_segments"][r] == s]),
                  tuple(batch["tgt_out"][r][batch["tgt_segments"][r] == s])))
  return out


def expected(tokens, keep, eos):
  return collections.Counter((tuple(tokens.src(i)) + (eos,), tuple(tokens.tgt(i)) + (eos,))
                             for i in keep)


def test_line_counts(multi30k):
  splits = multi30k[0]
  assert [len(splits[s]) for s in ("train", "val", "test_2016_flickr")] == [29_000, 1_014, 1_000]


def test_tokenizer_contract_and_round_trip(multi30k):
  splits, tok = multi30k[0], multi30k[1]
  assert tok.pad_id == 0 and len({tok.pad_id, tok.bos_id, tok.eos_id}) == 3
  assert 7_500 <= tok.vocab_size <= 8_000
  val = [t for p in splits["val"] for t in p]
  exact = sum(tok.decode(tok.encode(t)) == t for t in val)
  assert exact / len(val) >= 0.99, f"{exact} of {len(val)} validation lines round-trip"


def test_packing_efficiency(multi30k):
  _, tok, tokens, keep = multi30k
  it = make_train_iterator(tokens, keep, bos_id=tok.bos_id, eos_id=tok.eos_id,
                           batch_size=BATCH, seq_len=SEQ_LEN)
  batches = [next(it) for _ in range(30)]
  real = sum(int((b["src"] != 0).sum() + (b["tgt_in"] != 0).sum()) for b in batches)
  assert real / (30 * 2 * BATCH * SEQ_LEN) >= 0.90


@pytest.mark.slow
def test_packing_reconstructs_every_example_once(multi30k):
  _, tok, tokens, keep = multi30k
  assert len(keep) == 29_000  # Nothing of Multi30k is empty or longer than 128 tokens.
  it = make_train_iterator(tokens, keep, bos_id=tok.bos_id, eos_id=tok.eos_id,
                           batch_size=BATCH, seq_len=SEQ_LEN, num_epochs=1)
  seen = collections.Counter(ex for b in it for ex in examples(b))
  assert seen == expected(tokens, keep, tok.eos_id)


def test_resume_is_identical(multi30k):
  _, tok, tokens, keep = multi30k
  make = lambda: make_train_iterator(tokens, keep, bos_id=tok.bos_id, eos_id=tok.eos_id,
                                     batch_size=BATCH, seq_len=SEQ_LEN, seed=5)
  it = make()
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = [next(it) for _ in range(5)]
  resumed = make()
  resumed.set_state(state)
  for w in want:
    got = next(resumed)
    for k in BATCH_KEYS:
      np.testing.assert_array_equal(got[k], w[k])


def test_process_shards_disjoint_and_covering(multi30k):
  _, tok, tokens, keep = multi30k
  shards = [collections.Counter(
      ex for b in make_train_iterator(tokens, keep, bos_id=tok.bos_id, eos_id=tok.eos_id,
                                      batch_size=BATCH, seq_len=SEQ_LEN, process_index=p,
                                      process_count=2, num_epochs=1)
      for ex in examples(b)) for p in range(2)]
  # Identical sentence pairs occur in Multi30k, so compare multisets, not sets of strings.
  assert sum(shards[0].values()) + sum(shards[1].values()) == len(keep)
  assert shards[0] + shards[1] == expected(tokens, keep, tok.eos_id)
