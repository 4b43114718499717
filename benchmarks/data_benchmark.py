"""Data-pipeline throughput on Multi30k: pairs/s, tokens/s and packing efficiency.

  python -m benchmarks.data_benchmark [--data_dir ../shared/data/multi30k] [--model_step]

Stages timed: reading the corpus, training the tokenizer, tokenizing (first run, then from the
cache), and producing training batches packed and unpacked. With --model_step it also times one
training step (forward, backward, Adam; `workload.build_training`, as train.py builds it) of
Transformer-base on one of these batches, and prints how many times faster the pipeline produces
batches than that step consumes them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks import harness, workload
from transformer_jax.data import (Tokenizer, filter_pairs, load_local_split, make_train_iterator,
                                  pairs_to_dataset, tokenize_split)


def parse_args(argv=None):
  """The command line, checked (unknown names are refused)."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--data_dir",
                 default=os.path.join(harness.ROOT, "..", "shared", "data", "multi30k"))
  p.add_argument("--file_pattern", default="{split}.{lang}")
  p.add_argument("--vocab_size", type=int, default=8000)
  p.add_argument("--batch_size", type=int, default=64, help="Rows per batch.")
  p.add_argument("--seq_len", type=int, default=128, help="Tokens per row.")
  p.add_argument("--num_batches", type=int, default=300, help="Batches timed per mode.")
  p.add_argument("--model_step", action="store_true",
                 help="Also time a Transformer-base train step on a batch of this shape.")
  return p.parse_args(argv)


def time_batches(it, num_batches: int) -> dict[str, float]:
  """Steady-state throughput of `num_batches` batches of a training iterator."""
  next(it)  # The first batch fills the packing bins; time the steady state.
  pairs = tokens = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    b = next(it)
    pairs += int(sum(seg.max() for seg in b["src_segments"]))
    tokens += int((b["src_segments"] > 0).sum() + (b["tgt_segments"] > 0).sum())
  seconds = time.perf_counter() - start
  slots = num_batches * 2 * b["src"].size
  return {"batches/s": num_batches / seconds, "pairs/s": pairs / seconds,
          "tokens/s": tokens / seconds, "efficiency": tokens / slots,
          "pairs/row": pairs / (num_batches * len(b["src"]))}


def model_step_seconds(batch: dict[str, np.ndarray], vocab_size: int) -> float:
  """Median seconds of 3 Transformer-base train steps on one pipeline `batch`.

  The step train.py runs (`workload.build_training`: label-smoothed loss, dropout, Adam at a
  constant rate), on one device.
  """
  rows, length = batch["src"].shape
  w = workload.make_workload("base", vocab=vocab_size, batch=rows, length=length)
  step = workload.build_workload(w, num_devices=1).compile(batch)
  step.run()  # The first call waits for the compiled program to load.
  times = []
  for _ in range(3):
    start = time.perf_counter()
    step.run()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv=None):
  """Runs the command (see the module docstring)."""
  args = parse_args(argv)
  rows = []
  t = time.perf_counter()
  train = load_local_split(args.data_dir, "train", source_lang="en", target_lang="de",
                           file_pattern=args.file_pattern)
  rows.append(("read train split", time.perf_counter() - t, f"{len(train):,} pairs"))
  with tempfile.TemporaryDirectory() as work:
    t = time.perf_counter()
    tok = Tokenizer.train([s for p in train for s in p], args.vocab_size,
                          os.path.join(work, "tokenizer.model"))
    rows.append(("train tokenizer", time.perf_counter() - t, f"{tok.vocab_size:,} pieces"))
    for what in ("tokenize (first run)", "tokenize (cached)"):
      t = time.perf_counter()
      tokens = tokenize_split(pairs_to_dataset(train), tok, os.path.join(work, "cache"), "train")
      seconds = time.perf_counter() - t
      rows.append((what, seconds, f"{len(train) / seconds:,.0f} pairs/s"))
  keep = filter_pairs(tokens, args.seq_len, "train")

  print(f"\nMulti30k en-de from {os.path.normpath(args.data_dir)}; {os.cpu_count()} CPU cores\n")
  print(f"{'stage':<24}{'seconds':>9}  note")
  for name, seconds, note in rows:
    print(f"{name:<24}{seconds:>9.2f}  {note}")

  print(f"\nTraining batches of {args.batch_size} x {args.seq_len} ({args.num_batches} timed):")
  header = f"{'mode':<10}{'batches/s':>11}{'pairs/s':>11}{'tokens/s':>12}{'efficiency':>12}" \
           f"{'pairs/row':>11}"
  print(header)
  results = {}
  for packing in (True, False):
    it = make_train_iterator(tokens, keep, bos_id=tok.bos_id, eos_id=tok.eos_id,
                             batch_size=args.batch_size, seq_len=args.seq_len, packing=packing)
    r = results[packing] = time_batches(it, args.num_batches)
    print(f"{'packed' if packing else 'unpacked':<10}{r['batches/s']:>11.1f}{r['pairs/s']:>11,.0f}"
          f"{r['tokens/s']:>12,.0f}{r['efficiency']:>12.1%}{r['pairs/row']:>11.2f}")

  if args.model_step:
    batch = next(make_train_iterator(tokens, keep, bos_id=tok.bos_id, eos_id=tok.eos_id,
                                     batch_size=args.batch_size, seq_len=args.seq_len))
    seconds = model_step_seconds(batch, tok.vocab_size)
    ratio = results[True]["batches/s"] * seconds
    print(f"\nTransformer-base train step on one packed {args.batch_size} x {args.seq_len} batch: "
          f"{seconds:.2f} s; the pipeline produces batches {ratio:,.0f}x faster.")


if __name__ == "__main__":
  main()
