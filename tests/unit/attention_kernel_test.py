"""The fused TPU attention kernel equals the plain path (run here by the Pallas interpreter)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer_jax import (Transformer, TransformerConfig, aot, attention_kernel, sharding,
                             steps)
from transformer_jax.attention import (PADDING_ID, AttentionMask, attention_mask,
                                       make_attention_mask, plain_attention)

from tests.unit.aot_test import needs_libtpu


def _inputs(batch=3, length_q=16, length_k=24, heads=2, head_dim=8, seed=0):
  rng = np.random.RandomState(seed)
  q, k, v = (jnp.asarray(rng.randn(batch, n, heads, head_dim), jnp.float32)
             for n in (length_q, length_k, length_k))
  query_ids = jnp.asarray(rng.randint(0, 3, (batch, length_q)), jnp.int32)
  key_ids = jnp.asarray(rng.randint(0, 3, (batch, length_k)), jnp.int32)
  key_ids = key_ids.at[:, -3:].set(PADDING_ID)  # Padding keys.
  query_ids = query_ids.at[0, 0].set(7)         # A query that sees no key at all.
  return q, k, v, query_ids, key_ids


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_values_and_gradients_equal_plain_attention(causal):
  q, k, v, query_ids, key_ids = _inputs()
  mask = AttentionMask(query_ids, key_ids, causal=False).dense()
  if causal:
    mask = mask & jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
  weights = jnp.asarray(np.random.RandomState(1).randn(*q.shape), jnp.float32)
  fused = lambda q, k, v: jnp.sum(weights * attention_kernel.fused_attention(
      q, k, v, query_ids, key_ids, causal=causal))
  plain = lambda q, k, v: jnp.sum(weights * plain_attention(q, k, v, mask))
  value, grads = jax.value_and_grad(fused, argnums=(0, 1, 2))(q, k, v)
  value_ref, grads_ref = jax.value_and_grad(plain, argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(value, value_ref, rtol=1e-5)
  for grad, grad_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(grad, grad_ref, atol=2e-5)


def test_kernel_splits_the_batch_into_cells_and_keeps_bfloat16():
  q, k, v, query_ids, key_ids = _inputs(batch=6)
  mask = AttentionMask(query_ids, key_ids).dense()
  small = attention_kernel.VMEM_BYTES
  try:  # Force one row per grid cell: cells must tile the batch exactly.
    attention_kernel.VMEM_BYTES = 1
    out = attention_kernel.fused_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)),
                                           query_ids, key_ids)
  finally:
    attention_kernel.VMEM_BYTES = small
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), plain_attention(q, k, v, mask), atol=3e-2)


def test_kernel_refuses_shapes_it_does_not_take_in_one_line():
  q, k, v, query_ids, key_ids = _inputs(length_q=12)
  with pytest.raises(ValueError, match="multiples of 8 up to 256.*attention_impl='xla'"):
    attention_kernel.fused_attention(q, k, v, query_ids, key_ids)


def test_ids_mask_equals_the_composed_dense_mask():
  tokens = np.array([[3, 4, 5, 0], [6, 7, 0, 0]], np.int32)
  segments = np.array([[1, 1, 2, 0], [1, 1, 0, 0]], np.int32)
  for kwargs in ({}, {"causal": True},
                 {"query_segments": segments, "key_segments": segments, "causal": True}):
    ids = attention_mask(tokens, tokens, **kwargs)
    dense = make_attention_mask(tokens, tokens, **kwargs)
    np.testing.assert_array_equal(ids.dense(), dense)
    assert not np.asarray(ids.dense())[:, :, :, 3].any()  # Padding keys: never visible.


def _model_and_batch(attention_impl, **fields):
  config = TransformerConfig.tiny(32).replace(attention_impl=attention_impl, **fields)
  rng = np.random.RandomState(0)
  src = rng.randint(3, 32, (4, 16)).astype(np.int32)
  tgt = rng.randint(3, 32, (4, 8)).astype(np.int32)
  src[1, 10:], tgt[1, 5:] = 0, 0  # Padding.
  src_segments = np.where(src > 0, 1 + (np.arange(16) >= 8), 0).astype(np.int32)
  tgt_segments = np.where(tgt > 0, 1 + (np.arange(8) >= 4), 0).astype(np.int32)
  batch = dict(src=src, tgt_in=tgt, src_segments=src_segments, tgt_segments=tgt_segments)
  return Transformer(config), batch


@pytest.mark.slow
def test_jit_step_with_the_kernel_per_device_equals_the_xla_path_on_one_device():
  """A jit step of the model with the kernel over 4 devices (it traces under its mesh, so the
  kernel runs under shard_map on each device's rows) equals XLA's attention on one: the loss,
  and every parameter after an SGD step of size 1 (so every gradient). On TPU, without the
  mesh, Mosaic refuses to be partitioned: aot_test's jit compile for v5e-8 catches that."""
  results = [_jit_step(impl, devices) for impl, devices in (("xla", 1), ("pallas", 4))]
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               results[0][1], results[1][1])


def _jit_step(attention_impl: str, num_devices: int):
  """The loss and the parameters after one jit step (SGD, rate 1) over `num_devices` devices."""
  model, batch = _model_and_batch(attention_impl)
  batch["tgt_out"] = np.roll(batch["tgt_in"], -1, axis=1)
  batch["src_positions"] = np.broadcast_to(np.arange(16), (4, 16)).astype(np.int32)
  batch["tgt_positions"] = np.broadcast_to(np.arange(8), (4, 8)).astype(np.int32)
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  state = steps.init_state(jax.random.key(0), model=model, tx=optax.sgd(1.0))
  shardings = sharding.state_shardings(jax.eval_shape(lambda: state), mesh)
  train_step, _ = steps.compile_steps("jit", model=model, mesh=mesh, state_shardings=shardings,
                                      dropout_key=jax.random.key(1), label_smoothing=0.0,
                                      schedule=lambda step: 1.0)
  state, metrics = train_step(jax.device_put(state, shardings), sharding.global_batch(batch, mesh))
  return float(metrics["train_loss"]), jax.device_get(state.params)


def _pallas_calls(fn, *args):
  """The pallas_call equations of `fn`'s jaxpr (nested jaxprs included), in trace order."""
  found = []
  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "pallas_call":
        found.append(eqn)
        continue
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else [param]:
          sub = getattr(sub, "jaxpr", sub)
          if hasattr(sub, "eqns"):
            walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def test_declared_cost_counts_every_matmul_at_the_padded_head_dim_and_the_grid_is_parallel():
  """Forward: scores and PV (2 matmuls per head); backward: scores again, dV, dP, dQ, dK (5),
  each [T, S] x head dim padded to 128 lanes. A hand count in the kernel (the old `matmuls=4`)
  fails here."""
  batch, length_q, length_k, heads, head_dim = 2, 128, 256, 2, 8  # Traced only, never run.
  q, k, v, query_ids, key_ids = _inputs(batch, length_q, length_k, heads, head_dim)
  loss = lambda q, k, v: jnp.sum(attention_kernel.fused_attention(q, k, v, query_ids, key_ids))
  calls = _pallas_calls(jax.grad(loss, argnums=(0, 1, 2)), q, k, v)
  declared = {eqn.params["name"]: eqn.params["cost_estimate"] for eqn in calls}
  assert sorted(declared) == ["backward_kernel", "forward_kernel"]
  one_matmul = 2 * batch * heads * length_q * length_k * attention_kernel.LANES
  assert declared["forward_kernel"].flops == 2 * one_matmul
  assert declared["backward_kernel"].flops == 5 * one_matmul
  scores = batch * heads * length_q * length_k
  # One exp per score and one reciprocal per query row, each pass.
  assert declared["forward_kernel"].transcendentals == scores + batch * heads * length_q
  # The query ids [B, T, 1] are padded to 128 lanes in HBM; the key ids [B, 1, S] are not.
  ids_bytes = batch * length_q * 128 * 4 + batch * length_k * 4
  blocks = 4 * batch * heads * head_dim * (2 * length_q + 2 * length_k)  # q, out, k, v (f32).
  assert declared["forward_kernel"].bytes_accessed == ids_bytes + blocks
  for eqn in calls:
    assert tuple(eqn.params["compiler_params"].dimension_semantics) == (
        "parallel",)


@needs_libtpu
def test_kernel_compiles_for_tpu_and_the_compiler_prices_seven_matmuls_per_head():
  from transformer_jax import topology  # pylint: disable=import-outside-toplevel
  device = topology.devices(topology.parse("v5e-8"))[0]
  one = jax.sharding.SingleDeviceSharding(device)
  spec = lambda shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype, sharding=one)
  loss = lambda q, k, v, ids: jnp.sum(attention_kernel.fused_attention(
      q, k, v, ids, ids, causal=True).astype(jnp.float32))
  batch, length, heads, head_dim = 32, 128, 8, 64
  shape = (batch, length, heads, head_dim)
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(
      spec(shape), spec(shape), spec(shape), spec(shape[:2], jnp.int32)).compile()
  hlo = compiled.as_text()
  assert hlo.count('custom_call_target="tpu_custom_call"') == 2
  assert f"s32[{batch},{length},1]{{2,1,0:T(8,128)" in hlo  # Query ids lane-padded, as declared.
  cost = aot._cost(compiled, 0.0)  # pylint: disable=protected-access  # Offsets corrected.
  # Forward 2 + backward 5 [128, 128, 128] matmuls per head and row (head dim padded to the
  # lanes); the elementwise work outside the kernels is the rest (< 2%).
  matmuls = 7 * 2 * batch * heads * length * length * 128
  assert matmuls <= cost.flops <= 1.02 * matmuls
  assert 0 < cost.seconds < 0.01
