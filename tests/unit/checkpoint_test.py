"""Checkpoints: round trip with the data position, fit to the config, corrupt fallback."""

import functools
import glob
import os
import shutil
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import integrity_test
from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import checkpoint_reader
from transformer_jax import schedules
from transformer_jax import steps
from transformer_jax.config import TransformerConfig
from transformer_jax.experiment_config import OptimConfig
from transformer_jax.model import Transformer


def _optim():
  return OptimConfig(schedule="rsqrt", warmup_steps=2, peak_learning_rate=1e-2)


def _tiny_state():
  config = TransformerConfig.tiny(40)
  tx, _ = schedules.create_optimizer(_optim(), d_model=32, num_train_steps=10)
  return jax.jit(functools.partial(steps.init_state, model=Transformer(config), tx=tx))(
      jax.random.key(0)), config, tx


def test_checkpoint_round_trip_keeps_state_and_data_position(tmp_path):
  state, config, tx = _tiny_state()
  state = state.replace(step=jnp.asarray(7))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=3)
  assert ckpt.save(7, state, {"position": 123}, {"seed": 0})
  ckpt.close()
  abstract = jax.eval_shape(lambda: state)
  restored, data_state, step = checkpoint_lib.Checkpointer(
      str(tmp_path), max_to_keep=3).restore(abstract)
  assert step == 7 and data_state == {"position": 123} and int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  params, step, saved_config = checkpoint_reader.read_params(str(tmp_path))
  assert step == 7 and saved_config == {"seed": 0}
  assert jax.tree.structure(params) == jax.tree.structure(state.params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    assert isinstance(a, np.ndarray)
    np.testing.assert_array_equal(a, b)


def test_read_params_reads_the_parameters_alone(tmp_path, monkeypatch):
  """Readers never load the optimizer state (twice the parameters' size with Adam)."""
  state, _, _ = _tiny_state()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=3)
  ckpt.save(3, state, {}, {})
  ckpt.close()
  requested = []
  restore = checkpoint_lib.ocp.CheckpointManager.restore

  def spy(self, step, *args, **kwargs):
    requested.append(kwargs["args"]["state"].item)
    return restore(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint_lib.ocp.CheckpointManager, "restore", spy)
  params, _, _ = checkpoint_reader.read_params(str(tmp_path))
  assert [list(item) for item in requested] == [["params"]]
  assert jax.tree.structure(params) == jax.tree.structure(state.params)


def test_a_checkpoint_without_params_is_named_and_kept(tmp_path):
  import orbax.checkpoint as ocp
  directory = tmp_path / "checkpoints"
  manager = ocp.CheckpointManager(str(directory), item_handlers=checkpoint_lib.item_handlers())
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": np.ones(3)}),
                                          data=ocp.args.JsonSave({}),
                                          config=ocp.args.JsonSave({})))
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(ValueError, match="holds no model parameters"):
    checkpoint_reader.read_params(str(tmp_path))
  assert os.path.isdir(directory / "1")  # Not moved aside: it is intact, just not a model's.


def test_checkpoint_that_does_not_fit_names_the_parameter(tmp_path):
  state, _, _ = _tiny_state()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=3)
  ckpt.save(1, state, {}, {})
  ckpt.close()
  wider = TransformerConfig.tiny(40, d_ff=128)
  tx, _ = schedules.create_optimizer(_optim(), d_model=32, num_train_steps=10)
  abstract = jax.eval_shape(functools.partial(steps.init_state, model=Transformer(wider),
                                              tx=tx), jax.random.key(0))
  with pytest.raises(ValueError, match=r"feed_forward.*wi.*(64|128)"):
    checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=3).restore(abstract)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
  state, _, _ = _tiny_state()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=3)
  ckpt.save(1, state, {"position": 1}, {})
  ckpt.save(2, state.replace(step=jnp.asarray(2)), {"position": 2}, {})
  ckpt.close()
  # Corrupt step 2: truncate every array file it holds.
  for path in glob.glob(str(tmp_path / "checkpoints" / "2" / "state" / "**" / "*"), recursive=True):
    if os.path.isfile(path) and not path.endswith(("_METADATA", "_CHECKPOINT_METADATA")):
      open(path, "wb").close()
  restored = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=3).restore(
      jax.eval_shape(lambda: state))
  assert restored is not None and restored[2] == 1 and restored[1] == {"position": 1}
  assert any("unreadable" in r.message for r in caplog.records)
  assert glob.glob(str(tmp_path / "checkpoints" / "corrupt-2-*"))  # Moved aside, not deleted.


def test_read_params_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="Train first"):
    checkpoint_reader.read_params(str(tmp_path))


def _flip_a_byte_in_the_arrays(step_dir):
  """Flips one bit in the middle of the largest array file (the data, not the metadata)."""
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(p)]
  target = max(files, key=os.path.getsize)
  data = bytearray(open(target, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(target, "wb").write(bytes(data))


def test_flipped_bytes_are_caught_by_the_checksums_in_training_and_in_readers(tmp_path, caplog):
  state, _, _ = _tiny_state()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=3)
  for step in (1, 2):
    ckpt.save(step, state.replace(step=jnp.asarray(step)), {"position": step}, {"seed": step})
  ckpt.close()
  reader_copy = tmp_path / "reader"
  shutil.copytree(tmp_path / "checkpoints", reader_copy / "checkpoints")
  for root in (tmp_path, reader_copy):
    _flip_a_byte_in_the_arrays(str(root / "checkpoints" / "2"))
  # Training: the flipped checkpoint would restore silently (a NaN or a wrong value in Adam's
  # moments); its checksums fail, it is moved aside, and step 1 is used.
  restored = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=3).restore(
      jax.eval_shape(lambda: state))
  assert restored[2] == 1 and restored[1] == {"position": 1}
  assert any("checksum mismatch" in r.message for r in caplog.records)
  assert glob.glob(str(tmp_path / "checkpoints" / "corrupt-2-*"))
  # Readers (translate, tune, average) fall back the same way, but change nothing: no move, no
  # pin (no run holds the workdir), so a read-only copy reads too.
  before = sorted(str(p) for p in reader_copy.rglob("*"))
  params, step, config = checkpoint_reader.read_params(str(reader_copy))
  assert step == 1 and config == {"seed": 1}
  assert sorted(str(p) for p in reader_copy.rglob("*")) == before
  with pytest.raises(ValueError, match=r"Checkpoint 2 of .* is unreadable \(.*checksum.*the "
                     r"other checkpoints are \[1\]: choose one with --checkpoint"):
    checkpoint_reader.read_params(str(reader_copy), 2)
  np.testing.assert_array_equal(params["shared_embedding"]["embedding"],
                                state.params["shared_embedding"]["embedding"])


def test_retention_keeps_the_resumed_step_and_steps_a_reader_pinned(tmp_path):
  state, _, _ = _tiny_state()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1)
  ckpt.save(1, state, {}, {})
  ckpt.save(2, state, {}, {})
  ckpt.close()
  resumed = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1)
  assert resumed.restore(jax.eval_shape(lambda: state))[2] == 2
  # A reader in another process pins step 2 and holds the pin until told to stop.
  reader = integrity_test.start_pinning_reader(tmp_path / "checkpoints", 2)
  for step in (3, 4):
    resumed.save(step, state, {}, {})
  resumed.close()
  assert checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1).all_steps() == [2, 4]
  reader.communicate("")  # The reader finishes: its pin goes, and retention may delete step 2.
  later = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1)
  later.save(5, state, {}, {})
  later.close()
  assert later.all_steps() == [5]
  with pytest.raises(ValueError, match="keep at least 1"):
    checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=0)


def test_a_full_disk_fails_the_save_at_once_and_keeps_earlier_checkpoints(tmp_path,
                                                                         monkeypatch):
  disk = tmp_path / "small_disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                           capture_output=True)
  if mounted.returncode:
    pytest.skip("needs to mount a small tmpfs (root) to fill a disk")
  try:
    ckpt = checkpoint_lib.Checkpointer(str(disk), max_to_keep=3)
    ckpt.save(1, {"params": {"w": jnp.ones(1000)}}, {}, {})
    noise = np.random.default_rng(0).normal(size=2_000_000).astype(np.float32)  # 8 MB > 2 MB.
    message = (r"Saving checkpoint .*/2 failed: .*No space left on device.*MiB free.*Earlier "
               r"checkpoints are intact \(\[1\]\)")
    # Refused before writing: the state's size is known.
    with pytest.raises(checkpoint_lib.CheckpointSaveError, match=message):
      ckpt.save(2, {"params": {"w": jnp.asarray(noise)}}, {}, {})
    # A failure in the background (here: no size check) surfaces at the next check, which the
    # training loop makes after every step.
    monkeypatch.setattr(checkpoint_lib.Checkpointer, "_check_space", lambda *args: None)
    with pytest.raises(checkpoint_lib.CheckpointSaveError, match=message):
      ckpt.save(2, {"params": {"w": jnp.asarray(noise)}}, {}, {})
      for _ in range(300):
        ckpt.check_for_errors()
        time.sleep(0.05)
    assert checkpoint_reader.read_params(str(disk))[1] == 1
  finally:
    subprocess.run(["umount", str(disk)], check=False)
