"""The batches every side of a benchmark trains or decodes on: random ids, plain or packed.

numpy only: the peers' processes (PyTorch, the accelerator check's child) import this module
without jax or the package.
"""

from __future__ import annotations

import numpy as np

BOS, EOS = 1, 2  # Ids 0-2 are special (0 is padding); random tokens are drawn from 3 up.
PACKED_FILL = 0.96  # Real tokens per slot of the recipe's packed rows (data_benchmark.py).
PACKED_KEYS = ("src", "tgt_in", "tgt_out", "src_segments", "tgt_segments", "src_positions",
               "tgt_positions")


def random_batch(vocab: int, rows: int, length: int, *, seed: int = 0,
                 padding: bool = False) -> dict[str, np.ndarray]:
  """`src`, `tgt_in`, `tgt_out`: int32 `[rows, length]` random ids in [3, vocab).

  `tgt_in` is BOS + the target, `tgt_out` the target shifted by one. The source is drawn first,
  so `random_batch(v, r, n, seed=s)["src"]` does not depend on anything drawn after it.

  Args:
    vocab: Vocabulary size (ids drawn below it).
    rows: Rows of the batch.
    length: Source and target tokens per row.
    seed: Seed of the numpy generator.
    padding: End some rows in padding (0), as the correctness checks want; the throughput
      batches have none.
  """
  rng = np.random.default_rng(seed)
  src = rng.integers(3, vocab, (rows, length), dtype=np.int32)
  tgt = rng.integers(3, vocab, (rows, length + 1), dtype=np.int32)
  tgt[:, 0] = BOS
  if padding:
    src[::2, -(length // 4 + 1):] = 0
    tgt[::3, -(length // 3 + 1):] = 0
  return {"src": src, "tgt_in": tgt[:, :-1].copy(), "tgt_out": tgt[:, 1:].copy()}


def _segment_lengths(rng, length: int, fill: float) -> tuple[list[int], list[int]]:
  """Target and source lengths of one packed row's pairs: the targets fill `fill` of the row."""
  tgt, remaining = [], round(fill * length)
  while remaining > 0:
    n = int(rng.integers(6, 20))  # Multi30k pairs: ~14 tokens with EOS / BOS.
    n = remaining if remaining - n < 6 else n
    tgt.append(n)
    remaining -= n
  src = [max(2, n + int(rng.integers(-2, 3))) for n in tgt]
  while sum(src) > length:
    src[src.index(max(src))] -= 1
  return tgt, src


def packed_batch(vocab: int, rows: int, length: int, *, fill: float = PACKED_FILL,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """A batch laid out as `transformer_jax.data.pipeline` packs one: `[rows, length]` int32.

  Each row holds several pairs back to back (segment ids 1, 2, ..., positions restarting at 0,
  `tgt_in` = BOS + target, `tgt_out` = target + EOS per pair) and padding (0) at its end;
  `fill` of the target slots hold real tokens, about as many of the source slots.
  """
  rng = np.random.default_rng(seed)
  batch = {k: np.zeros((rows, length), np.int32) for k in PACKED_KEYS}
  for r in range(rows):
    tgt_lens, src_lens = _segment_lengths(rng, length, fill)
    for side, lens in (("src", src_lens), ("tgt", tgt_lens)):
      at = 0
      for segment, n in enumerate(lens, 1):
        batch[f"{side}_segments"][r, at:at + n] = segment
        batch[f"{side}_positions"][r, at:at + n] = np.arange(n)
        ids = rng.integers(3, vocab, n + 1)
        if side == "src":
          batch["src"][r, at:at + n] = np.append(ids[:n - 1], EOS)
        else:
          batch["tgt_in"][r, at:at + n] = np.append(BOS, ids[:n - 1])
          batch["tgt_out"][r, at:at + n] = np.append(ids[:n - 1], EOS)
        at += n
  return batch
