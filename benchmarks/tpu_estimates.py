"""docs/tpu.md's tables: the training step compiled for TPU slices, with the kernel's share.

    python -m benchmarks.tpu_estimates [--rows NAME,...] [--efforts -1,0] [--out FILE.jsonl]

Needs libtpu (`pip install -e ".[tpu]"`); runs on any host (compile-only devices). First it
checks how the compiler prices a Pallas call on each chip (a kernel declared at 1e12 FLOPs,
against the chip's and one TensorCore's peak, with and without "parallel" grid semantics), then
compiles each row (`aot.compile_train`) at each effort and prints the table. Each row is also
appended to `--out` as it finishes: a long run keeps what it has. All figures are the
compiler's estimates, the attention kernel priced at its declared roofline.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import time

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from transformer_jax import aot, attention_kernel, experiment_config, kernel_cost, topology

CONFIGS = {"base": "configs/wmt14_base.py", "big": "configs/wmt14_big.py"}


@dataclasses.dataclass(frozen=True)
class Row:
  model: str
  slice: str
  tokens_per_chip: int = 65_536
  parallelism: str = "jit"
  fsdp: bool = False
  remat: bool = False

  @property
  def name(self) -> str:
    extras = [self.parallelism] + ["fsdp"] * self.fsdp + ["remat"] * self.remat
    return f"{self.model}-{self.slice}-{self.tokens_per_chip // 1024}k-{'-'.join(extras)}"


# The headline rows (the targets) first, then the rest of docs/tpu.md's table.
ROWS = [Row("base", "v5e-8"), Row("base", "v5p-8"), Row("big", "v5p-8"),
        Row("big", "v6e-8", 131_072), Row("big", "v6e-8"),
        Row("base", "v5e-8", parallelism="shard_map"),
        Row("base", "v5e-8", parallelism="shard_map", fsdp=True),
        Row("base", "v5p-8", parallelism="shard_map"), Row("big", "v5p-8", parallelism="shard_map"),
        Row("big", "v6e-8", parallelism="shard_map"),
        Row("big", "v6e-8", parallelism="shard_map", fsdp=True),
        Row("big", "v6e-8", 131_072, parallelism="shard_map", fsdp=True),
        Row("big", "v5e-8", 32_768), Row("big", "v5e-8", 32_768, remat=True),
        Row("base", "v4-8"), Row("base", "v6e-8")]


def _priced_seconds(device, flops: int, nbytes: int, semantics=None) -> float:
  """The compiler's time for a Pallas call that declares `flops` and `nbytes`."""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2

  x = jax.ShapeDtypeStruct((1024, 128), jnp.float32,
                           sharding=jax.sharding.SingleDeviceSharding(device))
  call = pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), grid=(8,),
      in_specs=[pl.BlockSpec((128, 128), lambda i: (i, 0))],
      out_specs=pl.BlockSpec((128, 128), lambda i: (i, 0)),
      cost_estimate=pl.CostEstimate(flops=flops, transcendentals=0, bytes_accessed=nbytes),
      compiler_params=pltpu.CompilerParams(dimension_semantics=semantics))
  analysis = jax.jit(call).lower(x).compile().cost_analysis()
  return (analysis[0] if isinstance(analysis, list) else analysis)["optimal_seconds"]


def megacore_pricing(declared_flops: int = 10**12) -> list[str]:
  """How the compiler prices a Pallas call declared at `declared_flops`, per chip and grid."""
  lines = []
  for name in ("v4-8", "v5e-8", "v5p-8", "v6e-8"):
    topo = topology.parse(name)
    devices = topology.devices(topo)
    cores = topo.chip.cores * topo.chips / len(devices)
    for semantics in (None, ("parallel",)):
      seconds = _priced_seconds(devices[0], declared_flops, 1_000, semantics)
      lines.append(f"{name}: device = {cores:g} TensorCore(s); grid {semantics or 'default'}: "
                   f"priced at {declared_flops / seconds / 1e12:.1f} TFLOP/s (chip peak "
                   f"{topo.chip.peak_tflops:g}, one core "
                   f"{topo.chip.peak_tflops / topo.chip.cores:g})")
  return lines


def kernel_breakdown(rows: int = 256, length: int = 128) -> list[str]:
  """Per pass of one attention call (`rows` x `length`, base and big heads), on each chip: the
  time of its HBM bytes, MXU FLOPs (as priced), vector ops and transcendentals (as assumed in
  aot.py); a markdown table."""
  lines = ["| chip | model | pass | HBM MB | HBM us | MXU us | VPU us | EUP us | bound |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name in ("v5e-8", "v5p-8", "v6e-8"):
    topo = topology.parse(name)
    devices = topology.devices(topo)
    cores = topo.chip.cores * topo.chips / len(devices)
    per_byte = _priced_seconds(devices[0], 0, 10**10) / 10**10
    per_flop = _priced_seconds(devices[0], 10**12, 1_000) / 10**12
    cycles = topo.chip.clock_ghz * 1e9 * cores
    for model, heads in (("base", 8), ("big", 16)):
      works = attention_kernel.fused_attention_work(rows, length, length, heads, 64,
                                                    causal=False)
      for pass_name, work, arrays in (("forward", works[0], 4), ("backward", works[1], 7)):
        nbytes = (arrays * kernel_cost.tiled_bytes((rows, heads * 64, length), jnp.bfloat16)
                  + kernel_cost.tiled_bytes((rows, length, 1), jnp.int32)
                  + kernel_cost.tiled_bytes((rows, 1, length), jnp.int32))
        times = {"HBM": nbytes * per_byte, "MXU": work.flops * per_flop,
                 "VPU": work.vector_ops / (aot.VALU_SLOTS * aot.VREG_ELEMENTS * cycles),
                 "EUP": work.transcendentals / (aot.EUP_SLOTS * aot.VREG_ELEMENTS * cycles)}
        lines.append(f"| {name} | {model} | {pass_name} | {nbytes / 1e6:.1f} | "
                     + " | ".join(f"{t * 1e6:.0f}" for t in times.values())
                     + f" | {max(times, key=times.get)} |")
  return lines


def _config(row: Row) -> experiment_config.ExperimentConfig:
  """The row's preset with its mode, FSDP and remat, as train.py would read it."""
  spec = importlib.util.spec_from_file_location(row.model, CONFIGS[row.model])
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  values = module.get_config()
  values.parallelism, values.fsdp, values.model.remat = row.parallelism, row.fsdp, row.remat
  return experiment_config.from_config_dict(values)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", default="", help="Row names (see ROWS); all by default.")
  parser.add_argument("--efforts", default="-1", help="Compiler efforts, e.g. -1,0.")
  parser.add_argument("--effort0_rows", type=int, default=0,
                      help="Also compile the first N rows at effort 0.")
  parser.add_argument("--out", default="/tmp/tpu_estimates.jsonl")
  parser.add_argument("--kernel_only", action="store_true",
                      help="Only the pricing check and the kernel's per-pass breakdown.")
  args = parser.parse_args(argv)
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  print("\n".join(megacore_pricing()), flush=True)
  print("\n".join(kernel_breakdown()), flush=True)
  if args.kernel_only:
    return
  wanted = set(filter(None, args.rows.split(",")))
  rows = [r for r in ROWS if not wanted or r.name in wanted]
  jobs = [(r, float(e)) for r in rows for e in args.efforts.split(",")]
  jobs += [(r, 0.0) for r in rows[:args.effort0_rows]]
  reports = []
  for row, effort in jobs:
    start = time.perf_counter()
    report = aot.compile_train(_config(row), row.slice, tokens_per_chip=row.tokens_per_chip,
                               effort=effort)
    reports.append((row, report))
    print(f"{row.name} effort {effort:g}: {report.step_seconds:.3f} s, MFU {report.mfu:.1%}, "
          f"kernel {report.kernel_share:.1%}, VPU-bound MFU {report.vector_bound_mfu:.1%}, "
          f"1 s offsets added back {report.offsets} ({time.perf_counter() - start:.0f} s)",
          flush=True)
    with open(args.out, "a") as f:
      f.write(json.dumps({"row": row.name, "effort": effort, **dataclasses.asdict(report)}) + "\n")
  table = aot.train_table([r for _, r in reports]).splitlines()
  print("| model | effort " + table[0])
  print("|---|---" + table[1])
  for (row, report), line in zip(reports, table[2:]):
    print(f"| {row.model} | {report.effort:g} " + line)


if __name__ == "__main__":
  main()
