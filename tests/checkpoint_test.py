"""Checkpoints: round trip with the data position, fit to the config, corrupt fallback."""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import train_lib
from transformer_jax.config import TransformerConfig
from transformer_jax.experiment_config import OptimConfig
from transformer_jax.model import Transformer


def _optim():
  return OptimConfig(schedule="rsqrt", warmup_steps=2, peak_learning_rate=1e-2)


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
  params, step, saved_config = checkpoint_lib.read_params(str(tmp_path))
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


def test_read_params_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="Train first"):
    checkpoint_lib.read_params(str(tmp_path))
