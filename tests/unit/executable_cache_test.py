"""Stored decoding programs: loaded by a later process, equal to jax.jit's, never trusted blindly."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from transformer_jax import Transformer, TransformerConfig, decoding, executable_cache

SRC = np.array([[5, 9, 7, 2, 0], [6, 2, 0, 0, 0]], np.int32)

# Run in fresh processes: whether a program is stored must not depend on what the test session's
# JAX persistent cache already holds, and loading must work in a process that never compiled it.
_SCRIPT = r"""
import json, os, sys
import jax, numpy as np
from transformer_jax import Transformer, TransformerConfig, decoding, executable_cache as ec
config = TransformerConfig.tiny(23, dropout_rate=0.0, d_ff=48)  # A program no other test has.
src = np.array([[5, 9, 7, 2, 0], [6, 2, 0, 0, 0]], np.int32)
params = Transformer(config).init(jax.random.key(3), src, src)["params"]
params = jax.tree.map(np.asarray, params)  # As translate.py reads them: host arrays.
def run():
  beam = decoding.beam_search(Transformer(config), params, src, beam_size=3, alpha=0.6)
  greedy = decoding.greedy_search(Transformer(config), params, src)
  return [np.asarray(beam[0]).tolist(), np.asarray(beam[1]).tolist(), np.asarray(greedy).tolist()]
out = {}
ec.enable(sys.argv[1])
out["cached"] = run()
out["stats"] = dict(ec.stats)
if sys.argv[2] == "check":
  ec.disable()
  jax.config.update("jax_compilation_cache_dir", sys.argv[3])  # Before this process compiles.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  out["plain"] = run()  # Compiled by jax.jit, and written to JAX's persistent cache.
  jax.clear_caches()
  ec.enable(sys.argv[4])
  ec.stats.clear()
  out["from_jax_cache"] = run()  # Compiled from JAX's persistent cache, then maybe stored.
  out["jax_cache_stats"] = dict(ec.stats)
print(json.dumps(out))
"""


def _run(*args):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  result = subprocess.run([sys.executable, "-c", _SCRIPT, *args], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_later_process_loads_the_stored_programs_and_decodes_the_same(tmp_path):
  first = _run(str(tmp_path / "exe"), "store")
  assert first["stats"] == {"compiled": 2, "stored": 2}
  assert len(list((tmp_path / "exe").glob("*.pkl"))) == 2
  second = _run(str(tmp_path / "exe"), "check", str(tmp_path / "xla"), str(tmp_path / "exe2"))
  assert second["stats"] == {"loaded": 2}  # Nothing traced or compiled.
  assert second["cached"] == first["cached"] == second["plain"]
  # A program JAX's persistent cache handed back is stored only if its stored form ran.
  # (jax 0.10.2 on CPU: such a program's stored form fails with "Function ... not found", so
  # both are "unstorable"; they decode all the same.)
  assert second["from_jax_cache"] == second["plain"]
  stats = second["jax_cache_stats"]
  assert stats.get("stored", 0) + stats.get("unstorable", 0) == 2 and "dropped" not in stats


@pytest.fixture(scope="module")
def tiny():
  config = TransformerConfig.tiny(19, dropout_rate=0.0)
  return Transformer(config), Transformer(config).init(jax.random.key(1), SRC, SRC)["params"]


def _plain(model, params):
  executable_cache.disable()
  return np.asarray(decoding.beam_search(model, params, SRC, beam_size=2)[0])


def test_a_corrupt_entry_is_dropped_and_the_call_still_decodes(tiny, tmp_path):
  model, params = tiny
  expected = _plain(model, params)
  executable_cache.enable(str(tmp_path))
  try:
    decoding.beam_search(model, params, SRC, beam_size=2)
    (entry,) = tmp_path.glob("*.pkl")
    entry.write_bytes(b"not a pickle")
    executable_cache.enable(str(tmp_path))  # A new process: nothing loaded in memory.
    executable_cache.stats.clear()
    got = np.asarray(decoding.beam_search(model, params, SRC, beam_size=2)[0])
    assert executable_cache.stats["dropped"] == 1 and executable_cache.stats["compiled"] == 1
    np.testing.assert_array_equal(got, expected)
  finally:
    executable_cache.disable()
    executable_cache.stats.clear()


def test_off_by_default_nothing_is_written(tiny, tmp_path, monkeypatch):
  model, params = tiny
  monkeypatch.setenv(executable_cache.ENV_DIR, str(tmp_path))
  executable_cache.disable()
  decoding.greedy_search(model, params, SRC)
  assert not list(tmp_path.iterdir())


def test_the_key_follows_shapes_statics_and_sources(tiny, monkeypatch):
  model, params = tiny
  args = (params, SRC, np.array([9, 9], np.int32), np.int32(0))
  static = {"config": model.config, "max_len": 9}
  key = executable_cache.program_key(decoding._greedy, args, static)
  assert key == executable_cache.program_key(decoding._greedy, args, dict(static))
  wider = (params, np.zeros((2, 6), np.int32)) + args[2:]
  assert key != executable_cache.program_key(decoding._greedy, wider, static)
  assert key != executable_cache.program_key(decoding._greedy, args, {**static, "max_len": 10})
  assert key != executable_cache.program_key(decoding._beam, args, static)
  on_device = (jax.device_put(params, jax.devices()[1]),) + args[1:]
  assert key != executable_cache.program_key(decoding._greedy, on_device, static)
  monkeypatch.setattr(executable_cache, "_environment", lambda: "an edited source file")
  assert key != executable_cache.program_key(decoding._greedy, args, static)


def test_the_source_digest_covers_every_module():
  digest = executable_cache._source_digest()
  assert len(digest) == 64 and digest == executable_cache._source_digest()


def test_old_entries_are_evicted_beyond_the_size_cap(tmp_path, monkeypatch):
  monkeypatch.setattr(executable_cache, "MAX_BYTES", 250)
  for i, name in enumerate(["old", "mid", "new"]):
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(b"x" * 100)
    os.utime(path, (1000 + i, 1000 + i))
  executable_cache._evict(str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.pkl", "new.pkl"]


def test_an_unwritable_directory_is_not_used(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  executable_cache.disable()
  assert executable_cache.enable(str(blocker / "sub")) == ""
  assert executable_cache.enabled_dir() is None
