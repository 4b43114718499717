"""Token ids (cached), filtering, and batches: packed, seeded, resumable training batches, and
in-order evaluation batches.

A batch is a dict of int32 numpy arrays, all `[B, L]`:
  src            source ids followed by EOS; 0 = padding
  tgt_in         BOS followed by target ids (the decoder input, shifted right)
  tgt_out        target ids followed by EOS (the labels; loss where tgt_segments > 0)
  src_segments   1, 2, ... for the packed examples of a row, 0 on padding (same for tgt_*)
  tgt_segments
  src_positions  0, 1, ... restarting at each example, 0 on padding
  tgt_positions
A pair's source and target go into the same row with the same segment number, so the model's
segment masks keep every example to itself. Evaluation batches hold one example per row
(segments 1, positions 0..n-1) and empty rows at the end of the last batch. Training batches are
cut from packed windows (`packing.py`), made in this process or by worker processes
(`workers.py`; the batches are the same either way).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from transformer_jax.data.packing import BATCH_KEYS, WindowPlanner
from transformer_jax.data.token_cache import TokenizedSplit, encode_texts, tokenize_split
from transformer_jax.data.train_iterator import TrainIterator, _WindowSource

log = logging.getLogger(__name__)

__all__ = ["BATCH_KEYS", "TokenizedSplit", "TrainIterator", "encode_texts", "eval_length",
           "filter_pairs", "make_eval_batches", "make_example", "make_train_iterator",
           "packing_window", "rows_per_process", "tokenize_split"]


def filter_pairs(tokens: TokenizedSplit, max_len: int | None, name: str = "split") -> np.ndarray:
  """Indices of the pairs kept: both sides non-empty and at most `max_len` tokens with the
  EOS / BOS the model adds (so `len(ids) + 1 <= max_len`; None = any length). Drops are
  counted in the log.

  Raises:
    ValueError: nothing is left.
  """
  src_len, tgt_len = tokens.src_lengths, tokens.tgt_lengths
  empty = (src_len == 0) | (tgt_len == 0)
  limit = np.iinfo(np.int64).max if max_len is None else max_len
  too_long = ~empty & ((src_len + 1 > limit) | (tgt_len + 1 > limit))
  keep = np.flatnonzero(~(empty | too_long))
  n = len(tokens)
  message = (f"{name}: kept {len(keep):,} of {n:,} pairs; dropped {int(empty.sum()):,} with an "
             f"empty side and {int(too_long.sum()):,} longer than max_len={max_len} tokens.")
  if len(keep) < n:
    log.warning(message)
  else:
    log.info(message)
  if not len(keep):
    longest = int(max(src_len.max(initial=0), tgt_len.max(initial=0)))
    raise ValueError(f"{message} No pair is left: check the corpus or raise data.max_len "
                     f"(the longest side has {longest} tokens without EOS).")
  return keep


def make_example(src_ids: np.ndarray, tgt_ids: np.ndarray, bos_id: int,
                 eos_id: int) -> dict[str, np.ndarray]:
  """One unpadded example: `src` = ids + EOS, `tgt_in` = BOS + ids, `tgt_out` = ids + EOS."""
  eos = np.array([eos_id], np.int32)
  tgt_ids = np.asarray(tgt_ids, np.int32)
  return {"src": np.concatenate([np.asarray(src_ids, np.int32), eos]),
          "tgt_in": np.concatenate([np.array([bos_id], np.int32), tgt_ids]),
          "tgt_out": np.concatenate([tgt_ids, eos])}


def packing_window(rows: int, seq_len: int, packing: bool, window: int = 0) -> int:
  """Examples packed together: `window`, or (0) enough for ~4 batches of `rows` x `seq_len` at a
  typical 4 examples per 128 tokens, and at least 2,048 (denser: the last rows of a window are
  part-filled)."""
  if window:
    return window
  if not packing:
    return rows
  return max(2048, 4 * rows * max(1, seq_len // 32))


def make_train_iterator(tokens: TokenizedSplit, indices: np.ndarray, *, bos_id: int, eos_id: int,
                        batch_size: int, seq_len: int, packing: bool = True, seed: int = 0,
                        process_index: int = 0, process_count: int = 1,
                        process_sharding: str = "shard", window: int = 0,
                        num_epochs: int | None = None, prefetch: int = 2,
                        num_workers: int = 0) -> TrainIterator:
  """Shuffled (reseeded every epoch), infinitely repeated, packed or padded batches.

  Args:
    tokens, indices: The examples (see `tokenize_split`, `filter_pairs`).
    bos_id, eos_id: Special ids of the tokenizer.
    batch_size: Global rows per batch; each process gets batch_size / process_count rows.
    seq_len: Row length L; every example must fit (`filter_pairs` with max_len <= seq_len).
    packing: First-fit pack several examples per row (else one example per row).
    seed: Shuffle seed.
    process_index, process_count: This process and how many share the batch.
    process_sharding: "shard": each process reads a disjoint 1/P of the examples;
      "rows": every process builds the same global batch and keeps rows
      [i * B / P, (i + 1) * B / P), so the global batch is the same for any P (the choice is
      validated by `DataConfig`; anything but "rows" shards).
    window: Consecutive examples first-fit packed together (0 = `packing_window`'s choice).
    num_epochs: None = repeat forever (training); N = stop after N epochs, the last batch
      completed with empty rows (for tests and benchmarks).
    prefetch: Windows prepared ahead (0 = none), by a background thread, or per worker.
    num_workers: Worker processes that pack and assemble windows (0 = this process).

  Raises:
    ValueError: an example longer than `seq_len`, a bad batch size or worker count, or no
      examples for this process.
  """
  local_rows = rows_per_process(batch_size, process_index, process_count, "data.batch_size")
  if num_workers < 0 or prefetch < 0 or window < 0:
    raise ValueError(f"num_workers={num_workers}, prefetch={prefetch} and window={window} must "
                     "be >= 0.")
  by_rows = process_sharding == "rows"
  indices, src_lengths, tgt_lengths = _process_examples(
      tokens, indices, seq_len, process_index, 1 if by_rows else process_count)
  pipeline_rows = batch_size if by_rows else local_rows
  window = packing_window(pipeline_rows, seq_len, packing, window)
  planner = WindowPlanner(indices, src_lengths, tgt_lengths, window=window, seed=seed)
  source = _WindowSource(planner, tokens, seq_len=seq_len, bos_id=bos_id, eos_id=eos_id,
                         packing_on=packing, num_epochs=num_epochs, num_workers=num_workers,
                         prefetch=prefetch)
  rows = (slice(process_index * local_rows, (process_index + 1) * local_rows) if by_rows
          else slice(None))
  signature = {"num_examples": int(len(indices)), "batch_size": batch_size, "seq_len": seq_len,
               "packing": bool(packing), "window": window, "seed": seed,
               "process_count": process_count, "process_sharding": process_sharding}
  return TrainIterator(planner, source, batch_rows=pipeline_rows, rows=rows,
                       num_epochs=num_epochs, signature=signature)


def _process_examples(tokens: TokenizedSplit, indices: np.ndarray, seq_len: int,
                      process_index: int, shards: int):
  """(indices, source lengths + EOS, target lengths + BOS) of this process's 1/`shards` of the
  examples; a ValueError for an example longer than a row, or for a process left with none."""
  indices = np.asarray(indices, np.int64)
  src_lengths = tokens.src_lengths[indices] + 1
  tgt_lengths = tokens.tgt_lengths[indices] + 1
  longest = int(max(src_lengths.max(initial=0), tgt_lengths.max(initial=0)))
  if longest > seq_len:
    raise ValueError(f"An example has {longest} tokens (with EOS/BOS) but rows hold data.seq_len="
                     f"{seq_len}; set data.max_len <= data.seq_len.")
  part = slice(process_index, None, shards) if shards > 1 else slice(None)
  if not len(indices[part]):
    raise ValueError(f"Process {process_index} of {shards} got no training examples; "
                     "use process_sharding='rows' for tiny corpora.")
  return indices[part], src_lengths[part], tgt_lengths[part]


def rows_per_process(batch_size: int, process_index: int, process_count: int,
                     key: str = "data.batch_size") -> int:
  """`batch_size / process_count`: the rows each process feeds of a global batch.

  Raises:
    ValueError: `batch_size` (the setting `key`) is not a positive multiple of `process_count`,
      or `process_index` is not in [0, process_count).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, process_count="
                     f"{process_count}).")
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"{key}={batch_size} must be a positive multiple of the process count "
                     f"{process_count}: each process feeds batch_size / process_count rows.")
  return batch_size // process_count


def _pad_example(example: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
  """One example alone in a row of `length`: segments 1, positions 0..n-1, zeros after."""
  row = {}
  for key, side in (("src", "src"), ("tgt_in", "tgt"), ("tgt_out", None)):
    ids = example[key]
    padded = np.zeros(length, np.int32)
    padded[:len(ids)] = ids
    row[key] = padded
    if side:
      segments = np.zeros(length, np.int32)
      segments[:len(ids)] = 1
      positions = np.zeros(length, np.int32)
      positions[:len(ids)] = np.arange(len(ids))
      row[f"{side}_segments"], row[f"{side}_positions"] = segments, positions
  return row


# ----------------------------------------------------------------------------- evaluation batches


def eval_length(tokens: TokenizedSplit, indices: np.ndarray, multiple: int = 8) -> int:
  """Row length for evaluation: the longest example (with EOS/BOS), rounded up to `multiple`."""
  longest = int(max(tokens.src_lengths[indices].max(), tokens.tgt_lengths[indices].max())) + 1
  return -(-longest // multiple) * multiple


def make_eval_batches(tokens: TokenizedSplit, indices: np.ndarray, *, bos_id: int, eos_id: int,
                      batch_size: int, seq_len: int | None = None, process_index: int = 0,
                      process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order, one per row, in fixed-shape `[batch_size / P, seq_len]`
  batches; the last global batch is completed with empty rows (all 0). Process i gets rows
  [i * B / P, (i + 1) * B / P) of each global batch.

  Args:
    seq_len: Row length; None = `eval_length(tokens, indices)`.

  Raises:
    ValueError: (at the call, not the first batch) `batch_size` is not a multiple of
      `process_count`.
  """
  local = rows_per_process(batch_size, process_index, process_count, "data.eval_batch_size")
  return _eval_batches(tokens, indices, bos_id, eos_id, batch_size, local,
                       seq_len or eval_length(tokens, indices), process_index)


def _eval_batches(tokens: TokenizedSplit, indices: np.ndarray, bos_id: int, eos_id: int,
                  batch_size: int, local: int, seq_len: int,
                  process_index: int) -> Iterator[dict[str, np.ndarray]]:
  """The batches of `make_eval_batches`, once its arguments are checked."""
  empty = {k: np.zeros(seq_len, np.int32) for k in BATCH_KEYS}
  for start in range(0, len(indices), batch_size):
    rows = []
    for j in range(start + process_index * local, start + (process_index + 1) * local):
      if j < len(indices):
        i = indices[j]
        rows.append(_pad_example(make_example(tokens.src(i), tokens.tgt(i), bos_id, eos_id),
                                 seq_len))
      else:
        rows.append(empty)
    yield {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}
