"""What guards a training workdir: one writer at a time, and the corpus it was trained on.

`WorkdirLock` is an exclusive lock file, `WORKDIR/train.lock` (host, pid, start time), held by
the training process for the whole run and refreshed every `HEARTBEAT_SECONDS`. A second run on
the same workdir stops at once, naming the holder. A lock whose holder is dead is taken over: on
the same host when its pid no longer exists (e.g. after kill -9), from another host when it has
not been refreshed for `STALE_SECONDS`.

`check_corpus` records the training corpus's fingerprint and the tokenizer's in
`WORKDIR/corpus.json` and refuses to resume a workdir on another corpus.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from transformer_jax.integrity import pid_alive
from transformer_jax.workdir_layout import CORPUS_FILE, LOCK_FILE

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0  # A lock from another host not refreshed for this long is taken over.


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir's lock."""


class CorpusChangedError(ValueError):
  """The workdir was trained on another corpus (or with another tokenizer)."""


class WorkdirLock:
  """An exclusive, heartbeat-refreshed lock file; use as a context manager."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._owner = {"host": socket.gethostname(), "pid": os.getpid(),
                   "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirBusyError naming the live holder."""
    for _ in range(3):  # A takeover races only with another takeover; O_EXCL decides.
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._take_over_if_stale()
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(self._owner, f)
      self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="workdir-lock")
      self._thread.start()
      return
    raise WorkdirBusyError(f"Cannot take {self.path}: other processes keep racing for it.")

  def _take_over_if_stale(self) -> None:
    holder, age = self._read_holder()
    if holder is None:
      return  # Released (or being written) meanwhile: try again.
    same_host = holder.get("host") == self._owner["host"]
    pid = holder.get("pid")
    if same_host and isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
      dead = False
    elif same_host:
      dead = True
    else:
      dead = age > STALE_SECONDS
    if not dead:
      raise WorkdirBusyError(
          f"{os.path.dirname(self.path)} is being trained by pid {pid} on host "
          f"{holder.get('host')} since {holder.get('since')} ({self.path}). Wait for it to "
          f"finish or use another --workdir. If that process is gone, delete {self.path}"
          + ("." if same_host else f"; a lock from another host is taken over after "
             f"{STALE_SECONDS / 60:.0f} minutes without a heartbeat."))
    log.warning("Taking over %s from pid %s on %s (%s).", self.path, pid, holder.get("host"),
                "no longer running" if same_host else f"silent for {age:.0f} s")
    stale = f"{self.path}.stale-{os.getpid()}"
    try:
      os.replace(self.path, stale)  # Atomic: of two takeovers, one moves the lock away.
      os.remove(stale)
    except FileNotFoundError:
      pass

  def _read_holder(self) -> tuple[dict | None, float]:
    try:
      with open(self.path) as f:
        holder = json.load(f)
      age = time.time() - os.path.getmtime(self.path)
    except FileNotFoundError:
      return None, 0.0
    except (json.JSONDecodeError, OSError):
      # Half-written by a holder that died while creating it, or being written right now.
      age = time.time() - os.path.getmtime(self.path) if os.path.exists(self.path) else 0.0
      return ({"host": "?", "pid": None, "since": "?"} if age > 5 else None), age
    return (holder if isinstance(holder, dict) else {"host": "?", "pid": None}), age

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        os.utime(self.path)
      except OSError as e:
        log.warning("Cannot refresh the workdir lock %s: %s", self.path, e)

  def release(self) -> None:
    """Gives the lock up (only if this process still holds it)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    holder, _ = self._read_holder()
    if holder is not None and holder.get("pid") == self._owner["pid"] and \
        holder.get("host") == self._owner["host"]:
      os.remove(self.path)


def check_corpus(workdir: str, fingerprints: dict[str, str], *, resuming: bool,
                 allow_change: bool = False, write: bool = True) -> bool:
  """Records `fingerprints` (train corpus, tokenizer) in the workdir; on resume compares them.

  Returns whether they changed (only possible with `allow_change`); `write=False` (processes
  other than 0) only checks.

  Raises:
    CorpusChangedError: resuming on a corpus whose fingerprint differs from the recorded one,
      unless `allow_change` (a deliberate fine-tune of the old weights on new data).
  """
  path = os.path.join(workdir, CORPUS_FILE)
  recorded = None
  if os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f)
  changed = {}
  if resuming and recorded is not None:
    changed = {k: (recorded.get(k), v) for k, v in fingerprints.items()
               if recorded.get(k) != v}
    if changed and not allow_change:
      what = "; ".join(f"{k}: {old} in the workdir, {new} now" for k, (old, new) in changed.items())
      raise CorpusChangedError(
          f"{workdir} was trained on another corpus ({what}). Use a new --workdir for this data, "
          "point the config back at the original corpus, or pass --allow_corpus_change to "
          "fine-tune the saved weights on the new data (with the workdir's tokenizer).")
    if changed:
      log.warning("Corpus changed (%s); fine-tuning the saved weights on it, as asked.", changed)
  if write:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(fingerprints, f, indent=1)
    os.replace(tmp, path)
  return bool(changed)
