"""The train / eval steps in both parallel modes (jit and shard_map), fused and plain loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import schedules, sharding
from transformer_jax import steps as steps_lib
from transformer_jax.config import TransformerConfig
from transformer_jax.experiment_config import OptimConfig
from transformer_jax.model import Transformer


# ----------------------------------------------------------------------------- train step


def _optim(**overrides):
  return OptimConfig(**{"schedule": "rsqrt", "warmup_steps": 2, "peak_learning_rate": 1e-2,
                        **overrides})


def _batch(batch_size=8, length=6, seed=0):
  rng = np.random.default_rng(seed)
  src = rng.integers(3, 40, size=(batch_size, length)).astype(np.int32)
  tgt = rng.integers(3, 40, size=(batch_size, length)).astype(np.int32)
  src[::2, -2:] = 0
  tgt[::3, -3:] = 0
  tgt_in = np.concatenate([np.ones((batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
  tgt_in[tgt == 0] = 0
  return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt}


def _one_step(devices, optim, steps=1, fsdp=False, parallelism="jit", evaluate=False,
              mesh=None, **overrides):
  config = TransformerConfig.tiny(40, attention_dropout_rate=0.1, **overrides)
  model = Transformer(config)
  tx, schedule = schedules.create_optimizer(optim, d_model=32, num_train_steps=10)
  mesh = mesh or sharding.create_mesh(devices)
  init = functools.partial(steps_lib.init_state, model=model, tx=tx)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.state_shardings(abstract, mesh, fsdp=fsdp)
  state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  step_fn, eval_fn = steps_lib.compile_steps(
      parallelism, model=model, mesh=mesh, state_shardings=shardings,
      dropout_key=jax.random.key(1), label_smoothing=0.1, schedule=schedule)
  for i in range(steps):
    state, metrics = step_fn(state, sharding.global_batch(_batch(seed=i), mesh))
  if evaluate:
    metrics["eval"] = eval_fn(state.params, sharding.global_batch(_batch(seed=99), mesh))
  return state, metrics


@pytest.mark.slow
def test_multi_device_step_equals_single_device_step():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  # Adam's first updates are ~lr * sign(g); eps 1e-3 keeps near-zero gradients (whose sign
  # is float rounding) from turning summation-order noise into lr-sized differences.
  one, m1 = _one_step(jax.devices()[:1], _optim(eps=1e-3), steps=2)
  eight, m8 = _one_step(jax.devices(), _optim(eps=1e-3), steps=2)
  leaf = jax.tree.leaves(eight.params)[0]
  assert len(leaf.sharding.device_set) == 8
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  np.testing.assert_allclose(m1["train_loss"], m8["train_loss"], rtol=1e-5)
  assert int(eight.step) == 2


def _two_slices():
  """The 8 CPU devices as 2 slices of 4 (TPU multi-slice: `slice` over DCN, `data` in ICI)."""
  return jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 4), sharding.BATCH_AXES)


@pytest.mark.slow
def test_two_slice_step_equals_single_device_step():
  # shard_map with FSDP: every collective over both axes (the reduce-scatter within a slice,
  # then the sum over slices); the jit step's per-device loss uses the same batch axes.
  one, m1 = _one_step(jax.devices()[:1], _optim(eps=1e-3), steps=2, d_ff=512)
  two, m2 = _one_step(None, _optim(eps=1e-3), steps=2, d_ff=512, mesh=_two_slices(),
                      parallelism="shard_map", fsdp=True)
  # Sharded within a slice (4 ways), replicated across the 2 slices.
  kernel = two.params["encoder"]["layers_0"]["feed_forward"]["wi"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "data")
  assert kernel.addressable_shards[0].data.shape == (32, 512 // 4)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  np.testing.assert_allclose(m1["train_loss"], m2["train_loss"], rtol=1e-5)


@pytest.mark.slow
def test_jit_step_never_all_gathers_activations():
  # Parameters replicated: any all-gather would move hidden states. Written for the global
  # batch, the fused loss's chunk loop all-gathered each chunk's hidden states on every device
  # (9 all-gathers here without `mesh`).
  model = Transformer(TransformerConfig.tiny(40))
  tx, schedule = schedules.create_optimizer(_optim(), d_model=32, num_train_steps=10)
  mesh = sharding.create_mesh()
  init = functools.partial(steps_lib.init_state, model=model, tx=tx)
  state = jax.eval_shape(init, jax.random.key(0))
  step = jax.jit(functools.partial(
      steps_lib.train_step, model=model, dropout_key=jax.random.key(1), label_smoothing=0.1,
      schedule=schedule, chunk_tokens=16, mesh=mesh),
      in_shardings=(sharding.state_shardings(state, mesh), sharding.batch_sharding(mesh)))
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batch())
  hlo = step.lower(state, batch).compile().as_text()
  assert "all-gather" not in hlo
  assert "all-reduce" in hlo  # The gradients' sum over devices.


@pytest.mark.slow
def test_fused_loss_step_equals_plain_loss_step():
  model = Transformer(TransformerConfig.tiny(40, logits_bias=True))
  tx, schedule = schedules.create_optimizer(_optim(eps=1e-3), d_model=32, num_train_steps=10)
  state = steps_lib.init_state(jax.random.key(0), model=model, tx=tx)
  out = {}
  for fused in (True, False):
    step = jax.jit(functools.partial(steps_lib.train_step, model=model,
                                     dropout_key=jax.random.key(1), label_smoothing=0.1,
                                     schedule=schedule, fused_loss=fused))
    out[fused] = step(state, _batch())
  (fused_state, m1), (plain_state, m2) = out[True], out[False]
  for name in ("train_loss", "train_nll", "train_accuracy", "grad_norm", "num_tokens"):
    np.testing.assert_allclose(m1[name], m2[name], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(fused_state.params), jax.tree.leaves(plain_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.slow
def test_gradient_accumulation_and_clipping_run():
  state, metrics = _one_step(jax.devices()[:1], _optim(grad_accum_steps=2, grad_clip_norm=0.5),
                             steps=2)
  assert int(state.step) == 2 and np.isfinite(metrics["train_loss"])


# ----------------------------------------------------------------------------- shard_map


@pytest.mark.parametrize("fsdp, optim", [(False, {}), (False, {"grad_accum_steps": 2}),
                                         (True, {"grad_clip_norm": 0.5})],
                         ids=["replicated", "accumulation", "fsdp-clipping"])
@pytest.mark.slow
def test_shard_map_step_equals_jit_step(fsdp, optim):
  # The reference is always the replicated jit step, so the FSDP case also checks that FSDP
  # changes nothing. Dropout and attention dropout are on: the masks follow the global row
  # (dropout.py), so both modes see the same ones. d_ff 512 makes the FFN kernels big enough
  # to be sharded.
  kwargs = dict(steps=2, d_ff=512, evaluate=True)
  jit_state, m1 = _one_step(jax.devices(), _optim(eps=1e-3, **optim), **kwargs)
  sm_state, m2 = _one_step(jax.devices(), _optim(eps=1e-3, **optim), parallelism="shard_map",
                           fsdp=fsdp, **kwargs)
  if fsdp:
    mesh = sharding.create_mesh()
    assert sharding.fsdp_spec((40000, 512), mesh) == jax.sharding.PartitionSpec("data", None)
    assert sharding.fsdp_spec((512,), mesh) == jax.sharding.PartitionSpec()
    kernel = sm_state.params["encoder"]["layers_0"]["feed_forward"]["wi"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "data")
    assert kernel.addressable_shards[0].data.shape == (32, 512 // 8)
    mu = sm_state.opt_state[1][0].mu["encoder"]["layers_0"]["feed_forward"]["wi"]["kernel"]
    assert mu.sharding.spec == jax.sharding.PartitionSpec(None, "data")  # Optimizer state too.
  for a, b in zip(jax.tree.leaves(jit_state.params), jax.tree.leaves(sm_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  for name in ("train_loss", "grad_norm", "num_tokens"):
    np.testing.assert_allclose(m1[name], m2[name], rtol=1e-5)
  for name, value in m1["eval"].items():
    np.testing.assert_allclose(value, m2["eval"][name], rtol=1e-5)


def test_shard_map_step_is_written_with_explicit_collectives():
  model = Transformer(TransformerConfig.tiny(40, d_ff=512))
  mesh = sharding.create_mesh()
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32),
                                             jnp.ones((1, 8), jnp.int32))["params"])
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batch())
  for fsdp, expected in ((False, ["psum"]), (True, ["all_gather", "psum", "reduce_scatter"])):
    specs = jax.tree.map(lambda x: sharding.fsdp_spec(x.shape, mesh) if fsdp
                         else jax.sharding.PartitionSpec(), params)
    jaxpr = str(jax.make_jaxpr(functools.partial(
        steps_lib.shard_map_grads, model=model, label_smoothing=0.1, mesh=mesh,
        param_specs=specs))(params, batch, jax.random.key(1)))
    assert "shard_map" in jaxpr
    for primitive in expected:
      assert primitive in jaxpr, primitive
