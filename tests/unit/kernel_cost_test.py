"""kernel_cost counts a kernel body's dots, transcendentals and vector work from its jaxpr."""

import jax
import jax.numpy as jnp
import pytest

from transformer_jax import kernel_cost


def _softmax_matmul(x_ref, w_ref, o_ref):
  x = x_ref[...]                                       # [4, 8]
  exp = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
  probs = exp * (1.0 / jnp.sum(exp, axis=-1, keepdims=True))
  o_ref[...] = probs @ w_ref[...]                      # [4, 8] @ [8, 16]


def test_count_sums_dots_transcendentals_and_vector_ops():
  work = kernel_cost.count(_softmax_matmul, [jax.ShapeDtypeStruct((4, 8), jnp.float32),
                                             jax.ShapeDtypeStruct((8, 16), jnp.float32)],
                           [jax.ShapeDtypeStruct((4, 16), jnp.float32)])
  assert work.flops == 2 * 4 * 8 * 16
  assert work.transcendentals == 4 * 8 + 4        # exp per element, one reciprocal per row.
  # max and sum read 32 each; subtract and multiply write 32 each.
  assert work.vector_ops == 4 * 32


def test_count_refuses_loops_it_would_count_once():
  def looped(x_ref, o_ref):
    o_ref[...] = jax.lax.fori_loop(0, 3, lambda i, x: x * 2.0, x_ref[...])
  with pytest.raises(ValueError, match="loops or branches"):
    kernel_cost.count(looped, [jnp.ones((8, 128))], [jnp.ones((8, 128))])


def test_tiled_bytes_pads_lanes_and_sublanes_as_the_tpu_lays_arrays_out():
  assert kernel_cost.tiled_bytes((2, 128, 1), jnp.int32) == 2 * 128 * 128 * 4   # T(8,128)
  assert kernel_cost.tiled_bytes((2, 1, 128), jnp.int32) == 2 * 128 * 4         # T(1,128)
  assert kernel_cost.tiled_bytes((2, 1, 128), jnp.int32, single_row_tiles=False) == 2 * 8 * 128 * 4
  assert kernel_cost.tiled_bytes((3, 100), jnp.bfloat16) == 16 * 128 * 2         # (16, 128)
