"""Compiling for TPU slices from this CPU host: topology names, the fit and time report."""

import dataclasses

import pytest

from transformer_jax import aot, experiment_config, losses, topology
from transformer_jax.config import TransformerConfig


def _tpu_available() -> bool:
  try:
    topology.devices(topology.parse("v5e-8"))
  except RuntimeError:
    return False
  return True


needs_libtpu = pytest.mark.skipif(not _tpu_available(),
                                  reason="libtpu is not installed (pip install -e '.[tpu]')")


def test_cloud_names_map_to_compiler_topologies():
  assert topology.parse("v5e-8").topology_name == "v5e:2x4"
  assert topology.parse("v4-8").topology_name == "v4:2x2x1"  # v4-N counts TensorCores.
  assert topology.parse("v5p-8").chips == 4
  assert topology.parse("v6e-8").chips == 8
  two = topology.parse("2xv5e-8")
  assert (two.num_slices, two.chips) == (2, 16)
  for bad, words in (("v9-8", "Cloud names it"), ("v5e-7", "sizes: v5e-1, v5e-4"),
                     ("v4-6", "v4-8")):
    with pytest.raises(ValueError, match=words):
      topology.parse(bad)


def test_model_flops_count_the_papers_base_step():
  base = TransformerConfig.base(37_000)
  # Per token slot (source or target): 6 x ~22M non-embedding parameters per side is ~0.13
  # GFLOP; the output projection (2 x 512 x 37,000 x 3 per target) and attention add the rest.
  per_slot = aot.model_flops_per_step(base, rows=1, length=64) / 128
  assert 0.18e9 < per_slot < 0.2e9
  assert aot.model_flops_per_step(base, rows=4, length=64) == 4 * per_slot * 128


def _report(**changes) -> aot.TrainReport:
  fields = dict(topology="v5e-8", parallelism="jit", fsdp=False, remat=False,
                tokens_per_chip=65_536, rows_per_device=512, params_gib=0.2, optimizer_gib=0.5,
                temp_gib=9.0, total_gib=10.0, capacity_gib=16.0, step_seconds=0.2,
                model_tflop_per_chip=13.0, xla_tflop_per_chip=14.0, mfu=0.33,
                collectives={"all-reduce": 5}, compile_seconds=50.0)
  return aot.TrainReport(**{**fields, **changes})


def test_the_largest_fit_and_the_advice_when_it_does_not_fit():
  half = _report(tokens_per_chip=32_768, total_gib=5.5)
  assert aot.largest_fitting_tokens(half, _report()) == 32_768 + int(10.5 / (4.5 / 32_768))
  assert "Fits" in aot.advice(_report())
  too_big = _report(total_gib=20.0)
  assert not too_big.fits
  assert "fsdp=True" in aot.advice(too_big) and "remat=True" in aot.advice(too_big)
  assert "fsdp" not in aot.advice(dataclasses.replace(too_big, fsdp=True))


def test_hosts_and_the_input_a_host_must_feed():
  assert (topology.parse("v5e-8").hosts, topology.parse("v5e-32").hosts) == (1, 4)
  assert topology.parse("v5p-8").chips_per_host == 4 and topology.parse("v5p-32").hosts == 4
  assert topology.parse("v5e-4").chips_per_host == 4 and topology.parse("2xv6e-8").hosts == 2
  demand = aot.input_demand(_report(), seq_len=128)  # 65,536 slots per chip, 8 chips a host.
  assert demand.rows_per_host == 65_536 * 8 // 256 == 2048
  assert demand.slots_per_second == pytest.approx(65_536 * 8 / 0.2)
  assert "2048 rows x 128 per step: 2,621,440 token slots/s" in demand.describe()
  fast = {"slots_per_s": 3e6, "tokens_per_s": 2.8e6, "density": 0.93}
  assert "keeps up (1.1x)" in demand.verdict(fast, workers=3)
  slow = dict(fast, slots_per_s=1e6)
  assert "falls short (0.38x)" in demand.verdict(slow, workers=0)


def _tiny_config(parallelism: str):
  config = experiment_config.base_config(model="tiny")
  config.data.vocab_size = 6_000
  config.parallelism = parallelism
  return experiment_config.from_config_dict(config)


@needs_libtpu
@pytest.mark.parametrize("parallelism", ["jit", "shard_map"])
@pytest.mark.slow
def test_tiny_training_step_compiles_for_a_v5e_slice(parallelism, monkeypatch):
  # 1 MiB chunks are 64 tokens at 6,000 words: the loss loop runs 64 chunks per device, so the
  # correction for loops counted once is exercised.
  monkeypatch.setattr(losses, "ACCELERATOR_CHUNK_BYTES", 2**20)
  report = aot.compile_train(_tiny_config(parallelism), "v5e-8", tokens_per_chip=8_192)
  assert (report.tokens_per_chip, report.rows_per_device) == (8_192, 64)
  assert report.fits and report.capacity_gib == 16.0
  assert 0 < report.params_gib < report.optimizer_gib < report.total_gib
  assert report.step_seconds > 0 and 0 < report.mfu < 1
  # Counted once, the loss loop's 64 chunks would leave XLA's count far below the model's.
  assert report.xla_tflop_per_chip > 0.9 * report.model_tflop_per_chip
  assert report.collectives["all-reduce"] >= 1  # The gradients' sum over the 8 chips.
  # Replicated parameters: no activations moved. (jit: the Pallas attention kernel runs under
  # shard_map; without the step's mesh Mosaic would refuse to compile, unpartitionable.)
  assert report.collectives["all-gather"] == 0
  # The attention kernel's calls, priced alone, are a part of the step; the vector-unit bound
  # can only lengthen them.
  assert 0 < report.kernel_seconds < report.step_seconds
  assert report.kernel_vector_seconds >= report.kernel_seconds
  assert "| v5e-8 |" in aot.train_table([report])


def test_vector_bound_replaces_the_kernels_roofline_in_the_step():
  report = _report(kernel_seconds=0.01, kernel_vector_seconds=0.03)
  assert report.vector_bound_seconds == pytest.approx(report.step_seconds + 0.02)
  assert report.vector_bound_mfu == pytest.approx(
      report.mfu * report.step_seconds / (report.step_seconds + 0.02))
  assert f"({report.kernel_share:.0%})" in aot.train_table([report])
  assert "none | -" in aot.train_table([_report()])  # XLA's attention: no kernel.


def test_chip_clocks_follow_from_the_peaks():
  assert topology.CHIPS["v5e"].clock_ghz == pytest.approx(1.5, rel=0.01)
  assert topology.CHIPS["v5p"].clock_ghz == pytest.approx(1.75, rel=0.01)


def test_collectives_are_counted_with_tuple_types():
  hlo = """
  %all-reduce.1 = (f32[8]{0}, /*index=1*/f32[4]{0}) all-reduce(%a, %b), replica_groups={}
  %ag = f32[16]{0} all-gather-start(%all-reduce.1), dimensions={0}
  %x = f32[8]{0} add(%all-reduce.1, %all-reduce.1)
  """
  counts = aot.count_collectives(hlo)
  assert counts["all-reduce"] == 1 and counts["all-gather"] == 1 and counts["reduce-scatter"] == 0
