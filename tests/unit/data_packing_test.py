"""packing.py against plain references: first-fit decisions, row assembly, windows, density."""

import collections

import numpy as np
import pytest

from transformer_jax.data import TokenizedSplit, make_example, make_train_iterator
from transformer_jax.data.packing import (BATCH_KEYS, WindowPlanner, assemble, first_fit,
                                          pack_rows)

BOS, EOS = 1, 2


def wmt_like_lengths(n, seed=0, seq_len=128):
  """Lognormal source lengths (mean ~26), targets ~ sources x lognormal(0, 0.15)."""
  rng = np.random.default_rng(seed)
  src = np.clip(np.round(rng.lognormal(np.log(26) - 0.18, 0.6, n)), 1, seq_len - 1)
  tgt = np.clip(np.round(src * rng.lognormal(0, 0.15, n)), 1, seq_len - 1)
  return src.astype(np.int64), tgt.astype(np.int64)


def random_tokens(src_lengths, tgt_lengths, seed=0):
  rng = np.random.default_rng(seed)
  so, to = np.r_[0, np.cumsum(src_lengths)], np.r_[0, np.cumsum(tgt_lengths)]
  return TokenizedSplit(rng.integers(3, 500, so[-1]).astype(np.int32), so,
                        rng.integers(3, 500, to[-1]).astype(np.int32), to)


def plain_first_fit(src, tgt, seq_len):
  """First-fit as the textbook states it: a list of rows, scanned in order."""
  free, row_of = [], []
  for a, b in zip(src, tgt):
    for i, (fa, fb) in enumerate(free):
      if fa >= a and fb >= b:
        free[i] = (fa - a, fb - b)
        row_of.append(i)
        break
    else:
      free.append((seq_len - a, seq_len - b))
      row_of.append(len(free) - 1)
  return row_of


def grain_first_fit_rows(src, tgt, seq_len, bins):
  """Rows used by the previous pipeline's algorithm (grain's FirstFitPackIterDataset): `bins`
  open bins; the first example that fits none closes all of them."""
  rows, free = 0, None
  for a, b in zip(src, tgt):
    fit = None if free is None else next(
        (i for i, (fa, fb) in enumerate(free) if fa >= a and fb >= b), None)
    if fit is None:
      rows += bins if free is not None else 0
      free, fit = [(seq_len, seq_len)] * bins, 0
    free[fit] = (free[fit][0] - a, free[fit][1] - b)
  return rows + sum(f != (seq_len, seq_len) for f in free)


def test_first_fit_equals_the_plain_reference():
  src, tgt = wmt_like_lengths(3000, seed=1, seq_len=64)
  src, tgt = np.minimum(src + 1, 64), np.minimum(tgt + 1, 64)
  np.testing.assert_array_equal(first_fit(src, tgt, 64), plain_first_fit(src, tgt, 64))
  assert first_fit([64, 1, 64], [1, 64, 1], 64).tolist() == [0, 1, 2]  # Both sides must fit.


def test_assemble_equals_examples_placed_one_by_one():
  src, tgt = wmt_like_lengths(40, seed=2, seq_len=32)
  tokens = random_tokens(src, tgt)
  rows = [np.array([3, 0, 7]), np.array([5]), np.array([], np.int64), np.array([1, 2])]
  got = assemble(*tokens.arrays(), rows, seq_len=96, bos_id=BOS, eos_id=EOS)
  want = {k: np.zeros((4, 96), np.int32) for k in BATCH_KEYS}
  for r, row in enumerate(rows):
    col = {"src": 0, "tgt": 0}
    for s, e in enumerate(row, start=1):
      ex = make_example(tokens.src(e), tokens.tgt(e), BOS, EOS)
      for key, side in (("src", "src"), ("tgt_in", "tgt"), ("tgt_out", "tgt")):
        n = len(ex[key])
        want[key][r, col[side]:col[side] + n] = ex[key]
        if key != "tgt_out":
          want[f"{side}_segments"][r, col[side]:col[side] + n] = s
          want[f"{side}_positions"][r, col[side]:col[side] + n] = np.arange(n)
      col["src"] += len(ex["src"])
      col["tgt"] += len(ex["tgt_in"])
  for k in BATCH_KEYS:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  out = {k: np.full((6, 96), 9, np.int32) for k in BATCH_KEYS}  # In place, stale rows cleared.
  filled = assemble(*tokens.arrays(), rows, seq_len=96, bos_id=BOS, eos_id=EOS, out=out)
  for k in BATCH_KEYS:
    np.testing.assert_array_equal(filled[k], want[k])


def test_windows_cover_each_epoch_once_and_pack_within_rows():
  src, tgt = wmt_like_lengths(1000, seed=3, seq_len=48)
  ids = np.arange(5, 1005)  # Token-array indices need not start at 0.
  planner = WindowPlanner(ids, src + 1, tgt + 1, window=128, seed=4)
  assert planner.windows_per_epoch == 8
  lengths = dict(zip(ids, zip(src + 1, tgt + 1)))
  for epoch in range(2):
    perm = planner.permutation(epoch)
    seen = []
    for w in range(planner.windows_per_epoch):
      examples = planner.examples(w, perm)
      rows = pack_rows(examples, seq_len=48, packing=True, seed=4, epoch=epoch, window=w)
      for row in rows:
        assert sum(lengths[e][0] for e in row) <= 48 and sum(lengths[e][1] for e in row) <= 48
      assert sorted(np.concatenate(rows)) == sorted(examples.ids)
      seen.extend(np.concatenate(rows))
    assert sorted(seen) == list(ids)
  assert not np.array_equal(planner.permutation(0), planner.permutation(1))


def test_density_matches_the_previous_first_fit():
  """At WMT-like lengths, 192 x 128 rows: within a point of grain's 256-bin first-fit."""
  src, tgt = wmt_like_lengths(20_000, seed=5)
  tokens = random_tokens(src, tgt)
  it = make_train_iterator(tokens, np.arange(20_000), bos_id=BOS, eos_id=EOS, batch_size=192,
                           seq_len=128, num_epochs=1, prefetch=0)
  batches = list(it)
  real = sum(int((b["src_segments"] > 0).sum() + (b["tgt_segments"] > 0).sum()) for b in batches)
  rows = sum(int((b["src_segments"][:, 0] > 0).sum()) for b in batches)
  density = real / (rows * 2 * 128)
  perm = np.random.default_rng(0).permutation(20_000)
  old_rows = grain_first_fit_rows(src[perm] + 1, tgt[perm] + 1, 128, 256)
  old_density = real / (old_rows * 2 * 128)
  assert density >= old_density - 0.01, (density, old_density)
  assert density > 0.9


@pytest.mark.parametrize("packing", [True, False])
def test_an_epoch_through_the_iterator_has_every_example_once(packing):
  src, tgt = wmt_like_lengths(700, seed=6, seq_len=32)
  tokens = random_tokens(src, tgt)
  keep = np.arange(3, 700, 2)
  it = make_train_iterator(tokens, keep, bos_id=BOS, eos_id=EOS, batch_size=16, seq_len=32,
                           num_epochs=1, window=50, packing=packing)
  seen = collections.Counter()
  for batch in it:
    for r in range(16):
      for s in range(1, batch["src_segments"][r].max() + 1):
        seen[tuple(batch["src"][r][batch["src_segments"][r] == s][:-1])] += 1
  assert seen == collections.Counter(tuple(tokens.src(i)) for i in keep)
