"""Worker processes: the same batches as one process, exact resume for any worker count, errors
that name the worker, no JAX in the workers, nothing left behind."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from transformer_jax.data import (BATCH_KEYS, DataConfig, DataWorkerError, TokenizedSplit,
                                  make_train_iterator)
from transformer_jax.data import packing
from transformer_jax.data import workers as workers_lib

BOS, EOS = 1, 2


def corpus(n=3000, seed=0):
  rng = np.random.default_rng(seed)
  src = rng.integers(1, 30, n)
  tgt = rng.integers(1, 30, n)
  so, to = np.r_[0, np.cumsum(src)], np.r_[0, np.cumsum(tgt)]
  return TokenizedSplit(rng.integers(3, 900, so[-1]).astype(np.int32), so,
                        rng.integers(3, 900, to[-1]).astype(np.int32), to)


TOKENS = corpus()
KEEP = np.arange(len(TOKENS))


def make(num_workers, **kw):
  args = dict(bos_id=BOS, eos_id=EOS, batch_size=16, seq_len=64, seed=3, window=200,
              num_workers=num_workers)
  args.update(kw)
  return make_train_iterator(TOKENS, KEEP, **args)


def assert_same(a, b):
  for k in BATCH_KEYS:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_workers_make_the_batches_of_one_process():
  with make(0) as one, make(2) as two, make(3, prefetch=1, process_sharding="rows",
                                            process_count=2, process_index=1) as rows:
    for _ in range(60):  # Several windows, into the second epoch.
      want = next(one)
      assert_same(next(two), want)
      assert_same(next(rows), {k: v[8:] for k, v in want.items()})


def test_resume_with_another_worker_count_is_exact(tmp_path):
  tokens_dir = tmp_path / "cache"  # A memory-mapped cache, as training uses.
  tokens_dir.mkdir()
  mapped = TokenizedSplit.load(str(tokens_dir / "t")) if TOKENS.save(
      str(tokens_dir / "t")) else None
  assert mapped.files() is not None
  run = make_train_iterator(mapped, KEEP, bos_id=BOS, eos_id=EOS, batch_size=16, seq_len=64,
                            seed=3, window=200, num_workers=2)
  for _ in range(37):
    next(run)
  state = json.loads(json.dumps(run.get_state()))
  expected = [next(run) for _ in range(25)]
  run.close()
  for workers in (0, 1, 3):
    with make(workers) as resumed:
      resumed.set_state(state)
      for want in expected:
        assert_same(next(resumed), want)
  with make(2) as it:  # Rewinding a running iterator drops the windows it prepared.
    for _ in range(50):
      next(it)
    it.set_state(state)
    assert_same(next(it), expected[0])


def test_a_killed_worker_is_one_clear_error():
  it = make(2, prefetch=1)
  next(it)
  os.kill(it._source._pool._procs[1].pid, signal.SIGKILL)  # pylint: disable=protected-access
  start = time.monotonic()
  with pytest.raises(DataWorkerError, match=r"Data worker 1 \(pid \d+\) was killed by SIGKILL"):
    for _ in range(100):
      next(it)
  assert time.monotonic() - start < 30
  it.close()


def test_an_error_in_a_worker_names_it(tmp_path):
  files = TOKENS.save(str(tmp_path / "t"))
  pool = workers_lib.WorkerPool(1, files, seq_len=64, bos_id=BOS, eos_id=EOS, packing=True,
                                seed=0, max_rows=8)
  try:
    big = np.array([10**9])  # No such example: the worker's gather fails.
    pool.submit(packing.WindowExamples(big, np.array([3]), np.array([3])), 0, 0)
    with pytest.raises(DataWorkerError, match=r"Data worker 0 \(pid \d+\) failed:(.|\n)*Error"):
      pool.result()
  finally:
    pool.close()


def test_workers_import_no_jax_and_close_leaves_nothing():
  it = make(1)
  next(it)
  pool = it._source._pool  # pylint: disable=protected-access
  pid, slots = pool._procs[0].pid, pool._dir  # pylint: disable=protected-access
  maps = open(f"/proc/{pid}/maps").read()
  assert "jaxlib" not in maps and "xla_extension" not in maps
  it.close()
  assert not os.path.exists(slots) and not os.path.exists(f"/proc/{pid}/status")


def test_num_workers_is_checked_and_resolved():
  with pytest.raises(ValueError, match=r"config.data.num_workers=-2: must be in \[0, 256\]"):
    DataConfig(num_workers=-2)
  with pytest.raises(ValueError, match="num_workers=-1"):
    make(-1)
  auto = DataConfig(num_workers=-1)
  assert auto.workers_for("cpu", 16) == 0
  assert auto.workers_for("gpu", 16) == 8 and auto.workers_for("tpu", 4) == 3
  assert auto.workers_for("gpu", 1) == 0 and DataConfig(num_workers=5).workers_for("cpu") == 5


def test_the_worker_module_runs_without_the_package_init_importing_jax():
  code = ("import sys; import transformer_jax.data.workers; "
          "print('jax' in sys.modules, 'datasets' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       timeout=60)
  assert out.stdout.split() == ["False", "False"]
  assert workers_lib.WorkerPool  # The module's public class is importable from there.
