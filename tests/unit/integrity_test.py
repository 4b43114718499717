"""Checksums catch changed bytes; reader pins count only while their process lives."""

import os
import subprocess
import sys

from transformer_jax import integrity
from transformer_jax import workdir_layout as layout


def _step_dir(tmp_path):
  step = tmp_path / "7"
  (step / "state").mkdir(parents=True)
  (step / "state" / "array").write_bytes(bytes(range(256)) * 64)
  (step / "_CHECKPOINT_METADATA").write_text("{}")
  return str(step)


def test_checksums_catch_a_flipped_byte_a_truncation_and_a_missing_file(tmp_path):
  step = _step_dir(tmp_path)
  assert integrity.verify(step) is None  # No checksums yet: an older checkpoint, accepted.
  integrity.write_checksums(step)
  assert integrity.has_checksums(step) and integrity.verify(step) is None
  array = os.path.join(step, "state", "array")
  data = bytearray(open(array, "rb").read())
  data[1000] ^= 0x01
  open(array, "wb").write(bytes(data))
  assert "state/array has changed" in integrity.verify(step)
  open(array, "wb").write(bytes(data[:100]))
  assert "state/array has changed" in integrity.verify(step)
  os.remove(array)
  assert "state/array is missing" in integrity.verify(step)


def start_pinning_reader(directory, step: int) -> subprocess.Popen:
  """A reader in another process that pins `step` until its stdin closes."""
  code = ("import sys; from transformer_jax.integrity import Pin; "
          "pin = Pin(sys.argv[1], int(sys.argv[2]), always=True).__enter__(); "
          "print('pinned', flush=True); "
          "sys.stdin.read()")
  reader = subprocess.Popen([sys.executable, "-c", code, str(directory), str(step)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert reader.stdout.readline().strip() == "pinned"
  return reader


def test_a_pin_counts_while_its_process_lives(tmp_path):
  reader = start_pinning_reader(tmp_path, 3)
  with integrity.Pin(str(tmp_path), 5, always=True):
    assert integrity.pinned_steps(str(tmp_path)) == {3, 5}
  assert integrity.pinned_steps(str(tmp_path)) == {3}
  reader.kill()  # Dies without removing its pin: the pin no longer counts, and is cleaned up.
  reader.wait()
  assert integrity.pinned_steps(str(tmp_path)) == set()
  assert os.listdir(tmp_path / layout.PIN_DIR) == []


def test_readers_pin_only_while_a_run_holds_the_workdir(tmp_path):
  directory = tmp_path / "checkpoints"
  directory.mkdir()
  with integrity.Pin(str(directory), 4):  # No train.lock: nothing is written.
    assert not (directory / layout.PIN_DIR).exists()
  (tmp_path / layout.LOCK_FILE).write_text("{}")
  with integrity.Pin(str(directory), 4):
    assert integrity.pinned_steps(str(directory)) == {4}
  assert integrity.pinned_steps(str(directory)) == set()
