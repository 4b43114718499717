"""Batches: format, packing, evaluation order, caching, resumption, processes, closing."""

import collections
import gc
import json
import logging
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from transformer_jax.data import (BATCH_KEYS, Tokenizer, filter_pairs, make_eval_batches,
                                  make_train_iterator, pairs_to_dataset, synthetic,
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
  return tokenize_split(pairs_to_dataset(PAIRS), tok, str(tmp_path_factory.mktemp("cache")),
                        "train")


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
                           packing=packing, num_epochs=1, window=64)
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
  toks = tokenize_split(pairs_to_dataset(pairs), tok, None, "tiny")
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
  # A bad batch size fails at the call, before any batch is asked for.
  with pytest.raises(ValueError, match="data.eval_batch_size=8 .* process count 3"):
    make_eval_batches(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=8, process_count=3)


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
  with pytest.raises(ValueError, match="data.batch_size=8 must be a positive multiple of the "
                     "process count 3"):
    make(0, 3)
  with pytest.raises(ValueError, match="process_index=2 is outside"):
    make(2, 2)


def test_tokenization_is_cached(tok, tmp_path, monkeypatch, caplog):
  first = tokenize_split(pairs_to_dataset(PAIRS), tok, str(tmp_path), "train")
  monkeypatch.setattr(Tokenizer, "encode_batch", lambda *a: pytest.fail("re-tokenized"))
  with caplog.at_level(logging.INFO):  # A new Dataset of the same pairs, as after a restart.
    again = tokenize_split(pairs_to_dataset(PAIRS), tok, str(tmp_path), "train")
  assert "loading token ids" in caplog.text
  np.testing.assert_array_equal(first.src_values, again.src_values)
  np.testing.assert_array_equal(first.tgt_offsets, again.tgt_offsets)


def test_tokenize_split_takes_a_dataset(tok):
  with pytest.raises(TypeError, match="pairs_to_dataset"):
    tokenize_split(PAIRS, tok, None)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_close_is_idempotent_and_final(tokens):
  keep = filter_pairs(tokens, 32)
  make = lambda: make_train_iterator(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=8,
                                     seq_len=32)
  it = make()
  next(it)
  it.close()
  it.close()
  for use in (lambda: next(it), it.get_state, lambda: it.set_state({"grain": {}})):
    with pytest.raises(ValueError, match="closed"):
      use()
  with make() as it:
    first = next(it)["src"]
  with pytest.raises(ValueError, match="closed"):
    next(it)
  del it
  it = make()  # Never closed: closed when collected, without an unraisable exception.
  np.testing.assert_array_equal(next(it)["src"], first)
  del it
  gc.collect()


_EXIT_SCRIPT = """
import numpy as np
from transformer_jax.data import TokenizedSplit, make_train_iterator

offsets = np.arange(0, 401, 4)
tokens = TokenizedSplit(np.full(400, 5, np.int32), offsets, np.full(400, 6, np.int32), offsets)
keep = np.arange(100)
make = lambda prefetch: make_train_iterator(tokens, keep, bos_id=1, eos_id=2, batch_size=4,
                                            seq_len=16, prefetch=prefetch)
closed, open_, unprefetched = make(2), make(2), make(0)
for it in (closed, open_, unprefetched):
  next(it)
closed.close()
print("ok")
"""


def test_no_teardown_noise_at_exit():
  """Iterators still referenced at exit, closed or not, exit without "Exception ignored"."""
  run = subprocess.run([sys.executable, "-c", textwrap.dedent(_EXIT_SCRIPT)], capture_output=True,
                       text=True, timeout=120, check=False, cwd=pathlib.Path(__file__).parents[2])
  assert run.returncode == 0 and run.stdout == "ok\n", run.stderr
  assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr, run.stderr
