"""Schedules, the loss, the sharded train step, checkpoints and configs."""

import functools
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import schedules, sharding, train_lib
from transformer_jax.experiment_config import base_config
from transformer_jax.model import Transformer
from transformer_jax.config import TransformerConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- schedules


def test_paper_schedule_values():
  f = schedules.paper_schedule(d_model=512, warmup_steps=4000)
  assert float(f(0)) == 0.0
  np.testing.assert_allclose(f(1), 512**-0.5 * 4000**-1.5, rtol=1e-6)
  peak = 512**-0.5 * 4000**-0.5
  np.testing.assert_allclose(f(4000), peak, rtol=1e-6)  # End of warmup: the maximum.
  np.testing.assert_allclose(f(8000), peak / np.sqrt(2), rtol=1e-6)  # Inverse square root decay.
  assert f(2000) < f(4000) > f(4001)


def test_rsqrt_and_cosine_schedule_values():
  f = schedules.rsqrt_schedule(peak=1e-3, warmup_steps=100)
  np.testing.assert_allclose([f(0), f(1), f(50), f(100), f(400)],
                             [0.0, 1e-5, 5e-4, 1e-3, 5e-4], rtol=1e-6)
  g = schedules.cosine_schedule(peak=1e-3, warmup_steps=100, total_steps=1100)
  np.testing.assert_allclose([g(0), g(50), g(100), g(600), g(1100)],
                             [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
  assert float(schedules.optimizer_schedule(f)(0)) == pytest.approx(1e-5)  # Update 1 = step 1.
  with pytest.raises(ValueError, match="schedule"):
    schedules.create_schedule("linear", d_model=8, warmup_steps=1, peak_learning_rate=1.0,
                              total_steps=10)


# ----------------------------------------------------------------------------- loss


def test_loss_ignores_padding_and_matches_one_hot_smoothing():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  targets = jnp.asarray([[3, 4, 5, 0, 0], [1, 2, 3, 4, 6]])
  weights = targets != 0
  eps = 0.1
  sums = train_lib.cross_entropy_loss(logits, targets, weights, eps)
  logp = jax.nn.log_softmax(logits)
  soft = (1 - eps) * jax.nn.one_hot(targets, 7) + eps / 7
  expected = -(soft * logp).sum(-1)
  np.testing.assert_allclose(sums["loss_sum"], (expected * weights).sum(), rtol=1e-5)
  assert float(sums["num_tokens"]) == 8
  # Changing logits at padded positions changes nothing.
  other = logits.at[0, 3:].set(100.0)
  np.testing.assert_allclose(train_lib.cross_entropy_loss(other, targets, weights, eps)["loss_sum"],
                             sums["loss_sum"], rtol=1e-6)


def test_loss_nll_and_accuracy_match_the_plain_formulas():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(4, 6, 11)) * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(1, 11, size=(4, 6)))
  targets = targets.at[:, 0].set(jnp.argmax(logits[:, 0], axis=-1))  # Some surely correct.
  weights = (targets != 0).at[1, 4:].set(False)
  sums = train_lib.cross_entropy_loss(logits, targets, weights, 0.1)
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  correct = jnp.argmax(logits, axis=-1) == targets
  np.testing.assert_allclose(sums["nll_sum"], (nll * weights).sum(), rtol=1e-5)
  assert float(sums["correct_sum"]) == float((correct & weights).sum()) >= 4
  # Large logits stay finite (the max is subtracted before exp).
  big = train_lib.cross_entropy_loss(logits * 1e4, targets, weights, 0.1)
  assert all(np.isfinite(float(v)) for v in big.values())


# ----------------------------------------------------------------------------- train step


def _optim(**overrides):
  o = base_config().optim
  o.update(schedule="rsqrt", warmup_steps=2, peak_learning_rate=1e-2, **overrides)
  return o


def _batch(batch_size=8, length=6, seed=0):
  rng = np.random.default_rng(seed)
  src = rng.integers(3, 40, size=(batch_size, length)).astype(np.int32)
  tgt = rng.integers(3, 40, size=(batch_size, length)).astype(np.int32)
  src[::2, -2:] = 0
  tgt[::3, -3:] = 0
  tgt_in = np.concatenate([np.ones((batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
  tgt_in[tgt == 0] = 0
  return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt}


def _one_step(devices, optim, steps=1, fsdp=False, **overrides):
  config = TransformerConfig.tiny(40, attention_dropout_rate=0.1, **overrides)
  model = Transformer(config)
  tx, schedule = train_lib.create_optimizer(optim, d_model=32, num_train_steps=10)
  mesh = sharding.create_mesh(devices)
  init = functools.partial(train_lib.init_state, model=model, tx=tx)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.state_shardings(abstract, mesh, fsdp=fsdp)
  state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  step_fn = jax.jit(functools.partial(train_lib.train_step, model=model,
                                      dropout_key=jax.random.key(1), label_smoothing=0.1,
                                      schedule=schedule),
                    in_shardings=(shardings, sharding.batch_sharding(mesh)),
                    out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  for i in range(steps):
    state, metrics = step_fn(state, sharding.global_batch(_batch(seed=i), mesh))
  return state, metrics


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


def test_accumulated_steps_report_their_updates_learning_rate():
  _, schedule = train_lib.create_optimizer(_optim(grad_accum_steps=2), d_model=32,
                                           num_train_steps=10)
  plain = schedules.rsqrt_schedule(peak=1e-2, warmup_steps=2)
  np.testing.assert_allclose([schedule(s) for s in (1, 2, 3, 4, 5)],
                             [plain(1), plain(1), plain(2), plain(2), plain(3)])


def test_gradient_accumulation_and_clipping_run():
  state, metrics = _one_step(jax.devices()[:1], _optim(grad_accum_steps=2, grad_clip_norm=0.5),
                             steps=2)
  assert int(state.step) == 2 and np.isfinite(metrics["train_loss"])


def test_fsdp_shards_large_parameters_and_matches_replicated():
  mesh = sharding.create_mesh()
  assert sharding.fsdp_spec((40000, 512), mesh) == jax.sharding.PartitionSpec("data", None)
  assert sharding.fsdp_spec((512,), mesh) == jax.sharding.PartitionSpec()
  # d_ff 512: the feed-forward kernels (32 x 512) reach the size threshold and are sharded.
  replicated, m1 = _one_step(jax.devices(), _optim(eps=1e-3), steps=2, d_ff=512)
  sharded, m2 = _one_step(jax.devices(), _optim(eps=1e-3), steps=2, fsdp=True, d_ff=512)
  kernel = sharded.params["encoder"]["layers_0"]["feed_forward"]["wi"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "data")
  assert len(kernel.addressable_shards[0].data.shape) == 2
  assert kernel.addressable_shards[0].data.shape[1] == 512 // 8
  mu = sharded.opt_state[0][0].mu["encoder"]["layers_0"]["feed_forward"]["wi"]["kernel"]
  assert mu.sharding.spec == jax.sharding.PartitionSpec(None, "data")  # Optimizer state too.
  for a, b in zip(jax.tree.leaves(replicated.params), jax.tree.leaves(sharded.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  np.testing.assert_allclose(m1["train_loss"], m2["train_loss"], rtol=1e-6)


def test_weight_decay_is_decoupled_and_scaled_by_the_learning_rate():
  # With a zero gradient Adam's update is 0, so only the decay moves the parameters:
  # p <- p - lr * weight_decay * p, on every parameter (no mask).
  params = {"kernel": jnp.full((3,), 2.0), "scale": jnp.full((2,), -1.0)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  for decay in (0.0, 0.2):
    optim = _optim(weight_decay=decay)
    optim.schedule = "constant"
    tx, schedule = train_lib.create_optimizer(optim, d_model=32, num_train_steps=10)
    updates, _ = tx.update(zeros, tx.init(params), params)
    lr = float(schedule(1))
    assert lr == pytest.approx(1e-2)
    for name, p in params.items():
      np.testing.assert_allclose(updates[name], -lr * decay * p, rtol=1e-6, err_msg=name)


def test_weight_decay_mask_matrices_spares_biases_and_layer_norm():
  # Attention biases are [heads, head_dim]: the mask goes by name, not by rank.
  params = {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((2, 3), 1.0),
            "layer_norm": {"scale": jnp.full((3,), -1.0)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  optim = _optim(weight_decay=0.5, weight_decay_mask="matrices")
  optim.schedule = "constant"
  tx, schedule = train_lib.create_optimizer(optim, d_model=32, num_train_steps=10)
  updates, _ = tx.update(zeros, tx.init(params), params)
  lr = float(schedule(1))
  np.testing.assert_allclose(updates["kernel"], -lr * 0.5 * params["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(updates["bias"], 0.0)
  np.testing.assert_array_equal(updates["layer_norm"]["scale"], 0.0)
  model_params = _tiny_state()[0].params
  decayed = train_lib.weight_decay_mask("matrices")(model_params)
  named = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(decayed)}
  assert named["['shared_embedding']['embedding']"]
  for name, is_decayed in named.items():
    assert is_decayed == name.endswith(("['kernel']", "['embedding']")), name
  assert sum(named.values()) < len(named)  # Biases and norm parameters exist and are spared.
  with pytest.raises(ValueError, match="weight_decay_mask='none'.*all"):
    train_lib.create_optimizer(_optim(weight_decay_mask="none"), d_model=32, num_train_steps=10)


# ----------------------------------------------------------------------------- checkpoints


def _tiny_state():
  config = TransformerConfig.tiny(40)
  tx, _ = train_lib.create_optimizer(_optim(), d_model=32, num_train_steps=10)
  return jax.jit(functools.partial(train_lib.init_state, model=Transformer(config), tx=tx))(
      jax.random.key(0)), config, tx


def test_checkpoint_round_trip_keeps_state_and_data_position(tmp_path):
  state, config, tx = _tiny_state()
  state = state.replace(step=jnp.asarray(7))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  assert ckpt.save(7, state, {"position": 123}, {"seed": 0})
  ckpt.close()
  abstract = jax.eval_shape(lambda: state)
  restored, data_state, step = checkpoint_lib.Checkpointer(str(tmp_path)).restore(abstract)
  assert step == 7 and data_state == {"position": 123} and int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  params, step, saved_config = checkpoint_lib.load_params(str(tmp_path))
  assert step == 7 and saved_config == {"seed": 0}
  np.testing.assert_array_equal(params["shared_embedding"]["embedding"],
                                state.params["shared_embedding"]["embedding"])


def test_checkpoint_that_does_not_fit_names_the_parameter(tmp_path):
  state, _, _ = _tiny_state()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  ckpt.save(1, state, {}, {})
  ckpt.close()
  wider = TransformerConfig.tiny(40, d_ff=128)
  tx, _ = train_lib.create_optimizer(_optim(), d_model=32, num_train_steps=10)
  abstract = jax.eval_shape(functools.partial(train_lib.init_state, model=Transformer(wider),
                                              tx=tx), jax.random.key(0))
  with pytest.raises(ValueError, match=r"feed_forward.*wi.*(64|128)"):
    checkpoint_lib.Checkpointer(str(tmp_path)).restore(abstract)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
  state, _, _ = _tiny_state()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  ckpt.save(1, state, {"position": 1}, {})
  ckpt.save(2, state.replace(step=jnp.asarray(2)), {"position": 2}, {})
  ckpt.close()
  # Corrupt step 2: truncate every array file it holds.
  for path in glob.glob(str(tmp_path / "checkpoints" / "2" / "state" / "**" / "*"), recursive=True):
    if os.path.isfile(path) and not path.endswith(("_METADATA", "_CHECKPOINT_METADATA")):
      open(path, "wb").close()
  restored = checkpoint_lib.Checkpointer(str(tmp_path)).restore(jax.eval_shape(lambda: state))
  assert restored is not None and restored[2] == 1 and restored[1] == {"position": 1}
  assert any("unreadable" in r.message for r in caplog.records)
  assert glob.glob(str(tmp_path / "checkpoints" / "corrupt-2-*"))  # Moved aside, not deleted.


def test_load_params_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="Train first"):
    checkpoint_lib.load_params(str(tmp_path))


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_file_loads(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert isinstance(config, ml_collections.ConfigDict)
  for key in ("num_train_steps", "checkpoint_every_steps", "log_every_steps", "eval_every_steps",
              "seed"):
    assert key in config
  model_config = train_lib.build_model_config(config.model, vocab_size=config.data.vocab_size,
                                              bos_id=1, eos_id=2)
  assert model_config.d_model % model_config.num_heads == 0
  train_lib.create_optimizer(config.optim, d_model=model_config.d_model,
                             num_train_steps=config.num_train_steps)


def test_unknown_model_field_is_refused():
  model = base_config().model
  model.unlock() if hasattr(model, "unlock") else None
  model.d_modle = 3
  with pytest.raises(ValueError, match="d_modle"):
    train_lib.build_model_config(model, vocab_size=10, bos_id=1, eos_id=2)
