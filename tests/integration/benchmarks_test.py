"""The benchmarks package: workloads, batches, harness, HLO/trace reading, and each CPU tool.

The recipe workload comes from configs/multi30k.py and the other shapes from TransformerConfig's
presets; packed batches look like the pipeline's; the harness gives a side its own environment
and survives a failing side; the profile of a tiny train step has every kind of work and its
shares add up to 100%; train_benchmark, decode_benchmark and data_benchmark run end to end at
tiny settings, each side in its own worker process.
"""

import dataclasses
import json
import os
import sys
import threading
from multiprocessing import Pipe

import numpy as np
import pytest

from benchmarks import (batches, data_benchmark, decode_benchmark, harness, hlo, matmul_ceiling,
                        peers, profile_step, train_benchmark, workload)
from transformer_jax import TransformerConfig


def test_recipe_workload_reads_the_config():
  # Whatever the recipe's settings are, the workload takes them from configs/multi30k.py.
  config = workload.recipe_config()
  w = workload.make_workload("recipe")
  assert (w.vocab, w.rows, w.length) == (config.data.vocab_size, config.data.batch_size,
                                         config.data.seq_len)
  assert w.num_train_steps == config.num_train_steps and w.parallelism == config.parallelism
  assert w.optim["weight_decay"] == config.optim.weight_decay and w.packed
  base = workload.make_workload("base")
  assert (base.vocab, base.rows, base.length, base.packed) == (8000, 32, 32, False)


def test_model_shapes_come_from_the_presets_and_the_recipe():
  for name in ("tiny", "base", "big"):
    preset = getattr(TransformerConfig, name)(vocab_size=100)
    assert workload.model_shape(name) == {k: getattr(preset, k) for k in workload.SHAPE_FIELDS}
  assert workload.model_shape("small") == dict(workload.make_workload("recipe").shape,
                                               dropout_rate=0.1)
  assert workload.model_shape("big", num_encoder_layers=1)["num_encoder_layers"] == 1
  with pytest.raises(ValueError, match="unknown model"):
    workload.model_shape("huge")


def test_random_batch_is_shifted_and_the_sources_come_first():
  b = batches.random_batch(50, 4, 6, seed=1)
  assert all(v.shape == (4, 6) and v.dtype == np.int32 for v in b.values())
  assert (b["tgt_in"][:, 0] == batches.BOS).all()
  assert (b["tgt_in"][:, 1:] == b["tgt_out"][:, :-1]).all()
  assert b["src"].min() >= 3 and b["src"].max() < 50
  padded = batches.random_batch(50, 4, 8, padding=True)
  assert (padded["src"][0, -3:] == 0).all() and (padded["tgt_out"][0, -2:] == 0).all()
  # The decoding peers' sources are the same draw with Marian's pad id left out.
  assert (peers.random_sources(51, 4, 6) == batches.random_batch(50, 4, 6)["src"]).all()


def test_packed_batch_is_laid_out_like_the_pipeline():
  b = batches.packed_batch(vocab=500, rows=16, length=64, seed=3)
  assert all(v.shape == (16, 64) and v.dtype == np.int32 for v in b.values())
  assert ((b["src"] != 0) == (b["src_segments"] > 0)).all()
  assert ((b["tgt_out"] != 0) == (b["tgt_segments"] > 0)).all()
  assert ((b["tgt_in"] != 0) == (b["tgt_segments"] > 0)).all()
  assert 0.9 < (b["tgt_out"] != 0).mean() < 0.97 and (b["tgt_segments"].max(1) >= 3).all()
  for r in range(16):
    for side in ("src", "tgt"):
      seg, pos = b[f"{side}_segments"][r], b[f"{side}_positions"][r]
      for s in range(1, seg.max() + 1):
        at = np.flatnonzero(seg == s)
        assert (np.diff(at) == 1).all() and (pos[at] == np.arange(len(at))).all()
        if side == "tgt":  # BOS + target, target + EOS.
          assert b["tgt_in"][r, at[0]] == 1 and b["tgt_out"][r, at[-1]] == 2
          assert (b["tgt_in"][r, at[1:]] == b["tgt_out"][r, at[:-1]]).all()
        else:
          assert b["src"][r, at[-1]] == 2
  assert workload.make_workload("recipe").target_tokens() > 3800


def test_model_flops_count_source_and_target_slots():
  shape = dict(d_model=8, num_heads=2, d_ff=16, num_encoder_layers=1, num_decoder_layers=1)
  B, L, D, F, V = 2, 4, 8, 16, 10
  enc = 2 * L * D * D * 4 + 2 * 2 * L * L * D + 2 * 2 * L * D * F
  dec = enc + 2 * L * D * D * 4 + 2 * 2 * L * L * D
  expected = 3 * B * (enc + dec + 2 * L * D * V)
  assert workload.model_flops_per_step(shape, V, B, L) == expected


def test_host_devices_env_replaces_the_device_count(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_foo=1")
  env = harness.host_devices_env(2)
  assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=2"]
  harness.one_device_env()
  assert os.environ["XLA_FLAGS"] == "--xla_foo=1"


def _env_factory(fail_after: int):
  calls = []

  def step():
    calls.append(1)
    if len(calls) > fail_after:
      raise ValueError("boom\nsecond line")

  return harness.Runner(info={"var": os.environ.get("BENCH_TEST_VAR")}, step=step)


def test_worker_sets_its_env_and_reports_a_failing_step(monkeypatch):
  monkeypatch.setenv("BENCH_TEST_VAR", "parent")  # Restored after the test.
  parent, child = Pipe()
  worker = threading.Thread(target=harness._serve, args=(child,))
  worker.start()
  parent.send({"BENCH_TEST_VAR": "worker"})
  parent.send((harness.reference(_env_factory), {"fail_after": 2}))
  assert parent.recv()["info"] == {"var": "worker"}
  parent.send(2)
  assert len(parent.recv()["times"]) == 2
  parent.send(1)
  assert parent.recv() == {"error": "ValueError: boom ... second line"}
  worker.join(timeout=10)
  assert not worker.is_alive()


def test_interleave_skips_a_failed_side():
  class FakeSide:
    def __init__(self, fail):
      self.fail, self.error, self.calls = fail, None, 0

    def run(self, n, record=True):
      del record
      self.calls += n
      if self.fail:
        self.error = "failed"

  ok, bad = FakeSide(False), FakeSide(True)
  harness.interleave([ok, bad], warmup=1, rounds=3, per_round=2)
  assert (ok.calls, bad.calls) == (7, 1)


def test_exclusive_and_busy_times():
  ev = lambda op, ts, dur, tid=1: {"ts": ts, "dur": dur, "pid": 1, "tid": tid,
                                   "args": {"hlo_op": op}}
  ops = [ev("while", 0, 10), ev("body1", 1, 3), ev("body2", 5, 2), ev("other", 4, 8, tid=2)]
  assert sorted(hlo.exclusive_ops(ops)) == [
      ("body1", 3), ("body2", 2), ("other", 8), ("while", 5)]
  assert hlo.busy_time(ops) == 12


def test_idle_time_until_a_dots_consumer_is_the_dots():
  module = hlo.parse_hlo("""HloModule m, entry_computation_layout={}

ENTRY %main (a: f32[8,8]) -> f32[8,8] {
  %a = f32[8,8]{1,0} parameter(0)
  %dot.1 = f32[8,8]{1,0} dot(%a, %a), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %dot.2 = f32[8,8]{1,0} dot(%a, %a), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %add.3 = f32[8,8]{1,0} add(%a, %a)
  ROOT %multiply.4 = f32[8,8]{1,0} multiply(%dot.1, %dot.2)
}
""")
  ev = lambda op, ts, dur: {"ts": ts, "dur": dur, "pid": 1, "tid": 1, "args": {"hlo_op": op}}
  # dot.1 and dot.2 return at 1 and 3; add.3 runs from 1 to 1.5; their consumer starts at 10.
  ops = [ev("dot.1", 0, 1), ev("add.3", 1, 0.5), ev("dot.2", 2, 1), ev("multiply.4", 10, 1)]
  pending = hlo.async_dot_time(ops, module)
  assert pending == {"dot.1": 0.5 + 3.5, "dot.2": 3.5}  # 1.5..2 is dot.1's; 3..10 shared.
  assert hlo.async_dot_time([ev("add.3", 0, 1), ev("multiply.4", 5, 1)], module) == {}


@pytest.fixture(scope="module")
def tiny_profile():
  w = workload.make_workload("recipe")
  w = dataclasses.replace(w, name="tiny", vocab=97, rows=4, length=16, model=dict(
      w.model, d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1, num_decoder_layers=1))
  return profile_step.profile_workload(w, steps=1, warmup=1, num_devices=1)


def test_profile_has_every_kind_and_adds_up(tiny_profile):
  p = tiny_profile
  for kind in (profile_step.MATMUL, profile_step.VOCAB, profile_step.ATTENTION,
               profile_step.LAYERNORM, profile_step.DROPOUT, profile_step.OPTIMIZER,
               profile_step.HOST):
    assert p.kinds.get(kind, 0.0) > 0.0, (kind, p.kinds)
  assert sum(p.shares().values()) == pytest.approx(1.0, abs=1e-6)
  roles = {role for g in p.matmuls.values() for role in g.roles}
  assert {"vocabulary projection fwd", "vocabulary projection bwd", "FFN wi fwd",
          "attention QK/PV fwd"} <= roles, roles
  assert "matmul 64x32 . 32x97" in profile_step.format_profile(p)


def test_matmul_ceiling_counts_every_executed_dot():
  import jax
  import jax.numpy as jnp

  def f(x, w):  # 3 scanned matmuls, one batched einsum; the gradient doubles both.
    y, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=3)
    return jnp.einsum("bij,bkj->bik", y[None].repeat(2, 0), y[None].repeat(2, 0)).sum()

  x, w = jnp.ones((16, 8)), jnp.ones((8, 8))
  text = jax.jit(jax.grad(f, argnums=(0, 1))).lower(x, w).compile().as_text()
  counts = hlo.executed_dots(hlo.parse_hlo(text))
  shape = hlo.DotShape
  # Forward and input gradient: 3 + 3 of [16, 8] . [8, 8]; weight gradient: 3 of [8, 16] . [16, 8].
  assert counts[shape(1, 16, 8, 8)] == 6 and counts[shape(1, 8, 16, 8)] == 3
  assert sum(n for s, n in counts.items() if s.batch == 2) == 2
  c = matmul_ceiling.Ceiling({s: (n, 1e-6) for s, n in counts.items()})
  assert c.seconds == pytest.approx(1e-6 * sum(counts.values()))
  assert c.flops == sum(n * s.flops for s, n in counts.items())
  assert "**all dots**" in matmul_ceiling.format_ceiling(c, peak=1e11)
  assert 0 < matmul_ceiling.time_dot(shape(2, 16, 8, 8), repeats=2) < 1.0


def test_malloc_env_preloads_tcmalloc_for_every_side(tmp_path, monkeypatch):
  assert harness.malloc_env("system") == {}
  lib = tmp_path / harness.TCMALLOC_LIBRARIES[0]
  lib.write_bytes(b"")
  assert harness.find_tcmalloc((str(tmp_path / "none"), str(tmp_path))) == str(lib)
  monkeypatch.setenv("LD_PRELOAD", "/other.so")
  assert harness.malloc_env("tcmalloc", str(lib)) == {"LD_PRELOAD": f"{lib}:/other.so"}
  monkeypatch.setattr(harness, "find_tcmalloc", lambda: None)
  with pytest.raises(ValueError, match="apt install libtcmalloc-minimal4"):
    harness.malloc_env("tcmalloc")
  with pytest.raises(ValueError, match="use system or tcmalloc"):
    harness.malloc_env("jemalloc")


# ----------------------------------------------------------------------------- the tools


@pytest.fixture
def keep_env(monkeypatch):
  """The tools set XLA_FLAGS, JAX_PLATFORMS and LD_PRELOAD for their workers: restored after."""
  for name in ("XLA_FLAGS", "JAX_PLATFORMS", "LD_PRELOAD"):
    value = os.environ.get(name)
    monkeypatch.setenv(name, value or "")  # Records the value (or its absence) to restore.
    if value is None:
      monkeypatch.delenv(name)


def _table_rows(out: str, shape: str) -> dict[str, str]:
  return {line.split(" | ")[1]: line for line in out.splitlines()
          if line.startswith(f"| {shape} |")}


def test_peers_import_neither_jax_nor_the_package():
  import subprocess
  code = ("import sys, benchmarks.peers; "
          "assert not {'jax', 'transformer_jax', 'torch'} & set(sys.modules), sys.modules.keys()")
  subprocess.run([sys.executable, "-c", code], cwd=harness.ROOT, check=True)


def test_train_benchmark_runs_every_side_at_tiny_shapes(capsys, keep_env):
  pytest.importorskip("torch")
  train_benchmark.main(["--shapes", "tiny", "--sides", "ours,ours-2dev,torch", "--vocab_size",
                        "64", "--batch", "4", "--length", "8", "--warmup", "0", "--rounds", "1",
                        "--per_round", "1"])
  out = capsys.readouterr().out
  rows = _table_rows(out, "tiny")
  assert set(rows) == {"ours", "ours-2dev", "torch"}, out  # None "(failed)".
  assert "parameter counts differ" not in out and "matmul-only bound" in out
  assert "torch eager" in out and "32 target tokens" in out


def test_decode_benchmark_runs_ours_beside_hugging_face(capsys, keep_env):
  pytest.importorskip("transformers")
  pytest.importorskip("ctranslate2")
  decode_benchmark.main(["--shapes", "tiny", "--sides", "ours,hf,ours-ct2-int8", "--vocab_size",
                         "64", "--batch", "2", "--src_len", "4", "--new_tokens", "3",
                         "--warmup", "0", "--rounds", "1", "--per_round", "1"])
  out = capsys.readouterr().out
  assert set(_table_rows(out, "tiny")) == {"ours", "hf", "ours-ct2-int8"}, out
  assert "exactly 3 new tokens each" in out


def test_data_benchmark_times_the_pipeline(multi30k_dir, capsys):
  # Without --model_step: its Transformer-base step (workload.build_training, as every
  # benchmark's) compiles for ~30 s on 2 cores; the train_benchmark smoke covers that builder.
  data_benchmark.main(["--data_dir", str(multi30k_dir), "--num_batches", "2", "--vocab_size",
                       "300", "--batch_size", "2", "--seq_len", "32"])
  out = capsys.readouterr().out
  assert "tokenize (cached)" in out and "packed" in out and "unpacked" in out


def test_input_pipeline_benchmark_measures_workers_and_demand(tmp_path, capsys):
  from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top
  out = tmp_path / "results.json"
  input_pipeline.main(["--pairs", "3000", "--shapes", "16x32,1024x64", "--workers", "0,1",
                       "--seconds", "0.3", "--work", str(tmp_path / "work"), "--out", str(out)])
  text = capsys.readouterr().out
  assert "needs" in text and "H200, base" in text  # The 1024x64 demand line.
  results = json.loads(out.read_text())["results"]
  assert [(r["rows"], r["workers"]) for r in results] == [(16, 0), (16, 1), (1024, 0), (1024, 1)]
  for r in results:
    assert r["tokens_per_s"] > 0 and 0.5 < r["density"] <= 1
    assert len(r["workers_memory"]) == r["workers"] and r["main"]["VmHWM"] > 0


def test_decoding_rule_reads_tune_decodings_hypotheses(tmp_path, capsys):
  from benchmarks import decoding_rule  # pylint: disable=g-import-not-at-top
  hyps = tmp_path / "hyps"
  hyps.mkdir()
  refs = [f"a b c d e f {i}" for i in range(60)]
  (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n")
  (hyps / "base.txt").write_text("\n".join(refs) + "\n")
  (hyps / "worse.txt").write_text("\n".join("a b x y" for _ in refs) + "\n")
  decoding_rule.main(["--hypotheses_dir", str(hyps), "--reference", str(tmp_path / "ref.txt"),
                      "--baseline", "base.txt", "--splits", "2", "--bootstrap_samples", "100",
                      "--out", str(tmp_path / "rule.json")])
  rule = json.loads((tmp_path / "rule.json").read_text())
  assert rule["baseline"] == "base" and rule["significant"] == rule["best_bleu"] == [0.0, 0.0]
  assert "significant at p < 0.05 (new)" in capsys.readouterr().out


def test_tpu_estimates_checks_the_pricing_and_breaks_the_kernel_down(capsys):
  from tests.unit.aot_test import needs_libtpu  # pylint: disable=g-import-not-at-top
  if needs_libtpu.args[0]:
    pytest.skip(needs_libtpu.kwargs["reason"])
  from benchmarks import tpu_estimates  # pylint: disable=g-import-not-at-top
  tpu_estimates.main(["--kernel_only"])
  out = capsys.readouterr().out
  # A megacore v5p device: priced as both cores, with or without the parallel grid.
  assert out.count("v5p-8: device = 2 TensorCore(s)") == 2
  assert "| v6e-8 | big | backward |" in out and "| HBM |" in out
