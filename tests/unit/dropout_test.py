"""Dropout keyed by the global batch row: the same masks in one array or split over devices."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

from transformer_jax import dropout, sharding


def test_unrolled_threefry_equals_jax_threefry():
  key = jnp.asarray([0x13198A2E, 0x03707344], jnp.uint32)
  x0 = jnp.arange(1000, dtype=jnp.uint32) * jnp.uint32(7919)
  x1 = jnp.arange(1000, dtype=jnp.uint32) + jnp.uint32(2**31)
  expected = threefry2x32_p.bind(key[0], key[1], x0, x1)
  got = jax.jit(dropout.threefry2x32)((key[0], key[1]), x0, x1)
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)


def test_dropout_masks_follow_the_global_row_in_both_modes():
  mesh = sharding.create_mesh()
  x = jnp.ones((16, 5, 7))
  key = jax.random.key(3)
  whole = dropout.dropout(x, 0.25, key)
  per_device = jax.jit(jax.shard_map(lambda rows: dropout.dropout(rows, 0.25, key), mesh=mesh,
                                     in_specs=jax.sharding.PartitionSpec(sharding.BATCH_AXES),
                                     out_specs=jax.sharding.PartitionSpec(sharding.BATCH_AXES)))(
      jax.device_put(x, sharding.batch_sharding(mesh)))
  np.testing.assert_array_equal(whole, per_device)
  assert not np.array_equal(whole[0], whole[1])  # Rows get their own masks.
  kept = np.asarray(dropout.keep_mask(key, (256, 1024), 0.9))
  assert abs(kept.mean() - 0.9) < 0.005
  np.testing.assert_allclose(np.unique(np.asarray(whole)), [0.0, 1 / 0.75], rtol=1e-6)
  assert dropout.dropout(x, 0.25, None) is x
