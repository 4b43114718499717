"""Packed rows on arrays: first-fit decided on example lengths, then one gather from the flat
token arrays. It imports nothing but numpy, so that worker processes start light.

The unit of work is a *window*: a fixed run of consecutive positions of an epoch's seeded
permutation. A window's examples are first-fit packed into as many rows as they need (each
example goes into the first row where its source with EOS and its target with BOS both fit,
else into a new row), and its rows come out in a seeded shuffled order. A window depends only on
(seed, epoch, window index), never on the windows before it, so worker processes can pack and
assemble windows independently, and a run's batches are the same for any number of workers.
The training stream is the rows of window 0, 1, ... of epoch 0, then of epoch 1, and so on;
every example appears exactly once per epoch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

BATCH_KEYS = ("src", "tgt_in", "tgt_out", "src_segments", "tgt_segments", "src_positions",
              "tgt_positions")


def first_fit(src_lengths, tgt_lengths, seq_len: int) -> np.ndarray:
  """The row of each example, in order: the first row with room for both sides, else a new one.

  Lengths include the EOS / BOS (so each is <= seq_len). Rows are numbered in opening order.
  """
  n = len(src_lengths)
  free_src = np.full(max(n, 1), seq_len, np.int64)
  free_tgt = np.full(max(n, 1), seq_len, np.int64)
  row_of = np.empty(n, np.int64)
  used = 0
  for k, (a, b) in enumerate(zip(np.asarray(src_lengths).tolist(),
                                 np.asarray(tgt_lengths).tolist())):
    # Rows [0, used) are open and row `used` is empty, so some row always fits.
    fits = (free_src[:used + 1] >= a) & (free_tgt[:used + 1] >= b)
    i = int(fits.argmax())
    free_src[i] -= a
    free_tgt[i] -= b
    row_of[k] = i
    used = max(used, i + 1)
  return row_of


@dataclasses.dataclass(frozen=True)
class WindowPlanner:
  """The examples of each window, from lengths alone (see the module docstring).

  Attributes:
    example_ids: The examples of one epoch (indices into the token arrays).
    src_lengths, tgt_lengths: Their lengths with EOS / BOS, aligned with `example_ids`.
    window: Consecutive examples packed together (>= 1).
    seed: Seeds the epoch permutations (`pack_rows` seeds the row shuffles).
  """
  example_ids: np.ndarray
  src_lengths: np.ndarray
  tgt_lengths: np.ndarray
  window: int
  seed: int

  @property
  def num_examples(self) -> int:
    return len(self.example_ids)

  @property
  def windows_per_epoch(self) -> int:
    return -(-self.num_examples // self.window)

  def permutation(self, epoch: int) -> np.ndarray:
    """Positions into `example_ids` in epoch `epoch`'s order."""
    return np.random.default_rng((self.seed, 0, epoch)).permutation(self.num_examples)

  def examples(self, window: int, permutation: np.ndarray) -> WindowExamples:
    """The examples of window `window` of the epoch whose `permutation` is given."""
    positions = permutation[window * self.window:(window + 1) * self.window]
    return WindowExamples(self.example_ids[positions], self.src_lengths[positions],
                          self.tgt_lengths[positions])


@dataclasses.dataclass(frozen=True)
class WindowExamples:
  """A window's example ids (token-array indices) and their lengths with EOS / BOS."""
  ids: np.ndarray
  src_lengths: np.ndarray
  tgt_lengths: np.ndarray


def pack_rows(examples: WindowExamples, *, seq_len: int, packing: bool, seed: int, epoch: int,
              window: int) -> list[np.ndarray]:
  """A window's rows, each an array of example ids in packing order, in a seeded order.

  With `packing=False` each example is a row of its own, in window order.
  """
  ids = examples.ids
  if not packing:
    return [ids[i:i + 1] for i in range(len(ids))]
  row_of = first_fit(examples.src_lengths, examples.tgt_lengths, seq_len)
  order = np.argsort(row_of, kind="stable")
  starts = np.flatnonzero(np.diff(row_of[order], prepend=-1))
  rows = np.split(ids[order], starts[1:])
  shuffle = np.random.default_rng((seed, 1, epoch, window)).permutation(len(rows))
  return [rows[i] for i in shuffle]


def assemble(src_values: np.ndarray, src_offsets: np.ndarray, tgt_values: np.ndarray,
             tgt_offsets: np.ndarray, rows: list, *, seq_len: int, bos_id: int, eos_id: int,
             out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """`[len(rows), seq_len]` int32 arrays (`BATCH_KEYS`) of packed rows.

  Example e's source is `src_values[src_offsets[e]:src_offsets[e + 1]]` (no EOS), the same for
  the target; `rows[r]` lists the examples of row r in order. `out` (arrays of at least
  len(rows) rows) is filled in place when given, e.g. a worker's shared memory.
  """
  num_rows = len(rows)
  if out is None:
    out = {k: np.zeros((num_rows, seq_len), np.int32) for k in BATCH_KEYS}
  else:
    out = {k: out[k][:num_rows] for k in BATCH_KEYS}
    for v in out.values():
      v.fill(0)
  counts = np.fromiter((len(r) for r in rows), np.int64, num_rows)
  if not counts.sum():
    return out
  ex = np.concatenate(rows).astype(np.int64)
  row = np.repeat(np.arange(num_rows), counts)
  first_of_row = np.repeat(np.cumsum(counts) - counts, counts)  # Index of the row's first example.
  segment = np.arange(len(ex)) - first_of_row + 1
  for side, values, offsets in (("src", src_values, src_offsets), ("tgt", tgt_values, tgt_offsets)):
    start = np.asarray(offsets[ex], np.int64)
    n = np.asarray(offsets[ex + 1], np.int64) - start + 1  # With EOS (source) or BOS (target).
    ends = np.cumsum(n)
    begins = ends - n
    column = begins - begins[first_of_row]  # Where each example starts in its row.
    within = np.arange(ends[-1]) - np.repeat(begins, n)  # Each token's position.
    flat = np.repeat(row * seq_len + column, n) + within
    out[f"{side}_segments"].reshape(-1)[flat] = np.repeat(segment, n)
    out[f"{side}_positions"].reshape(-1)[flat] = within
    value_index = np.repeat(start, n) + within
    last = max(len(values) - 1, 0)  # The EOS slot indexes one past its example: clipped.
    ids = np.asarray(values[np.minimum(value_index, last)], np.int32)
    ids[ends - 1] = eos_id  # Ids then EOS: the source, and the target labels.
    out["src" if side == "src" else "tgt_out"].reshape(-1)[flat] = ids
    if side == "tgt":  # BOS then ids: the decoder input.
      shifted = np.asarray(values[np.clip(value_index - 1, 0, last)], np.int32)
      shifted[begins] = bos_id
      out["tgt_in"].reshape(-1)[flat] = shifted
  return out
