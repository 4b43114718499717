"""Checkpoint integrity and reader pins, beside Orbax's own files.

Every finished checkpoint gets `integrity.json`: the SHA-256 of each of its files. Restoring
verifies it first, so flipped or truncated bytes are caught before they reach the model (Orbax
itself checks only that a checkpoint was committed, not what its array files hold).

A reader (translate, tune, average) pins the steps it reads with a file in `checkpoints/.pins/`
(step, host, pid) while a training run holds the workdir (its `train.lock`); the run's retention
keeps a pinned step until the pin goes away, so a run deleting old checkpoints cannot pull one
out from under a reader. A workdir that no run holds is left untouched by readers (no pin is
needed; a read-only copy can be read), and a pin that cannot be written is skipped. A pin whose
process is gone (same host) or that is older than `PIN_STALE_SECONDS` (another host) no longer
counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid

from transformer_jax.workdir_layout import INTEGRITY_FILE, LOCK_FILE, PIN_DIR

log = logging.getLogger(__name__)

PIN_STALE_SECONDS = 3600.0
_CHUNK = 1 << 22


def _digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _files(step_dir: str) -> list[str]:
  found = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      if os.path.relpath(path, step_dir) != INTEGRITY_FILE:
        found.append(os.path.relpath(path, step_dir))
  return sorted(found)


def write_checksums(step_dir: str) -> None:
  """Writes `step_dir/integrity.json` (atomically) with the SHA-256 of every file below it."""
  sums = {name: _digest(os.path.join(step_dir, name)) for name in _files(step_dir)}
  tmp = os.path.join(step_dir, f".{INTEGRITY_FILE}.tmp-{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump({"sha256": sums}, f, indent=0)
  os.replace(tmp, os.path.join(step_dir, INTEGRITY_FILE))


def has_checksums(step_dir: str) -> bool:
  return os.path.isfile(os.path.join(step_dir, INTEGRITY_FILE))


def verify(step_dir: str) -> str | None:
  """None if every file matches `integrity.json` (or there is none: an older checkpoint);
  otherwise what is wrong, e.g. "state/d/1234 has changed"."""
  path = os.path.join(step_dir, INTEGRITY_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      sums = json.load(f)["sha256"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"{INTEGRITY_FILE} is unreadable ({e})"
  for name, digest in sums.items():
    file = os.path.join(step_dir, name)
    if not os.path.isfile(file):
      return f"{name} is missing"
    if _digest(file) != digest:
      return f"{name} has changed since it was written (checksum mismatch)"
  return None


# ----------------------------------------------------------------------------- reader pins


class Pin:
  """Keeps `step` of a checkpoint directory from deletion while the `with` block reads it.

  Args:
    directory: The checkpoint directory (`WORKDIR/checkpoints` or `WORKDIR/averaged`).
    step: The step read.
    always: Pin even when no training run holds the workdir (tests).
  """

  def __init__(self, directory: str, step: int, *, always: bool = False):
    self._path = os.path.join(directory, PIN_DIR,
                              f"{step}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    lock = os.path.join(os.path.dirname(os.path.abspath(directory)), LOCK_FILE)
    self._wanted = always or os.path.exists(lock)
    self._made = False

  def __enter__(self) -> Pin:
    if not self._wanted:
      return self
    try:
      os.makedirs(os.path.dirname(self._path), exist_ok=True)
      with open(self._path, "w"):
        pass
      self._made = True
    except OSError as e:  # A read-only share: no run can delete there either.
      log.info("Not pinning %s (%s).", self._path, e)
    return self

  def __exit__(self, *exc) -> None:
    if not self._made:
      return
    try:
      os.remove(self._path)
    except FileNotFoundError:
      pass


def pinned_steps(directory: str) -> set[int]:
  """Steps some live reader has pinned; stale pins are removed."""
  pin_dir = os.path.join(directory, PIN_DIR)
  try:
    names = os.listdir(pin_dir)
  except FileNotFoundError:
    return set()
  host, steps = socket.gethostname(), set()
  for name in names:
    parts = name.split(".")
    if len(parts) < 4 or not parts[0].isdigit():
      continue
    step, pid, pin_host = int(parts[0]), parts[-2], ".".join(parts[1:-2])
    path = os.path.join(pin_dir, name)
    try:
      age = time.time() - os.path.getmtime(path)
    except FileNotFoundError:
      continue
    if pin_host == host:
      alive = pid.isdigit() and pid_alive(int(pid))
    else:
      alive = age < PIN_STALE_SECONDS
    if alive:
      steps.add(step)
    else:
      try:
        os.remove(path)
      except FileNotFoundError:
        pass
  return steps


def pid_alive(pid: int) -> bool:
  """Whether a process with this pid exists on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True
