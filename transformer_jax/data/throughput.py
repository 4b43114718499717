"""How fast a training iterator makes batches: real tokens, slots and density per second."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np


def measure(batches: Iterator[dict[str, np.ndarray]], seconds: float) -> dict[str, float]:
  """Times `batches` for about `seconds` after a first batch (which starts workers and fills
  windows). Real tokens are the source and target tokens of the pairs; slots are rows x length
  x 2, what a training step consumes, padding included."""
  first = next(batches)
  rows, length = first["src"].shape
  count = real = 0
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    batch = next(batches)
    count += 1
    real += int(np.count_nonzero(batch["src_segments"]) + np.count_nonzero(batch["tgt_segments"]))
  elapsed = time.perf_counter() - start
  slots = count * rows * length * 2
  return {"batches": count, "seconds": elapsed, "tokens_per_s": real / elapsed,
          "slots_per_s": slots / elapsed, "density": real / max(slots, 1)}
