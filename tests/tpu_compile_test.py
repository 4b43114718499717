"""tpu_compile: the train step compiled for a compile-only TPU slice on this CPU host."""

import pytest

from transformer_jax import experiment_config
from transformer_jax import tpu_compile as tc

_HLO = """\
HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %c = s32[]{:T(128)} constant(6)
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %x = f32[8] get-tuple-element(%p), index=1
  %ar = f32[8] all-reduce(%x), replica_groups={{0,1}}, to_apply=%add
  %cp-start = (f32[8], f32[8]) collective-permute-start(%ar), source_target_pairs={{0,1}}
  %cp-done = f32[8] collective-permute-done(%cp-start)
  ROOT %t = (s32[], f32[8]) tuple(%i, %cp-done)
}

ENTRY %main (x: f32[8]) -> (f32[8], /*index=1*/f32[8]) {
  %x = f32[8] parameter(0)
  %ag = (f32[8], /*index=1*/f32[16]) all-gather-start(%x), dimensions={0}
  %agd = f32[16] all-gather-done(%ag)
  %w = (s32[], f32[8]) while(%init), condition=%cond, body=%body
  ROOT %r = (f32[8], f32[8]) tuple(%x, %x)
}
"""


def test_collectives_are_counted_once_per_loop_iteration():
  counts = tc.count_collectives(_HLO)
  assert counts["all-gather"] == 1  # start/done: one collective.
  assert counts["all-reduce"] == 6 and counts["collective-permute"] == 6
  assert counts["reduce-scatter"] == counts["all-to-all"] == 0


def test_cloud_names():
  assert tc.parse_topology("v5e-8").compiler_name == "v5e:2x4"
  assert tc.parse_topology("v4-8").compiler_name == "v4:2x2x1"  # v4-N counts TensorCores.
  assert tc.parse_topology("v5p-8").chips == 4
  assert tc.parse_topology("v5e-32").compiler_name == "v5e:4x8"
  two = tc.parse_topology("2xv6e-8")
  assert (two.num_slices, two.chips) == (2, 16)
  for bad in ("v9-8", "v5e-7", "v4-6"):
    with pytest.raises(ValueError):
      tc.parse_topology(bad)


def _libtpu_reason() -> str:
  try:
    tc.tpu_devices(tc.parse_topology("v5e-4"))
  except RuntimeError as e:
    return str(e)
  return ""


_NO_LIBTPU = _libtpu_reason()
needs_libtpu = pytest.mark.skipif(bool(_NO_LIBTPU), reason=f"TPU compiler absent: {_NO_LIBTPU}")


def _tiny(parallelism: str, **model):
  config = experiment_config.base_config(model="tiny")
  config.data.vocab_size = 512
  config.data.seq_len = config.data.max_len = 32
  config.parallelism = parallelism
  config.model.update(model)
  return experiment_config.from_config_dict(config)


@needs_libtpu
@pytest.mark.parametrize("parallelism,scan_layers", [("jit", False), ("shard_map", True)])
def test_tiny_train_step_fits_a_v5e_slice(parallelism, scan_layers):
  config = _tiny(parallelism, scan_layers=scan_layers)
  report = tc.compile_train(config, "v5e-4", tokens_per_chip=4_096)
  assert (report.tokens_per_chip, report.rows_per_device) == (4_096, 64)
  assert report.fits and report.capacity_gib == 16.0
  assert 0 < report.params_gib < report.optimizer_gib < report.used_gib < 1.0
  assert report.step_seconds > 0 and 0 < report.mfu < 1
  assert report.collectives["all-reduce"] >= 1  # The gradients' sum over the 4 chips.
  if scan_layers:  # Each stack's loop was counted once; the estimate counts every layer.
    assert report.step_seconds > report.raw_seconds
  assert report.uncounted_loops == 0
  assert "v5e-4" in tc.train_table([report])
