"""Worker processes that pack and assemble training windows (`python -m` this module is one).

Why processes, and started this way:
- Packing and gathering rows is Python and numpy work that holds the GIL; on an accelerator host
  the spare cores can do it while the main process dispatches steps.
- Each worker is a fresh interpreter started with `subprocess` (fork immediately followed by
  exec): nothing of the parent is inherited, so a parent that has started JAX's threads is safe,
  and the worker imports only numpy and `packing.py` (no JAX; ~30 MB).
- The token arrays are memory-mapped `.npy` files (the token cache), shared through the page
  cache rather than copied, so a worker's private memory does not grow with the corpus.
- Rows come back through memory-mapped files in /dev/shm (slots), not pickled through the pipe.
- Windows are deterministic in (seed, epoch, window), so the batches do not depend on how many
  workers made them: a run may resume with another `data.num_workers`.
A worker that dies or raises surfaces in the main process as one `DataWorkerError`.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence

import numpy as np

from transformer_jax.data import packing

_NUM_KEYS = len(packing.BATCH_KEYS)


class DataWorkerError(RuntimeError):
  """A data worker process died or failed; the message says which and why."""


class WorkerPool:
  """`num_workers` processes; `submit` a window, then `result` in submission order.

  Args:
    num_workers: Processes to start (>= 1).
    token_files: The four `.npy` files (source values, source offsets, target values, target
      offsets) that the workers memory-map.
    seq_len, bos_id, eos_id: The row format.
    packing, seed: As `packing.pack_rows` takes them.
    max_rows: The most rows a window can have (its example count).
    depth: Windows in flight per worker (each worker has two slots more: the caller may still
      read the rows of two windows, when a batch spans them).
  """

  def __init__(self, num_workers: int, token_files: Sequence[str], *, seq_len: int, bos_id: int,
               eos_id: int, packing: bool, seed: int, max_rows: int, depth: int = 2):
    self._shape = (_NUM_KEYS, max_rows, seq_len)
    self._depth = depth
    self._dir = tempfile.mkdtemp(prefix="transformer_jax_rows_", dir=_slot_parent(
        num_workers * (depth + 2) * 4 * int(np.prod(self._shape))))
    self._procs: list[subprocess.Popen] = []
    self._free: list[list[int]] = []
    self._slots: list[list[np.memmap]] = []
    self._pending: list[tuple[int, int]] = []  # (worker, slot) per submitted window, in order.
    self._submitted = 0
    # The package's own location first: a checkout run without installing still imports.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
    try:
      for w in range(num_workers):
        paths = [os.path.join(self._dir, f"w{w}s{s}") for s in range(depth + 2)]
        # Sparse files: tmpfs pages exist only for the rows written.
        self._slots.append([np.lib.format.open_memmap(p, "w+", np.int32, self._shape)
                            for p in paths])
        self._free.append(list(range(depth + 2)))
        proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)
        self._procs.append(proc)
        self._send(w, {"token_files": list(token_files), "slots": paths, "seq_len": seq_len,
                       "bos_id": bos_id, "eos_id": eos_id, "packing": packing, "seed": seed})
    except BaseException:
      self.close()
      raise

  @property
  def pids(self) -> list[int]:
    """The worker processes' ids (e.g. to read their memory use)."""
    return [proc.pid for proc in self._procs]

  @property
  def capacity(self) -> int:
    """Windows that can be in flight at once."""
    return len(self._slots) * self._depth

  def submit(self, examples: packing.WindowExamples, epoch: int, window: int) -> None:
    """Queues a window (round-robin over the workers); at most `capacity` outstanding."""
    w = self._submitted % len(self._procs)
    if not self._free[w]:
      raise RuntimeError("WorkerPool.submit with no free slot: collect a result first.")
    slot = self._free[w].pop()
    self._send(w, (slot, examples, epoch, window))
    self._pending.append((w, slot))
    self._submitted += 1

  def result(self) -> tuple[dict[str, np.ndarray], Callable[[], None]]:
    """The rows of the oldest outstanding window, as views of its slot, and the function that
    gives the slot back (call it once done reading; at most two windows may be held)."""
    w, slot = self._pending.pop(0)
    reply = self._receive(w)
    if reply[0] == "error":
      self._free[w].append(slot)
      raise DataWorkerError(f"Data worker {w} (pid {self._procs[w].pid}) failed:\n{reply[1]}")
    rows = self._slots[w][slot][:, :reply[1]]
    return ({k: rows[i] for i, k in enumerate(packing.BATCH_KEYS)},
            lambda: self._free[w].append(slot))

  def close(self) -> None:
    """Stops the workers and removes the slots; idempotent."""
    procs, self._procs = self._procs, []
    for proc in procs:
      try:
        if proc.poll() is None:
          pickle.dump(None, proc.stdin)
          proc.stdin.flush()
      except (BrokenPipeError, OSError, ValueError):
        pass
    for proc in procs:
      for stream in (proc.stdin, proc.stdout):
        try:
          stream.close()
        except (BrokenPipeError, OSError):
          pass
      try:
        proc.wait(timeout=5)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    self._slots = []
    shutil.rmtree(self._dir, ignore_errors=True)

  def _send(self, w: int, message) -> None:
    try:
      pickle.dump(message, self._procs[w].stdin, protocol=pickle.HIGHEST_PROTOCOL)
      self._procs[w].stdin.flush()
    except (BrokenPipeError, OSError) as e:
      raise self._died(w) from e

  def _receive(self, w: int):
    try:
      return pickle.load(self._procs[w].stdout)
    except (EOFError, OSError, pickle.UnpicklingError) as e:
      raise self._died(w) from e

  def _died(self, w: int) -> DataWorkerError:
    proc = self._procs[w]
    try:
      code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
      code = None
    if code is not None and code < 0:
      how = f"was killed by {signal.Signals(-code).name}"
    else:
      how = f"exited with code {code}"
    return DataWorkerError(
        f"Data worker {w} (pid {proc.pid}) {how}; training cannot go on without its batches "
        "(out of memory? see the lines above). Resume from the last checkpoint, with fewer "
        "data.num_workers if memory is short.")


def _slot_parent(needed_bytes: int) -> str | None:
  """/dev/shm when it can hold every slot in full (a container's is often 64 MiB, and writing
  past its end kills a worker with SIGBUS); else the temporary directory (None)."""
  try:
    stat = os.statvfs("/dev/shm")
  except OSError:
    return None
  if os.access("/dev/shm", os.W_OK) and stat.f_bavail * stat.f_frsize >= needed_bytes:
    return "/dev/shm"
  return None


def _serve(requests, replies) -> None:
  """A worker's loop: the init message, then windows until None."""
  init = pickle.load(requests)
  tokens = [np.load(p, mmap_mode="r") for p in init["token_files"]]
  slots = [np.load(p, mmap_mode="r+") for p in init["slots"]]
  while True:
    message = pickle.load(requests)
    if message is None:
      return
    slot, examples, epoch, window = message
    try:
      rows = packing.pack_rows(examples, seq_len=init["seq_len"], packing=init["packing"],
                               seed=init["seed"], epoch=epoch, window=window)
      out = {k: slots[slot][i] for i, k in enumerate(packing.BATCH_KEYS)}
      packing.assemble(*tokens, rows, seq_len=init["seq_len"], bos_id=init["bos_id"],
                       eos_id=init["eos_id"], out=out)
      reply = ("ok", len(rows))
    except Exception:  # pylint: disable=broad-except
      reply = ("error", traceback.format_exc())
    pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
    replies.flush()


def main() -> None:
  # The pipe is the protocol: anything printed goes to stderr instead.
  replies = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the main process, which stops us.
  try:
    _serve(sys.stdin.buffer, replies)
  except (EOFError, BrokenPipeError):  # The main process went away.
    pass


if __name__ == "__main__":
  main()
