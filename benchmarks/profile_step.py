"""Where our compiled train step spends its time: shares of step time by kind of work.

  python benchmarks/profile_step.py [--shapes recipe,base] [--steps 3] [--warmup 2]
      [--devices 1] [--markdown FILE]

Builds the step as `train_benchmark.py` does (`steps.compile_steps`, exactly as train.py; the
recipe from configs/multi30k.py, packed rows), runs `--warmup` steps, then traces `--steps`
steps with the JAX profiler (`jax.profiler.trace`; each step inside a `TraceAnnotation`). The
trace's `*.trace.json.gz` holds every executed XLA CPU thunk (`args.hlo_op`, its start and
duration, its thread); the compiled HLO text (`compiled.as_text()`) says what each thunk is: its
fused instructions, their shapes and `metadata.op_name` (the jax name stack, e.g.
`.../decoder/layers_0/ffn_block/feed_forward/wi/dot_general`, `transpose(...)` on the backward
pass). Each thunk gets one kind of work (`classify`): a thunk holding a dot is a matmul, grouped
by its shape (the vocabulary projection named); else its instructions vote, weighted by their
element counts, among the kinds in `KINDS`. Times are exclusive (a while loop's thunk minus the
body thunks it ran). A plain `dot` thunk only starts its Eigen matmul, so the idle time until
its first consumer starts is counted as that dot's (`async_dot_time`). Host / dispatch is the
step's wall time (the annotation) minus the time at least one thunk (or such a dot) ran; the
thunks' summed time is scaled onto that busy time when they overlap, so that the shares add up
to 100%.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

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
_NO_WORK = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element"}


# ----------------------------------------------------------------------------- the HLO text


@dataclasses.dataclass
class Instr:
  """One HLO instruction: its shape, opcode, operands, called computations and attributes."""
  name: str
  shape: str
  opcode: str
  operands: list[str]
  calls: list[str]
  attrs: str
  op_name: str

  @property
  def dims(self) -> tuple[int, ...]:
    m = re.match(r"\w+\[([\d,]*)\]", self.shape)
    return tuple(int(d) for d in m.group(1).split(",") if d) if m else ()

  @property
  def dtype(self) -> str:
    return "tuple" if self.shape.startswith("(") else self.shape.split("[", 1)[0]

  @property
  def elements(self) -> int:
    return math.prod(self.dims)


@dataclasses.dataclass
class Hlo:
  """A parsed optimized HLO module: instructions by name, and each computation's instructions."""
  module: str
  instrs: dict[str, Instr]
  computations: dict[str, list[str]]


def _split_shape(rest: str) -> tuple[str, str]:
  """('(a, b)' or 'f32[2]{0}', the text after it) from 'SHAPE opcode(...)...'."""
  if not rest.startswith("("):
    shape, _, tail = rest.partition(" ")
    return shape, tail
  depth = 0
  for i, ch in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return rest[:i + 1], rest[i + 2:]
  return rest, ""


def parse_instr(line: str) -> Instr | None:
  """An instruction line of `compiled.as_text()`, or None for anything else."""
  m = re.match(r"\s+(?:ROOT )?%(\S+) = (.*)$", line)
  if not m:
    return None
  shape, rest = _split_shape(m.group(2))
  op = re.match(r"([a-z][\w-]*)\((.*)$", rest)
  if not op:
    return None
  body, depth, end = op.group(2), 1, len(op.group(2))
  for i, ch in enumerate(body):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      end = i
      break
  attrs = body[end + 1:]
  name_m = re.search(r'op_name="([^"]*)"', attrs)
  calls = re.findall(r"(?:calls|body|condition|to_apply)=%([\w.-]+)", attrs)
  for branches in re.findall(r"branch_computations=\{([^}]*)\}", attrs):
    calls += re.findall(r"%([\w.-]+)", branches)
  return Instr(m.group(1), shape, op.group(1), re.findall(r"%([\w.-]+)", body[:end]), calls,
               attrs, name_m.group(1) if name_m else "")


def parse_hlo(text: str) -> Hlo:
  """Every computation and instruction of an optimized HLO module's text."""
  module = re.search(r"HloModule (\S+?),", text)
  instrs, computations, current = {}, {}, None
  for line in text.splitlines():
    header = re.match(r"(?:ENTRY )?%(\S+) \(.*\{\s*$", line)
    if header:
      current = computations.setdefault(header.group(1), [])
      continue
    ins = parse_instr(line)
    if ins is not None and current is not None:
      instrs[ins.name] = ins
      current.append(ins.name)
  return Hlo(module.group(1) if module else "", instrs, computations)


def fused_members(hlo: Hlo, name: str) -> list[Instr]:
  """The instructions a thunk runs itself: a fusion's fused instructions (nested fusions too),
  else the instruction alone (a while loop's body runs as thunks of its own)."""
  ins = hlo.instrs[name]
  if ins.opcode != "fusion":
    return [ins]
  members, todo = [], list(ins.calls[:1])
  while todo:
    for member in (hlo.instrs[n] for n in hlo.computations.get(todo.pop(), [])):
      members.append(member)
      if member.opcode == "fusion":
        todo += member.calls[:1]
  return members


# ----------------------------------------------------------------------------- classification


def _scope(op_name: str) -> str:
  """The op_name without the outer `jit(...)/` of the step."""
  return re.sub(r"^jit\([^)]*\)/", "", op_name)


def dot_dims(hlo: Hlo, dot: Instr) -> tuple[int, int, int, int]:
  """(batch, m, k, n) of a dot read as `batch` x ([m, k] . [k, n])."""
  lhs, rhs = (hlo.instrs[o].dims if o in hlo.instrs else () for o in dot.operands[:2])

  def attr(key):
    m = re.search(key + r"=\{([\d,]*)\}", dot.attrs)
    return [int(d) for d in m.group(1).split(",") if d] if m else []

  lb, lc, rb, rc = (attr(k) for k in ("lhs_batch_dims", "lhs_contracting_dims",
                                       "rhs_batch_dims", "rhs_contracting_dims"))
  batch = math.prod(lhs[i] for i in lb if i < len(lhs))
  k = math.prod(lhs[i] for i in lc if i < len(lhs))
  m = math.prod(d for i, d in enumerate(lhs) if i not in lb + lc)
  n = math.prod(d for i, d in enumerate(rhs) if i not in rb + rc)
  return batch, m, k, n


def matmul_label(hlo: Hlo, dot: Instr, vocab: int) -> tuple[str, str, float]:
  """(shape like '4096x128 . 128x512' or '256x(64x32 . 32x64)', role, FLOPs) of a dot."""
  batch, m, k, n = dot_dims(hlo, dot)
  shape = f"{m}x{k} . {k}x{n}" if batch == 1 else f"{batch}x({m}x{k} . {k}x{n})"
  s = _scope(dot.op_name)
  roles = (("vocabulary projection", ("attend", "output_projection")),
           ("FFN wi", ("feed_forward/wi",)), ("FFN wo", ("feed_forward/wo",)),
           ("Q/K/V", ("/query/", "/key/", "/value/")), ("attention out", ("/out/",)),
           ("attention QK/PV", ("BTNH", "BNTS", "dot_product_attention", "bthk", "bhts")))
  role = next((r for r, keys in roles if any(key in s for key in keys)), "other")
  if vocab in (m, n, k):
    role = "vocabulary projection"
  elif role == "other" and batch > 1:
    role = "attention QK/PV"
  # The fused loss (losses.projected_cross_entropy) computes its gradient in a named scope.
  fused_grad = "projected_cross_entropy" in s and "/backward/" in s
  direction = "bwd" if "transpose(" in s or fused_grad else "fwd"
  return shape, f"{role} {direction}", 2.0 * batch * m * n * k


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
    shape, role, _ = max(labels, key=lambda x: x[2])
    return Thunk({MATMUL: 1.0}, shape, role, sum(x[2] for x in labels))
  votes = collections.Counter()
  for m in members:
    kind = instr_kind(m, hlo, vocab)
    if kind is not None:
      votes[kind] += max(1, m.elements)
  total = sum(votes.values())
  return Thunk({k: v / total for k, v in votes.items()} if total else {OTHER: 1.0})


# ----------------------------------------------------------------------------- the trace


def load_trace(log_dir: str) -> list[dict]:
  """The events of the newest `*.trace.json.gz` the profiler wrote under `log_dir`."""
  files = glob.glob(os.path.join(log_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {log_dir}: the profiler wrote no trace")
  with gzip.open(max(files, key=os.path.getmtime), "rt") as f:
    return json.load(f)["traceEvents"]


def exclusive_ops(ops: list[dict]) -> list[tuple[str, float]]:
  """(hlo_op, exclusive microseconds) of thunk events: minus the thunks nested in them on the
  same thread (a while loop's thunk contains its body's)."""
  out, by_thread = [], collections.defaultdict(list)
  for e in ops:
    by_thread[(e["pid"], e["tid"])].append(e)
  for events in by_thread.values():
    events.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack = []  # [event, exclusive time]
    for e in events:
      while stack and stack[-1][0]["ts"] + stack[-1][0]["dur"] <= e["ts"]:
        out.append((stack[-1][0]["args"]["hlo_op"], stack.pop()[1]))
      if stack:
        stack[-1][1] -= e["dur"]
      stack.append([e, e["dur"]])
    out += [(item[0]["args"]["hlo_op"], item[1]) for item in stack]
  return out


def busy_time(ops: list[dict]) -> float:
  """Microseconds during which at least one of the events ran (the union of their spans)."""
  total, end = 0.0, -math.inf
  for e in sorted(ops, key=lambda e: e["ts"]):
    start, stop = max(e["ts"], end), e["ts"] + e["dur"]
    if stop > start:
      total += stop - start
    end = max(end, stop)
  return total


def _gaps(ops: list[dict]) -> list[tuple[float, float]]:
  """The (start, stop) spans between the first thunk's start and the last one's end in which
  no thunk ran."""
  gaps, end = [], None
  for e in sorted(ops, key=lambda e: e["ts"]):
    if end is not None and e["ts"] > end:
      gaps.append((end, e["ts"]))
    end = e["ts"] + e["dur"] if end is None else max(end, e["ts"] + e["dur"])
  return gaps


def async_dot_time(ops: list[dict], hlo: Hlo) -> collections.Counter:
  """Idle microseconds of one step that belong to asynchronous dot thunks, by hlo_op.

  XLA CPU runs a plain `dot` instruction (one outside a YNNPACK fusion) as an Eigen contraction
  that the thunk only starts: its trace event ends long before the matmul does (a 2 GFLOP
  weight gradient "takes" under 1 ms), and the matmul's remaining time shows up as a gap in
  which no thunk runs. A dot's work ends no later than the first thunk that reads its output
  starts, so each idle span between a dot's event and that consumer is the dot's (split evenly
  when several dots are pending).
  """
  readers = collections.defaultdict(list)  # dot name -> start times of thunks reading it
  for c in ops:
    instr = hlo.instrs.get(c["args"]["hlo_op"])
    for operand in instr.operands if instr else ():
      readers[operand].append(c["ts"])
  pending = []  # (event end, first consumer start, hlo_op)
  for e in ops:
    name = e["args"]["hlo_op"]
    if name not in hlo.instrs or hlo.instrs[name].opcode != "dot":
      continue
    after = [ts for ts in readers[name] if ts >= e["ts"]]
    if after:
      pending.append((e["ts"] + e["dur"], min(after), name))
  out = collections.Counter()
  for start, stop in _gaps(ops):
    edges = sorted({start, stop} | {t for end, use, _ in pending for t in (end, use)
                                     if start < t < stop})
    for lo, hi in zip(edges, edges[1:]):
      owners = [name for end, use, name in pending if end <= lo and hi <= use]
      for name in owners:
        out[name] += (hi - lo) / len(owners)
  return out


def step_ops(events: list[dict], module: str) -> tuple[list[float], list[list[dict]]]:
  """The annotated steps' wall times (us) and each step's thunk events of `module`."""
  windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("ph") == "X" and e.get("name") == ANNOTATION)
  if not windows:
    raise ValueError(f"the trace has no {ANNOTATION!r} annotation")
  per_step = [[] for _ in windows]
  for e in events:
    args = e.get("args", {})
    if e.get("ph") != "X" or "hlo_op" not in args or args.get("hlo_module") != module:
      continue
    for i, (start, stop) in enumerate(windows):
      if start <= e["ts"] < stop:
        per_step[i].append(e)
        break
  return [stop - start for start, stop in windows], per_step


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
  walls, per_step = step_ops(events, hlo.module)
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


def profile_workload(w, *, steps: int = 3, warmup: int = 2,
                     num_devices: int | None = None) -> Profile:
  """Builds, warms up and traces `w`'s train step (a `train_benchmark.Workload`)."""
  import jax
  import train_benchmark
  ours = train_benchmark.build_ours(w, num_devices)
  for _ in range(warmup):
    ours.run()
  hlo = parse_hlo(ours.compiled.as_text())
  with tempfile.TemporaryDirectory(prefix="profile_step_") as log_dir:
    with jax.profiler.trace(log_dir):
      for _ in range(steps):
        with jax.profiler.TraceAnnotation(ANNOTATION):
          ours.run()
    events = load_trace(log_dir)
  return summarize(events, hlo, w.vocab, w.name)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--shapes", default="recipe", help="Comma-separated: recipe, base, small.")
  p.add_argument("--steps", type=int, default=3, help="Traced steps (averaged).")
  p.add_argument("--warmup", type=int, default=2, help="Untraced steps first.")
  p.add_argument("--devices", type=int, default=1,
                 help="XLA CPU devices (2: the recipe's data-parallel layout).")
  p.add_argument("--vocab_size", type=int, default=8000, help="base / small vocabulary.")
  p.add_argument("--markdown", default="", help="Also write the tables to this file.")
  args = p.parse_args(argv)
  for name in args.shapes.split(","):
    if name not in ("recipe", "base", "small"):
      p.error(f"--shapes: unknown shape {name!r}; choose among recipe, base, small.")
  return args


def main(argv=None):
  args = parse_args(argv)
  harness.one_device_env()
  if args.devices > 1:  # Before jax starts.
    harness.apply_env(harness.host_devices_env(args.devices))
  import train_benchmark
  tables = []
  for name in args.shapes.split(","):
    w = train_benchmark.make_workload(name, vocab=args.vocab_size)
    print(f"[{name}] compiling and tracing {args.steps} steps ...", flush=True)
    profile = profile_workload(w, steps=args.steps, warmup=args.warmup)
    analytic = train_benchmark.model_flops_per_step(w.shape, w.vocab, w.rows, w.length)
    tables.append(f"{format_profile(profile)}\n\n(train_benchmark.model_flops_per_step: "
                  f"{analytic / 1e9:,.2f} GFLOP per step)\n")
    print(tables[-1], flush=True)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write("\n".join(tables))


if __name__ == "__main__":
  main()
