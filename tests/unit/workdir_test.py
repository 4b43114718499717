"""One writer per workdir (a lock taken over from dead holders) and the corpus it remembers."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from transformer_jax import workdir as workdir_lib
from transformer_jax import workdir_layout as layout

HOLD_LOCK = ("import sys, time; from transformer_jax.workdir import WorkdirLock; "
             "lock = WorkdirLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); "
             "time.sleep(300)")


def _holder(path):
  proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE,
                          text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_a_live_holder_keeps_the_lock_and_is_named(tmp_path):
  holder = _holder(tmp_path)
  try:
    with pytest.raises(workdir_lib.WorkdirBusyError, match=rf"pid {holder.pid} on host .* since"):
      workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.kill()
    holder.wait()


def test_the_lock_of_a_killed_holder_is_taken_over_and_released(tmp_path):
  holder = _holder(tmp_path)
  os.kill(holder.pid, signal.SIGKILL)  # No chance to release: the lock file stays.
  holder.wait()
  assert (tmp_path / layout.LOCK_FILE).exists()
  with workdir_lib.WorkdirLock(str(tmp_path)):
    owner = json.loads((tmp_path / layout.LOCK_FILE).read_text())
    assert owner["pid"] == os.getpid()
  assert not (tmp_path / layout.LOCK_FILE).exists()


def test_another_hosts_lock_is_taken_over_only_when_stale(tmp_path):
  lock_file = tmp_path / layout.LOCK_FILE
  lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "earlier"}))
  with pytest.raises(workdir_lib.WorkdirBusyError, match="host elsewhere.*taken over after 10"):
    workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  old = time.time() - workdir_lib.STALE_SECONDS - 1
  os.utime(lock_file, (old, old))  # No heartbeat for longer than STALE_SECONDS.
  with workdir_lib.WorkdirLock(str(tmp_path)):
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()


def test_resuming_on_another_corpus_is_refused_unless_allowed(tmp_path):
  first = {"train_corpus": "aaaa", "tokenizer": "tttt"}
  assert not workdir_lib.check_corpus(str(tmp_path), first, resuming=False)
  assert not workdir_lib.check_corpus(str(tmp_path), first, resuming=True)
  other = {"train_corpus": "bbbb", "tokenizer": "tttt"}
  with pytest.raises(workdir_lib.CorpusChangedError, match="train_corpus: aaaa in the workdir, "
                                                          "bbbb now.*--allow_corpus_change"):
    workdir_lib.check_corpus(str(tmp_path), other, resuming=True)
  assert json.loads((tmp_path / layout.CORPUS_FILE).read_text()) == first  # Untouched.
  assert workdir_lib.check_corpus(str(tmp_path), other, resuming=True, allow_change=True)
  assert json.loads((tmp_path / layout.CORPUS_FILE).read_text()) == other


def test_an_object_store_workdir_is_refused_in_one_line(tmp_path):
  from transformer_jax import train_lib
  with pytest.raises(ValueError, match="gs://bucket/run: object-store workdirs are not supported"):
    layout.check_local("gs://bucket/run")
  assert layout.check_local(str(tmp_path)) == str(tmp_path)
  with pytest.raises(ValueError, match="mount the bucket"):  # The library refuses it too.
    train_lib.train_and_evaluate({}, "gs://bucket/run")
