"""The matmul-only bound of a compiled train step: its dots, each timed alone at its best.

  python benchmarks/matmul_ceiling.py [--shapes recipe,base] [--repeats 30]

Reads every dot of the step's optimized HLO (`compiled.as_text()`) with the number of times one
step executes it (dots in a while loop's body count its `known_trip_count` times), groups them by
shape (batch x (m x k . k x n)), and times one jit-compiled float32 `jnp.matmul` of each shape
alone, the best of `--repeats`, in both operand layouts a step uses (row-major, and contracting
over the leading axis as weight gradients do), keeping the faster. The sum over the step's dots
is the time a step would take if everything else (softmaxes, LayerNorm, dropout, the optimizer,
layout copies, dispatch) cost nothing and each matmul ran as fast as it can alone on this CPU:
no implementation built on XLA's CPU matmuls can beat it. `train_benchmark.py` reports it beside
the measured step (share of the matmul peak and ratio to PyTorch the step could at most reach).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import profile_step  # noqa: E402


@dataclasses.dataclass(frozen=True)
class DotShape:
  """A dot as a batched matmul: `batch` x ([m, k] . [k, n])."""
  batch: int
  m: int
  k: int
  n: int

  @property
  def flops(self) -> float:
    return 2.0 * self.batch * self.m * self.k * self.n

  def __str__(self) -> str:
    mm = f"{self.m}x{self.k} . {self.k}x{self.n}"
    return mm if self.batch == 1 else f"{self.batch}x({mm})"


def dot_shape(hlo: profile_step.Hlo, dot: profile_step.Instr) -> DotShape:
  """The batched-matmul shape of an HLO dot instruction."""
  return DotShape(*profile_step.dot_dims(hlo, dot))


def _trip_count(ins: profile_step.Instr) -> int:
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attrs)
  if not m:
    raise ValueError(f"while loop {ins.name} has no known trip count: the bound needs one")
  return int(m.group(1))


def executed_dots(hlo_text: str) -> collections.Counter:
  """{DotShape: executions per step} of an optimized HLO module (entry computation down)."""
  hlo = profile_step.parse_hlo(hlo_text)
  entry = re.search(r"^ENTRY %(\S+) ", hlo_text, re.MULTILINE).group(1)
  counts = collections.Counter()

  def visit(computation: str, times: int) -> None:
    for ins in (hlo.instrs[n] for n in hlo.computations.get(computation, [])):
      if ins.opcode == "dot":
        counts[dot_shape(hlo, ins)] += times
      elif ins.opcode == "while":
        body = re.search(r"body=%([\w.-]+)", ins.attrs).group(1)
        visit(body, times * _trip_count(ins))
      elif ins.opcode in ("fusion", "call", "custom-call", "async-start"):
        for called in ins.calls:
          visit(called, times)
      elif ins.opcode == "conditional":
        raise ValueError(f"conditional {ins.name}: the bound does not know which branch runs")

  visit(entry, 1)
  return counts


def time_dot(shape: DotShape, repeats: int = 30) -> float:
  """Best seconds of one float32 matmul of `shape` alone, over two operand layouts."""
  import jax
  import jax.numpy as jnp
  lead = (shape.batch,) if shape.batch > 1 else ()
  a = jax.random.normal(jax.random.key(0), lead + (shape.m, shape.k), jnp.float32)
  b = jax.random.normal(jax.random.key(1), lead + (shape.k, shape.n), jnp.float32)
  a_t = jnp.swapaxes(a, -1, -2).copy()  # [k, m]: the layout of a weight gradient's operand.
  candidates = [(jax.jit(jnp.matmul), (a, b)),
                (jax.jit(lambda x, y: jnp.matmul(jnp.swapaxes(x, -1, -2), y)), (a_t, b))]
  best = math.inf
  for fn, args in candidates:
    fn(*args).block_until_ready()
    for _ in range(repeats):
      start = time.perf_counter()
      fn(*args).block_until_ready()
      best = min(best, time.perf_counter() - start)
  return best


@dataclasses.dataclass
class Ceiling:
  """The matmul-only bound of one step: per shape (count, best seconds alone) and the total."""
  dots: dict[DotShape, tuple[int, float]]

  @property
  def seconds(self) -> float:
    return sum(count * t for count, t in self.dots.values())

  @property
  def flops(self) -> float:
    return sum(count * s.flops for s, (count, _) in self.dots.items())


def measure(hlo_text: str, repeats: int = 30) -> Ceiling:
  """Times every dot shape of the step alone (see the module docstring)."""
  counts = executed_dots(hlo_text)
  return Ceiling({s: (c, time_dot(s, repeats)) for s, c in counts.items()})


def format_ceiling(c: Ceiling, peak: float) -> str:
  """A Markdown table: per shape, executions, time alone and FLOP/s, share of the bound."""
  rows = []
  for s, (count, t) in sorted(c.dots.items(), key=lambda kv: -kv[1][0] * kv[1][1]):
    rows.append([str(s), count, f"{t * 1e6:,.1f}", f"{s.flops / t / 1e9:,.1f}",
                 f"{s.flops / t / peak:.0%}", f"{count * t * 1e3:,.1f}",
                 f"{count * t / c.seconds:.0%}"])
  rows.append(["**all dots**", sum(n for n, _ in c.dots.values()), "",
               f"{c.flops / c.seconds / 1e9:,.1f}", f"{c.flops / c.seconds / peak:.0%}",
               f"**{c.seconds * 1e3:,.1f}**", "100%"])
  return harness.markdown_table(
      ["dot (batch x (m x k . k x n))", "per step", "alone, us (best)", "GFLOP/s alone",
       "of peak", "ms / step", "of bound"], rows)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--shapes", default="recipe", help="Comma-separated: recipe, base, small.")
  p.add_argument("--repeats", type=int, default=30, help="Timed calls per dot shape and layout.")
  p.add_argument("--vocab_size", type=int, default=8000, help="base / small vocabulary.")
  args = p.parse_args(argv)
  harness.one_device_env()
  import train_benchmark
  peak = train_benchmark.matmul_peak()
  for name in args.shapes.split(","):
    w = train_benchmark.make_workload(name, vocab=args.vocab_size)
    ours = train_benchmark.build_ours(w)
    c = measure(ours.compiled.as_text(), args.repeats)
    model = train_benchmark.model_flops_per_step(w.shape, w.vocab, w.rows, w.length)
    print(f"{name}: the step's dots alone take {c.seconds * 1e3:,.1f} ms ({c.flops / 1e9:,.2f} "
          f"GFLOP in the HLO, {model / 1e9:,.2f} counted by model_flops_per_step): at most "
          f"{model / c.seconds / peak:.0%} of the {peak / 1e9:,.1f} GFLOP/s matmul peak\n")
    print(format_ceiling(c, peak), flush=True)
    print()


if __name__ == "__main__":
  main()
