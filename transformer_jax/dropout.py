"""Dropout whose mask depends on the global batch row, not on how the batch is split.

Each element's keep decision is a 32-bit draw from Threefry-2x32 (20 rounds, Salmon et al.,
2011) keyed by the dropout key, of the counter (global row, index within the row). Under
`jax.jit` the array is the global batch (row offset 0) and XLA partitions the counters like any
other iota; under a `jax.shard_map` over the `data` axis each device holds rows
`[axis_index * rows, (axis_index + 1) * rows)` of it and offsets its counters accordingly. The
masks, and so training, are therefore the same for any device count and in both parallel modes
(`parallelism="jit"` or `"shard_map"`).

Why not `jax.random.bernoulli`: its bits depend on the array's global shape, which a per-device
shard_map function does not see; and on CPU its Threefry runs as a rolled loop over the whole
array (13% of the Multi30k recipe's step); this one is unrolled into one fused elementwise
loop, several times faster (benchmarks/profile_step.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from transformer_jax.sharding import BATCH_AXES


def data_shard_index() -> jax.Array | None:
  """This device's batch shard (over `slice` and `data`) inside a shard_map over the batch
  axes; None outside one."""
  try:
    return jax.lax.axis_index(BATCH_AXES)
  except NameError:  # No batch axis is bound: arrays hold the whole batch.
    return None


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(key: tuple[jax.Array, jax.Array], x0: jax.Array,
                 x1: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The Threefry-2x32 block cipher (20 rounds) of the counter pair (x0, x1), unrolled.

  Bit-identical to `jax.extend.random.threefry_2x32`, as straight-line elementwise code.
  """
  ks = (key[0], key[1], key[0] ^ key[1] ^ jnp.uint32(0x1BD11BDA))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for group in range(5):
    for r in _ROTATIONS[group % 2]:
      x0 = x0 + x1
      x1 = (x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))
      x1 = x0 ^ x1
    x0 = x0 + ks[(group + 1) % 3]
    x1 = x1 + ks[(group + 2) % 3] + jnp.uint32(group + 1)
  return x0, x1


def keep_mask(rng: jax.Array, shape: tuple[int, ...], keep_prob: float) -> jax.Array:
  """Bernoulli(keep_prob) booleans of `shape`, keyed by (global row, index within the row)."""
  rows, per_row = shape[0], math.prod(shape[1:])
  words = jax.random.bits(rng, (2,), jnp.uint32)  # Any key type or PRNG implementation.
  key = (words[0], words[1])
  row = jax.lax.broadcasted_iota(jnp.uint32, (rows, per_row), 0)
  shard = data_shard_index()
  if shard is not None:  # This device's rows of the global batch.
    row = row + shard.astype(jnp.uint32) * rows
    key = tuple(jax.lax.pcast(k, BATCH_AXES, to="varying") for k in key)
  index = jax.lax.broadcasted_iota(jnp.uint32, (rows, per_row), 1)
  bits, _ = threefry2x32(key, row, index)  # One 32-bit draw per element (the cheapest layout).
  threshold = jnp.uint32(min(int(keep_prob * 2.0**32), 2**32 - 1))
  return (bits < threshold).reshape(shape)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout: zeroes each element with probability `rate`, scales the rest by
  1 / (1 - rate); the identity when `rng` is None (deterministic) or `rate` is 0."""
  if rng is None or rate == 0.0:
    return x
  keep = keep_mask(rng, x.shape, 1.0 - rate)
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))
