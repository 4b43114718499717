"""Reading a compiled step: its optimized HLO text and the JAX profiler's trace of it.

`parse_hlo(compiled.as_text())` gives every instruction (shape, opcode, operands, called
computations, `metadata.op_name`) and each computation's instructions; `executed_dots` counts
the dots one step executes, by shape. The trace (`load_trace`) holds every executed XLA CPU
thunk (`args.hlo_op`, start, duration, thread); `step_ops`, `exclusive_ops`, `busy_time` and
`async_dot_time` turn it into per-step times. Used by profile_step.py and matmul_ceiling.py.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import re


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
  entry: str
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
  entry = re.search(r"^ENTRY %(\S+) ", text, re.MULTILINE)
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
  return Hlo(module.group(1) if module else "", entry.group(1) if entry else "", instrs,
             computations)


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


# ----------------------------------------------------------------------------- dots


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


def dot_shape(hlo: Hlo, dot: Instr) -> DotShape:
  """The batched-matmul shape of an HLO dot instruction, from its operands and dimensions."""
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
  return DotShape(batch, m, k, n)


def _trip_count(ins: Instr) -> int:
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attrs)
  if not m:
    raise ValueError(f"while loop {ins.name} has no known trip count: the count needs one")
  return int(m.group(1))


def executed_dots(hlo: Hlo) -> collections.Counter:
  """{DotShape: executions per step} of an optimized HLO module (entry computation down; dots
  in a while loop's body count its `known_trip_count` times)."""
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
        raise ValueError(f"conditional {ins.name}: which branch runs is not known")

  visit(hlo.entry, 1)
  return counts


# ----------------------------------------------------------------------------- the trace


def load_trace(log_dir: str) -> list[dict]:
  """The events of the newest `*.trace.json.gz` the profiler wrote under `log_dir`."""
  files = glob.glob(os.path.join(log_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {log_dir}: the profiler wrote no trace")
  with gzip.open(max(files, key=os.path.getmtime), "rt") as f:
    return json.load(f)["traceEvents"]


def step_ops(events: list[dict], module: str,
             annotation: str) -> tuple[list[float], list[list[dict]]]:
  """The wall times (us) of the `annotation` spans and each span's thunk events of `module`."""
  windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("ph") == "X" and e.get("name") == annotation)
  if not windows:
    raise ValueError(f"the trace has no {annotation!r} annotation")
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
