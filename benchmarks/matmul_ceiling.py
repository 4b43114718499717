"""The matmul-only bound of a compiled train step: its dots, each timed alone at its best.

  python -m benchmarks.matmul_ceiling [--shapes recipe,base] [--repeats 30]

Reads every dot of the step's optimized HLO (`compiled.as_text()`) with the number of times one
step executes it (`hlo.executed_dots`: dots in a while loop's body count its `known_trip_count`
times), grouped by shape (batch x (m x k . k x n)), and times one jit-compiled float32
`jnp.matmul` of each shape alone, the best of `--repeats`, in both operand layouts a step uses
(row-major, and contracting over the leading axis as weight gradients do), keeping the faster.
The sum over the step's dots is the time a step would take if everything else (softmaxes,
LayerNorm, dropout, the optimizer, layout copies, dispatch) cost nothing and each matmul ran as
fast as it can alone on this CPU: no implementation built on XLA's CPU matmuls can beat it.
train_benchmark.py reports it beside the measured step (share of the matmul peak and ratio to
PyTorch the step could at most reach).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import jax
import jax.numpy as jnp

from benchmarks import harness, workload
from benchmarks.hlo import DotShape, executed_dots, parse_hlo

SHAPES = ("recipe", "base", "small", "tiny")


def time_dot(shape: DotShape, repeats: int = 30) -> float:
  """Best seconds of one float32 matmul of `shape` alone, over two operand layouts."""
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
  counts = executed_dots(parse_hlo(hlo_text))
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
  """Runs the command (see the module docstring)."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--shapes", default="recipe", help=f"Comma-separated: {', '.join(SHAPES)}.")
  p.add_argument("--repeats", type=int, default=30, help="Timed calls per dot shape and layout.")
  p.add_argument("--vocab_size", type=int, default=8000, help="base / small / tiny vocabulary.")
  args = p.parse_args(argv)
  for name in args.shapes.split(","):
    if name not in SHAPES:
      p.error(f"--shapes: unknown shape {name!r}; choose among {', '.join(SHAPES)}.")
  workload.use_cpu()
  peak, _ = workload.matmul_peak()
  for name in args.shapes.split(","):
    w = workload.make_workload(name, vocab=args.vocab_size)
    step = workload.build_workload(w).compile(w.batch())
    c = measure(step.compiled.as_text(), args.repeats)
    model = workload.model_flops_per_step(w.shape, w.vocab, w.rows, w.length)
    print(f"{name}: the step's dots alone take {c.seconds * 1e3:,.1f} ms ({c.flops / 1e9:,.2f} "
          f"GFLOP in the HLO, {model / 1e9:,.2f} counted by model_flops_per_step): at most "
          f"{model / c.seconds / peak:.0%} of the {peak / 1e9:,.1f} GFLOP/s matmul peak\n")
    print(format_ceiling(c, peak), flush=True)
    print()


if __name__ == "__main__":
  main()
