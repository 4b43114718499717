"""Batches: format, packing, evaluation order, caching, resumption, processes, create_datasets."""

import collections
import json
import logging

import ml_collections
import numpy as np
import pytest

from transformer_jax.data import (BATCH_KEYS, Tokenizer, create_datasets, filter_pairs,
                                  make_eval_batches, make_train_iterator, synthetic,
                                  tokenize_split)

BOS, EOS = 1, 2


def pairs_fixture():
  rng = np.random.default_rng(0)
  words = "the a man woman dog cat runs sits on under blue red big small house tree".split()
  natural = [(" ".join(rng.choice(words, rng.integers(1, 15))),
              " ".join(rng.choice(words, rng.integers(1, 15)))) for _ in range(200)]
  return natural + synthetic.synthetic_pairs("dates", 200, 0)


PAIRS = pairs_fixture()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return Tokenizer.train([s for p in PAIRS for s in p], 200,
                         tmp_path_factory.mktemp("tok") / "tokenizer.model")


@pytest.fixture(scope="module")
def tokens(tok, tmp_path_factory):
  return tokenize_split(PAIRS, tok, str(tmp_path_factory.mktemp("cache")), "train")


def expected_examples(tokens, indices):
  return collections.Counter(
      (tuple(tokens.src(i)) + (EOS,), tuple(tokens.tgt(i)) + (EOS,)) for i in indices)


def batch_examples(batch):
  """(src, tgt_out) of every packed example, checking the row invariants on the way."""
  out = []
  for r in range(batch["src"].shape[0]):
    src_seg, tgt_seg = batch["src_segments"][r], batch["tgt_segments"][r]
    assert ((batch["src"][r] != 0) == (src_seg > 0)).all()
    assert ((batch["tgt_in"][r] != 0) == (tgt_seg > 0)).all()
    assert ((batch["tgt_out"][r] != 0) == (tgt_seg > 0)).all()
    n = src_seg.max()
    assert set(np.unique(src_seg[src_seg > 0])) == set(range(1, n + 1)) == set(
        np.unique(tgt_seg[tgt_seg > 0]))
    for s in range(1, n + 1):
      src = batch["src"][r][src_seg == s]
      tgt_in, tgt_out = batch["tgt_in"][r][tgt_seg == s], batch["tgt_out"][r][tgt_seg == s]
      # Contiguous, positions restart at 0.
      np.testing.assert_array_equal(batch["src_positions"][r][src_seg == s], np.arange(len(src)))
      np.testing.assert_array_equal(batch["tgt_positions"][r][tgt_seg == s],
                                    np.arange(len(tgt_in)))
      assert np.ptp(np.flatnonzero(src_seg == s)) == len(src) - 1
      assert src[-1] == EOS and tgt_in[0] == BOS and tgt_out[-1] == EOS
      np.testing.assert_array_equal(tgt_in[1:], tgt_out[:-1])
      out.append((tuple(src), tuple(tgt_out)))
  return out


def test_batch_format(tokens):
  keep = filter_pairs(tokens, 32)
  it = make_train_iterator(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=8, seq_len=32)
  batch = next(it)
  assert sorted(batch) == sorted(BATCH_KEYS)
  for v in batch.values():
    assert v.shape == (8, 32) and v.dtype == np.int32
  examples = batch_examples(batch)
  assert len(examples) > 16  # Packed: several pairs per row.
  assert set(examples) <= set(expected_examples(tokens, keep))


@pytest.mark.parametrize("packing", [True, False])
def test_one_epoch_has_every_example_exactly_once(tokens, packing):
  keep = filter_pairs(tokens, 24)
  it = make_train_iterator(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=8, seq_len=24,
                           packing=packing, num_epochs=1, packing_bins=8)
  seen = collections.Counter(ex for batch in it for ex in batch_examples(batch))
  assert seen == expected_examples(tokens, keep)


def test_unpacked_rows_hold_one_example(tokens):
  keep = filter_pairs(tokens, 24)
  batch = next(make_train_iterator(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=4,
                                   seq_len=24, packing=False))
  assert batch["src_segments"].max() == 1 and (batch["src_segments"][:, 0] == 1).all()


def test_filter_drops_and_counts_empty_and_long_pairs(tok, caplog):
  pairs = [("a man", "ein Mann"), ("", "leer"), ("leer", "   "), ("the " * 40, "lang"),
           ("dog", "Hund")]
  toks = tokenize_split(pairs, tok, None, "tiny")
  with caplog.at_level(logging.INFO):
    keep = filter_pairs(toks, 16, name="tiny")
  np.testing.assert_array_equal(keep, [0, 4])
  assert "kept 2 of 5" in caplog.text and "dropped 2 with an empty side" in caplog.text
  assert "1 longer than max_len=16" in caplog.text
  with pytest.raises(ValueError, match="No pair is left"):
    filter_pairs(toks, 2)


def test_eval_batches_keep_every_example_in_order(tokens):
  keep = filter_pairs(tokens, 64)[:43]
  batches = list(make_eval_batches(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=8))
  assert len(batches) == 6
  length = batches[0]["src"].shape[1]
  assert length % 8 == 0 and all(b[k].shape == (8, length) for b in batches for k in BATCH_KEYS)
  rows = [ex for b in batches for ex in batch_examples(b)]
  assert rows == [(tuple(tokens.src(i)) + (EOS,), tuple(tokens.tgt(i)) + (EOS,)) for i in keep]
  assert not batches[-1]["src"][3:].any()  # 43 = 5 * 8 + 3: five empty rows.
  # Two processes: their rows, side by side, are the global batches.
  parts = [list(make_eval_batches(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=8,
                                  process_index=p, process_count=2)) for p in range(2)]
  for g, a, b in zip(batches, *parts):
    for k in BATCH_KEYS:
      np.testing.assert_array_equal(g[k], np.concatenate([a[k], b[k]]))


@pytest.mark.parametrize("packing,prefetch", [(True, 2), (True, 0), (False, 2)])
def test_resume_yields_identical_batches(tokens, packing, prefetch):
  keep = filter_pairs(tokens, 32)
  make = lambda: make_train_iterator(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=8,
                                     seq_len=32, packing=packing, seed=7, prefetch=prefetch)
  it = make()
  for _ in range(13):  # Beyond one epoch (~400 pairs): reshuffled second epoch.
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(40)]
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in BATCH_KEYS:
      np.testing.assert_array_equal(got[k], want[k])
  it.set_state(state)  # Rewinding a running iterator works too.
  np.testing.assert_array_equal(next(it)["src"], expected[0]["src"])
  with pytest.raises(ValueError, match="data-iterator state"):
    resumed.set_state({"nonsense": 1})


def test_seeded_shuffle_differs_per_seed_and_epoch(tokens):
  keep = filter_pairs(tokens, 32)
  first = lambda seed: next(make_train_iterator(tokens, keep, bos_id=BOS, eos_id=EOS,
                                                batch_size=8, seq_len=32, seed=seed))["src"]
  np.testing.assert_array_equal(first(1), first(1))
  assert not np.array_equal(first(1), first(2))
  it = make_train_iterator(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=4, seq_len=32,
                           packing=False, num_epochs=2)
  order = [tuple(row) for b in it for row in b["src"]]
  assert order[:len(keep)] != order[len(keep):2 * len(keep)]


def test_process_shards_are_disjoint_and_cover_everything(tokens):
  keep = filter_pairs(tokens, 32)
  shards = [collections.Counter(
      ex for b in make_train_iterator(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=8,
                                      seq_len=32, process_index=p, process_count=2,
                                      num_epochs=1)
      for ex in batch_examples(b)) for p in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert shards[0] + shards[1] == expected_examples(tokens, keep)
  assert abs(sum(shards[0].values()) - sum(shards[1].values())) <= 1


def test_rows_mode_gives_the_same_global_batch_for_any_process_count(tokens):
  keep = filter_pairs(tokens, 32)
  make = lambda p, n: make_train_iterator(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=8,
                                          seq_len=32, seed=3, process_index=p, process_count=n,
                                          process_sharding="rows")
  single, parts = make(0, 1), [make(0, 2), make(1, 2)]
  for _ in range(5):
    g, a, b = next(single), next(parts[0]), next(parts[1])
    assert a["src"].shape == (4, 32)
    for k in BATCH_KEYS:
      np.testing.assert_array_equal(g[k], np.concatenate([a[k], b[k]]))
  with pytest.raises(ValueError, match="multiple of the process count 3"):
    make(0, 3)


def test_tokenization_is_cached(tok, tmp_path, monkeypatch, caplog):
  first = tokenize_split(PAIRS, tok, str(tmp_path), "train")
  monkeypatch.setattr(Tokenizer, "encode_batch", lambda *a: pytest.fail("re-tokenized"))
  with caplog.at_level(logging.INFO):
    again = tokenize_split(PAIRS, tok, str(tmp_path), "train")
  assert "loading token ids" in caplog.text
  np.testing.assert_array_equal(first.src_values, again.src_values)
  np.testing.assert_array_equal(first.tgt_offsets, again.tgt_offsets)


def write_corpus(directory, pairs, split, src="en", tgt="de"):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / f"{split}.{src}").write_text("".join(p[0] + "\n" for p in pairs))
  (directory / f"{split}.{tgt}").write_text("".join(p[1] + "\n" for p in pairs))


def data_config(**overrides):
  c = dict(dataset="", data_dir="", source_lang="en", target_lang="de", train_split="train",
           eval_split="val", vocab_size=200, max_len=32, batch_size=8, seq_len=32,
           eval_batch_size=4)
  c.update(overrides)
  return c


def test_create_datasets_on_a_local_corpus(tmp_path, monkeypatch):
  data = tmp_path / "corpus"
  write_corpus(data, PAIRS[:300] + [("", "empty source")], "train")
  write_corpus(data, PAIRS[300:310], "val")
  config = ml_collections.ConfigDict(data_config(data_dir=str(data)))
  bundle = create_datasets(config, tmp_path / "work", seed=0)
  assert (tmp_path / "work" / "tokenizer.model").exists()
  assert bundle.tokenizer.pad_id == 0 and bundle.num_train_examples == 300
  assert bundle.eval_sources == [p[0] for p in PAIRS[300:310]]
  assert bundle.eval_references == [p[1] for p in PAIRS[300:310]]
  batch = next(bundle.train_iter)
  assert batch["src"].shape == (8, 32)
  evals = list(bundle.eval_batches())
  assert len(evals) == 3 and len(list(bundle.eval_batches())) == 3
  decoded = [bundle.tokenizer.decode(row) for b in evals for row in b["tgt_out"]][:10]
  assert decoded == bundle.eval_references
  # A restart reuses the tokenizer and the cached token ids.
  monkeypatch.setattr(Tokenizer, "train", lambda *a, **k: pytest.fail("retrained"))
  monkeypatch.setattr(Tokenizer, "encode_batch", lambda *a: pytest.fail("re-tokenized"))
  again = create_datasets(dict(config, num_eval_examples=4), tmp_path / "work", seed=0)
  assert again.tokenizer.fingerprint == bundle.tokenizer.fingerprint
  assert again.eval_sources == bundle.eval_sources[:4]
  np.testing.assert_array_equal(next(again.train_iter)["src"], batch["src"])


def test_create_datasets_errors(tmp_path):
  data = tmp_path / "corpus"
  write_corpus(data, PAIRS[:29], "train")
  (data / "train.de").write_text("".join(p[1] + "\n" for p in PAIRS[:28]))
  with pytest.raises(ValueError, match="29.*28"):
    create_datasets(data_config(data_dir=str(data)), tmp_path / "w", seed=0)
  with pytest.raises(FileNotFoundError, match="no_such_dir"):
    create_datasets(data_config(data_dir=str(tmp_path / "no_such_dir")), tmp_path / "w", seed=0)
  with pytest.raises(ValueError, match="config.data.batchsize"):
    create_datasets(data_config(batchsize=3), tmp_path / "w", seed=0)
  with pytest.raises(ValueError, match="max_len=64 exceeds seq_len=32"):
    create_datasets(data_config(max_len=64), tmp_path / "w", seed=0)


def test_create_datasets_synthetic(tmp_path):
  config = data_config(dataset="synthetic", synthetic_task="dates", synthetic_train_size=500,
                       synthetic_eval_size=20, vocab_size=128, process_sharding="rows",
                       max_len=24, seq_len=48, eval_batch_size=8)
  bundle = create_datasets(config, tmp_path, seed=0)
  assert len(bundle.eval_sources) == 20 and bundle.eval_sources[0].count("-") == 2
  tok = bundle.tokenizer
  for b in bundle.eval_batches():
    for src, tgt in zip(b["src"], b["tgt_out"]):
      if src.any():
        assert tok.decode(tgt) in bundle.eval_references
  halves = [create_datasets(config, tmp_path, seed=0, process_index=p, process_count=2)
            for p in range(2)]
  g = next(bundle.train_iter)
  np.testing.assert_array_equal(
      g["tgt_in"], np.concatenate([next(h.train_iter)["tgt_in"] for h in halves]))


def test_eval_keeps_long_pairs_unless_eval_max_len(tmp_path):
  data = tmp_path / "corpus"
  write_corpus(data, PAIRS[:100], "train")
  long_pair = (" ".join(["the big red house"] * 20), "a dog")
  write_corpus(data, [PAIRS[0], long_pair, ("", "x")], "val")
  bundle = create_datasets(data_config(data_dir=str(data)), tmp_path / "w", seed=0)
  assert bundle.eval_sources == [PAIRS[0][0], long_pair[0]]  # The empty pair is dropped.
  batch = next(iter(bundle.eval_batches()))
  assert batch["src"].shape[1] > 32 and batch["src"].shape[1] % 8 == 0
  limited = create_datasets(data_config(data_dir=str(data), eval_max_len=32), tmp_path / "w",
                            seed=0)
  assert limited.eval_sources == [PAIRS[0][0]]
  with pytest.raises(ValueError, match="config.data.batch_size='8' should be of type int"):
    create_datasets(data_config(batch_size="8"), tmp_path / "w", seed=0)
