"""Where our compiled train step spends its time: shares of step time by kind of work.

  python -m benchmarks.profile_step [--shapes recipe,base] [--steps 3] [--warmup 2]
      [--devices 1] [--markdown FILE]

Builds the step as every benchmark does (`workload.build_training`: `steps.compile_steps`,
exactly as train.py; the recipe from configs/multi30k.py, packed rows) on XLA CPU devices, runs
`--warmup` steps, then traces `--steps` steps with the JAX profiler (`jax.profiler.trace`; each
step inside a `TraceAnnotation`). The trace's `*.trace.json.gz` holds every executed XLA CPU
thunk (`args.hlo_op`, its start and duration, its thread); the compiled HLO text
(`compiled.as_text()`) says what each thunk is: its fused instructions, their shapes and
`metadata.op_name` (the jax name stack, e.g.
`.../decoder/layers_0/ffn_block/feed_forward/wi/dot_general`, `transpose(...)` on the backward
pass). Each thunk gets one kind of work (`classify`): a thunk holding a dot is a matmul, grouped
by its shape (the vocabulary projection named); else its instructions vote, weighted by their
element counts, among the kinds in `KINDS`. Times are exclusive (a while loop's thunk minus the
body thunks it ran). A plain `dot` thunk only starts its Eigen matmul, so the idle time until
its first consumer starts is counted as that dot's (`hlo.async_dot_time`). Host / dispatch is
the step's wall time (the annotation) minus the time at least one thunk (or such a dot) ran; the
thunks' summed time is scaled onto that busy time when they overlap, so that the shares add up
to 100%.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import tempfile

import jax

from benchmarks import harness, workload
from benchmarks.hlo import (DotShape, Hlo, Instr, async_dot_time, busy_time, dot_shape,
                            exclusive_ops, fused_members, load_trace, parse_hlo, step_ops)

VOCAB = "vocabulary loss / softmax (fwd + bwd)"
ATTENTION = "attention softmax + masks"
LAYERNORM = "LayerNorm"
DROPOUT = "dropout (RNG bits + masks)"
EMBEDDING = "embedding lookup / positions"
OPTIMIZER = "optimizer update (+ clipping, grad norm)"
LAYOUT = "transposes / copies (layout)"
COLLECTIVE = "collectives (all-reduce, waiting for the other devices)"
OTHER = "other elementwise (bias, ReLU, residual, reductions)"
HOST = "host / dispatch (wall - device busy)"
MATMUL = "matmul"
KINDS = (VOCAB, ATTENTION, LAYERNORM, DROPOUT, EMBEDDING, OPTIMIZER, LAYOUT, COLLECTIVE, OTHER)
ANNOTATION = "profile_step"
SHAPES = ("recipe", "base", "small", "tiny")
_NO_WORK = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element"}


# ----------------------------------------------------------------------------- classification


def _scope(op_name: str) -> str:
  """The op_name without the outer `jit(...)/` of the step."""
  return re.sub(r"^jit\([^)]*\)/", "", op_name)


def matmul_label(hlo: Hlo, dot: Instr, vocab: int) -> tuple[DotShape, str]:
  """(shape, role such as 'FFN wi fwd') of a dot."""
  shape = dot_shape(hlo, dot)
  s = _scope(dot.op_name)
  roles = (("vocabulary projection", ("attend", "output_projection")),
           ("FFN wi", ("feed_forward/wi",)), ("FFN wo", ("feed_forward/wo",)),
           ("Q/K/V", ("/query/", "/key/", "/value/")), ("attention out", ("/out/",)),
           ("attention QK/PV", ("BTNH", "BNTS", "dot_product_attention", "bthk", "bhts")))
  role = next((r for r, keys in roles if any(key in s for key in keys)), "other")
  if vocab in (shape.m, shape.n, shape.k):
    role = "vocabulary projection"
  elif role == "other" and shape.batch > 1:
    role = "attention QK/PV"
  # The fused loss (losses.projected_cross_entropy) computes its gradient in a named scope.
  fused_grad = "projected_cross_entropy" in s and "/backward/" in s
  direction = "bwd" if "transpose(" in s or fused_grad else "fwd"
  return shape, f"{role} {direction}"


_DROPOUT_SCOPE = re.compile(  # Dropout is applied in SubLayer / Embedder scope, not a module.
    r"(_block|embedder)/((jit\(_where\)/)?(div|select_n|lt|convert_element_type)$|while\b)")
_LAYOUT = {"copy", "transpose"}


def instr_kind(ins: Instr, hlo: Hlo, vocab: int) -> str | None:
  """The kind of work of one non-dot instruction (None: no work of its own)."""
  if ins.opcode in _NO_WORK:
    return None
  if re.match(r"(all-reduce|all-gather|reduce-scatter|all-to-all|collective-)", ins.opcode):
    return COLLECTIVE
  s = _scope(ins.op_name)
  operand_types = {hlo.instrs[o].dtype for o in ins.operands if o in hlo.instrs}
  if (ins.dtype in ("u32", "u64") or "u32[" in ins.shape or "threefry" in s
      or "random_bits" in s or _DROPOUT_SCOPE.search(s)
      or (ins.opcode == "compare" and "u32" in operand_types)):
    return DROPOUT
  if s and "jvp(" not in s and "transpose(" not in s:
    return OPTIMIZER  # Outside the gradient: the update, clipping and the metrics.
  if vocab in ins.dims or "attend" in s or "output_projection" in s \
      or "projected_cross_entropy" in s \
      or re.match(r"(transpose\()?jvp\(\)", s):
    return VOCAB  # The loss is outside any module: jvp() / transpose(jvp()).
  if ins.opcode in _LAYOUT:
    return LAYOUT
  if "embedder" in s or "embedding" in s:
    return EMBEDDING
  if re.search(r"(self|cross)_attention/(?!(query|key|value|out)/)", s) or (
      ins.dtype == "pred" and len(ins.dims) == 4):
    return ATTENTION
  if re.search(r"(^|/)(final_)?norm/|LayerNorm", s):
    return LAYERNORM
  return OTHER


@dataclasses.dataclass(frozen=True)
class Thunk:
  """What one thunk does: its kinds of work (fractions summing to 1) and, for a matmul, the
  shape and role of its biggest dot and the FLOPs of all its dots."""
  kinds: dict[str, float]
  shape: str = ""
  role: str = ""
  flops: float = 0.0

  @property
  def kind(self) -> str:
    return max(self.kinds, key=self.kinds.get)


def classify(hlo: Hlo, name: str, vocab: int) -> Thunk:
  """What the thunk `name` does: `MATMUL` when it holds a dot (any fused epilogue included);
  else its instructions' kinds, each weighted by its element count, share the thunk."""
  members = fused_members(hlo, name)
  dots = [m for m in members if m.opcode in ("dot", "convolution")]
  if dots:
    labels = [matmul_label(hlo, d, vocab) for d in dots]
    shape, role = max(labels, key=lambda x: x[0].flops)
    return Thunk({MATMUL: 1.0}, str(shape), role, sum(x[0].flops for x in labels))
  votes = collections.Counter()
  for m in members:
    kind = instr_kind(m, hlo, vocab)
    if kind is not None:
      votes[kind] += max(1, m.elements)
  total = sum(votes.values())
  return Thunk({k: v / total for k, v in votes.items()} if total else {OTHER: 1.0})


# ----------------------------------------------------------------------------- the profile


@dataclasses.dataclass
class MatmulGroup:
  """The matmul thunks of one shape: time (us, summed over the traced steps), FLOPs, roles."""
  us: float = 0.0
  flops: float = 0.0
  thunks: int = 0
  roles: collections.Counter = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass
class Profile:
  """Per-step averages of the traced steps: milliseconds by kind (summing to the wall time)."""
  name: str
  steps: int
  wall_ms: float
  busy_ms: float
  thunk_ms: float  # Summed exclusive thunk time; more than busy_ms when thunks overlap.
  kinds: dict[str, float]  # ms / step, scaled onto busy time; HOST included.
  thunks: dict[str, float]  # Thunk executions / step by kind.
  matmuls: dict[str, MatmulGroup]
  top: dict[str, list[tuple[str, float]]]  # Biggest thunks (name, ms / step) by kind.

  def shares(self) -> dict[str, float]:
    return {kind: ms / self.wall_ms for kind, ms in self.kinds.items()}

  @property
  def matmul_flops(self) -> float:
    """FLOPs of the dots executed per step (from their HLO shapes)."""
    return sum(g.flops for g in self.matmuls.values()) / self.steps

  @property
  def matmul_gflops(self) -> float:
    """The dots' FLOP/s over the matmul thunks' own (exclusive, unscaled) time, in GFLOP/s."""
    us = sum(g.us for g in self.matmuls.values()) / self.steps
    return self.matmul_flops / (us * 1e3) if us else 0.0


def _short_shape(ins: Instr) -> str:
  shape = re.sub(r"\{[^}]*\}", "", ins.shape)
  return shape if len(shape) <= 32 else shape[:29] + "..."


def summarize(events: list[dict], hlo: Hlo, vocab: int, name: str = "") -> Profile:
  """The profile of the annotated steps in `events`, thunks classified with `hlo`."""
  walls, per_step = step_ops(events, hlo.module, ANNOTATION)
  n = len(walls)
  busy = sum(busy_time(ops) for ops in per_step)
  excl, counts = collections.Counter(), collections.Counter()
  for ops in per_step:
    for op, us in exclusive_ops(ops):
      excl[op] += us
      counts[op] += 1
    pending = async_dot_time(ops, hlo)  # Idle time in which an asynchronous dot still ran.
    excl.update(pending)
    busy += sum(pending.values())
  total = sum(excl.values())
  scale = busy / total if total else 0.0
  per_step_ms = lambda us: us * scale / n / 1e3
  kinds, thunks = collections.Counter(), collections.Counter()
  matmuls, top = collections.defaultdict(MatmulGroup), collections.defaultdict(list)
  for op, us in excl.items():
    thunk = classify(hlo, op, vocab) if op in hlo.instrs else Thunk({OTHER: 1.0})
    label = f"{op} {_short_shape(hlo.instrs[op])}" if op in hlo.instrs else op
    thunks[thunk.kind] += counts[op] / n
    for kind, fraction in thunk.kinds.items():
      kinds[kind] += per_step_ms(us * fraction)
      top[kind].append((label, per_step_ms(us * fraction)))
    if thunk.shape:
      group = matmuls[thunk.shape]
      group.us, group.flops, group.thunks = (group.us + us, group.flops + thunk.flops * counts[op],
                                             group.thunks + counts[op])
      group.roles[thunk.role] += us
  kinds[HOST] = max(0.0, sum(walls) - busy) / n / 1e3
  top = {k: sorted(v, key=lambda x: -x[1])[:3] for k, v in top.items()}
  return Profile(name, n, sum(walls) / n / 1e3, busy / n / 1e3, total / n / 1e3, dict(kinds),
                 dict(thunks), dict(matmuls), top)


def table_rows(p: Profile, max_shapes: int = 10) -> list[list[str]]:
  """Rows of the profile's table: matmuls (then one row per shape), the other kinds, host."""
  pct = lambda ms: f"{ms / p.wall_ms:.1%}"
  rows = [[f"**{MATMUL}s (all)**", f"{p.kinds.get(MATMUL, 0.0):,.1f}",
           f"**{pct(p.kinds.get(MATMUL, 0.0))}**", f"{p.thunks.get(MATMUL, 0):,.0f}", ""]]
  groups = sorted(p.matmuls.items(), key=lambda kv: -kv[1].us)
  scale = p.busy_ms / p.thunk_ms if p.thunk_ms else 0.0
  for shape, g in groups[:max_shapes]:
    roles = ", ".join(r for r, _ in g.roles.most_common(3)) + (", ..." if len(g.roles) > 3
                                                                else "")
    ms = g.us * scale / p.steps / 1e3
    rate = g.flops / (g.us * 1e-6) / 1e9 if g.us else 0.0
    rows.append([f"· matmul {shape}", f"{ms:,.1f}", pct(ms), f"{g.thunks / p.steps:,.0f}",
                 f"{roles}; {rate:,.1f} GFLOP/s"])
  if len(groups) > max_shapes:
    rest = groups[max_shapes:]
    ms = sum(g.us for _, g in rest) * scale / p.steps / 1e3
    rows.append([f"· matmul, {len(rest)} other shapes", f"{ms:,.1f}", pct(ms),
                 f"{sum(g.thunks for _, g in rest) / p.steps:,.0f}", ""])
  for kind in KINDS + (HOST,):
    ms = p.kinds.get(kind, 0.0)
    biggest = ", ".join(f"{op} {t:,.2f}" for op, t in p.top.get(kind, []))
    rows.append([kind, f"{ms:,.1f}", pct(ms), f"{p.thunks.get(kind, 0):,.0f}"
                 if kind != HOST else "-", biggest])
  rows.append(["**total (wall)**", f"{p.wall_ms:,.1f}", f"{sum(p.shares().values()):.1%}", "",
               f"device busy {p.busy_ms:,.1f} ms; thunks summed {p.thunk_ms:,.1f} ms"])
  return rows


def format_profile(p: Profile) -> str:
  """A Markdown table of the profile, under a one-line summary."""
  header = ["kind of work", "ms / step", "share of step", "thunks / step",
            "detail (biggest thunks, ms / step)"]
  overlap = p.thunk_ms / p.busy_ms if p.busy_ms else 0.0
  return (f"{p.name}: {p.wall_ms:,.1f} ms per step (mean of {p.steps} traced steps); dots "
          f"{p.matmul_flops / 1e9:,.2f} GFLOP per step at {p.matmul_gflops:,.1f} GFLOP/s in "
          f"their thunks; thunks overlap {overlap:.2f}x\n\n"
          + harness.markdown_table(header, table_rows(p)))


def profile_workload(w: workload.Workload, *, steps: int = 3, warmup: int = 2,
                     num_devices: int | None = None) -> Profile:
  """Builds, warms up and traces `w`'s train step over the first `num_devices` devices."""
  step = workload.build_workload(w, num_devices).compile(w.batch())
  for _ in range(warmup):
    step.run()
  hlo = parse_hlo(step.compiled.as_text())
  with tempfile.TemporaryDirectory(prefix="profile_step_") as log_dir:
    with jax.profiler.trace(log_dir):
      for _ in range(steps):
        with jax.profiler.TraceAnnotation(ANNOTATION):
          step.run()
    events = load_trace(log_dir)
  return summarize(events, hlo, w.vocab, w.name)


def parse_args(argv=None):
  """The command line, checked (unknown names are refused)."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--shapes", default="recipe", help=f"Comma-separated: {', '.join(SHAPES)}.")
  p.add_argument("--steps", type=int, default=3, help="Traced steps (averaged).")
  p.add_argument("--warmup", type=int, default=2, help="Untraced steps first.")
  p.add_argument("--devices", type=int, default=1,
                 help="XLA CPU devices (2: the recipe's data-parallel layout).")
  p.add_argument("--vocab_size", type=int, default=8000, help="base / small / tiny vocabulary.")
  p.add_argument("--markdown", default="", help="Also write the tables to this file.")
  args = p.parse_args(argv)
  for name in args.shapes.split(","):
    if name not in SHAPES:
      p.error(f"--shapes: unknown shape {name!r}; choose among {', '.join(SHAPES)}.")
  return args


def main(argv=None):
  """Runs the command (see the module docstring)."""
  args = parse_args(argv)
  workload.use_cpu(args.devices)
  tables = []
  for name in args.shapes.split(","):
    w = workload.make_workload(name, vocab=args.vocab_size)
    print(f"[{name}] compiling and tracing {args.steps} steps ...", flush=True)
    profile = profile_workload(w, steps=args.steps, warmup=args.warmup)
    analytic = workload.model_flops_per_step(w.shape, w.vocab, w.rows, w.length)
    tables.append(f"{format_profile(profile)}\n\n(workload.model_flops_per_step: "
                  f"{analytic / 1e9:,.2f} GFLOP per step)\n")
    print(tables[-1], flush=True)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write("\n".join(tables))


if __name__ == "__main__":
  main()
