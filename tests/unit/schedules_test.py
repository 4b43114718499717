"""Learning-rate schedules (paper, rsqrt, cosine) and the optimizer: decoupled weight decay and
its mask, gradient accumulation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import schedules, steps
from transformer_jax.config import TransformerConfig
from transformer_jax.experiment_config import OptimConfig
from transformer_jax.model import Transformer


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
  with pytest.raises(ValueError, match="optim.schedule='linear': must be one of paper"):
    OptimConfig(schedule="linear")  # Checked once, where the config is built.


def _optim(**overrides):
  return OptimConfig(**{"schedule": "rsqrt", "warmup_steps": 2, "peak_learning_rate": 1e-2,
                        **overrides})


def _tiny_params():
  tx, _ = schedules.create_optimizer(_optim(), d_model=32, num_train_steps=10)
  init = functools.partial(steps.init_state, model=Transformer(TransformerConfig.tiny(40)),
                           tx=tx)
  return jax.jit(init)(jax.random.key(0)).params


def test_accumulated_steps_report_their_updates_learning_rate():
  _, schedule = schedules.create_optimizer(_optim(grad_accum_steps=2), d_model=32,
                                           num_train_steps=10)
  plain = schedules.rsqrt_schedule(peak=1e-2, warmup_steps=2)
  np.testing.assert_allclose([schedule(s) for s in (1, 2, 3, 4, 5)],
                             [plain(1), plain(1), plain(2), plain(2), plain(3)])


def test_weight_decay_is_decoupled_and_scaled_by_the_learning_rate():
  # With a zero gradient Adam's update is 0, so only the decay moves the parameters:
  # p <- p - lr * weight_decay * p, on every parameter (no mask).
  params = {"kernel": jnp.full((3,), 2.0), "scale": jnp.full((2,), -1.0)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  for decay in (0.0, 0.2):
    optim = _optim(weight_decay=decay, schedule="constant")
    tx, schedule = schedules.create_optimizer(optim, d_model=32, num_train_steps=10)
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
  optim = _optim(weight_decay=0.5, weight_decay_mask="matrices", schedule="constant")
  tx, schedule = schedules.create_optimizer(optim, d_model=32, num_train_steps=10)
  updates, _ = tx.update(zeros, tx.init(params), params)
  lr = float(schedule(1))
  np.testing.assert_allclose(updates["kernel"], -lr * 0.5 * params["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(updates["bias"], 0.0)
  np.testing.assert_array_equal(updates["layer_norm"]["scale"], 0.0)
  model_params = _tiny_params()
  decayed = schedules.weight_decay_mask("matrices")(model_params)
  named = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(decayed)}
  assert named["['shared_embedding']['embedding']"]
  for name, is_decayed in named.items():
    assert is_decayed == name.endswith(("['kernel']", "['embedding']")), name
  assert sum(named.values()) < len(named)  # Biases and norm parameters exist and are spared.
  with pytest.raises(ValueError, match="weight_decay_mask='none'.*all"):
    schedules.create_optimizer(_optim(weight_decay_mask="none"), d_model=32, num_train_steps=10)
