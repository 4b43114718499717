"""Training-step throughput: our jit-compiled step vs PyTorch `nn.Transformer`, same shapes.

  python -m benchmarks.train_benchmark [--shapes recipe,base] [--rounds 5] [--per_round 3]
      [--sides ours,ours-2dev,torch,torch.compile]
  python -m benchmarks.train_benchmark --quick

Shapes. `recipe` is the Multi30k recipe as `train.py` runs it, read from `configs/multi30k.py`
(`get_config()`): its model (4+4 x 128, 4 heads, d_ff 512, dropout 0.1, no attention dropout),
vocabulary (`data.vocab_size`, 6,000), batch (`data.batch_size` rows x `data.seq_len` tokens,
64 x 64), label smoothing, and optimizer (`schedules.create_optimizer` on the config's `optim`
block: AdamW with weight decay 0.2, clipping at 1.0, cosine schedule). Its rows are packed like
`transformer_jax.data.pipeline`'s: several pairs per row with segment ids and positions that
restart per pair, 61 of every 64 target slots real (the pipeline packs Multi30k to ~96%),
padding at the row's end (`batches.packed_batch`).
`base` (`TransformerConfig.base`: 512, 6+6), `small` (the recipe's model: 128, 4+4) and `tiny`
(`TransformerConfig.tiny`: 32, 2+2; smoke runs): `--batch` 32 rows of `--length` 32 source and
32 target tokens, no padding, vocabulary `--vocab_size` 8,000, dropout 0.1, Adam(0.9, 0.98,
1e-9) at a constant rate; label smoothing 0.1 everywhere.

Sides. `ours`: `steps.compile_steps(...)` exactly as `train.py` builds it (the recipe's
`parallelism`, shard_map; jit for the others; `workload.build_training`), on one XLA CPU
device. `ours-2dev`: the same on 2 XLA CPU devices (the worker's environment sets
XLA_FLAGS=--xla_force_host_platform_device_count=2 before jax starts; the batch is split in
two, data parallel), as the recipe runs. `torch`: `torch.nn.Transformer` eager (`peers.py`:
post-norm, no final norms, tied sqrt(d)-scaled embeddings, sinusoidal positions, the same
dropout on the same places, attention dropout as ours; the same parameter count, checked), with
Adam or AdamW and clipping as ours. `torch.compile`: the same module and loss under
`torch.compile` (inductor; the optimizer step stays eager); its compile time is the first
step's; a failure is recorded and the others go on. Every side trains on the same batch, made
once here. `nn.Transformer` has no segment masks: on packed shapes the torch sides get the same
id arrays (so the same target-token count and shapes) as plain rows with key-padding masks,
each row one long example.

Each side runs in its own worker process (peak RSS is per side; it includes the library import,
shown apart), and timed blocks alternate between them. Reported per side: target tokens/s (real,
non-padding target tokens / median step), the ratio to torch eager, achieved GFLOP/s
(`workload.model_flops_per_step`, analytic) and its share of a float32 matmul peak measured in
the same run (`workload.matmul_peak`, in the `ours` worker), compile time, peak RSS. Per shape,
the matmul-only bound (`matmul_ceiling.py`, in the `ours` worker): the one-device step's dots
timed alone, each at its best, summed; the share of the peak and the ratio to torch eager no
step could beat.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from benchmarks import harness, matmul_ceiling, peers, workload
from benchmarks.workload import Workload

WORKLOADS = ("recipe", "base", "small", "tiny")
SIDES = ("ours", "ours-2dev", "torch", "torch.compile")
TARGETS = {"recipe": (0.55, 1.8), "base": (0.70, 1.25)}  # (share of matmul peak, x torch eager).


def ours_factory(w: Workload, batch: dict[str, np.ndarray],
                 measure_peak: bool = True) -> harness.Runner:
  """Our side: `w`'s step over every device of the worker, on `batch`.

  With `measure_peak`, also the float32 matmul peak and the step's matmul-only bound.
  """
  rss_import = harness.peak_rss_mib()
  step = workload.build_workload(w).compile(batch)
  start = time.perf_counter()
  metrics = step.run()
  first_call_s = step.compile_s + time.perf_counter() - start
  info = {"params": step.training.num_params, "compile_s": step.compile_s,
          "first_call_s": first_call_s, "loss": float(metrics["train_loss"]),
          "devices": jax.device_count(), "rss_import_mib": rss_import}
  if measure_peak:
    info["matmul_peak"], _ = workload.matmul_peak()
    info["matmul_bound_s"] = matmul_ceiling.measure(step.compiled.as_text()).seconds
  return harness.Runner(info=info, step=step.run)


def parse_args(argv=None):
  """The command line, checked (unknown names are refused)."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  harness.add_timing_args(p, unit="step", warmup=2, per_round=3, quick_per_round=2,
                          threads_help="torch intra-op threads.",
                          shapes_help=f"Comma-separated: {', '.join(WORKLOADS)}.",
                          shapes_default="recipe,base")
  p.add_argument("--sides", default=",".join(SIDES), help="Comma-separated, among "
                 f"{', '.join(SIDES)} (ours always runs: it measures the matmul peak).")
  p.add_argument("--batch", type=int, default=32,
                 help="base / small / tiny: sentence pairs per step.")
  p.add_argument("--length", type=int, default=32,
                 help="base / small / tiny: source = target tokens per pair.")
  args = p.parse_args(argv)
  harness.finish_timing_args(p, args, WORKLOADS)
  unknown = set(args.sides.split(",")) - set(SIDES)
  if unknown:
    p.error(f"--sides: unknown {sorted(unknown)}; choose among {', '.join(SIDES)}.")
  return args


def build_sides(w: Workload, wanted: list[str], threads: int) -> tuple[list, dict]:
  """The sides of one workload, in worker processes; a side that fails to build is recorded."""
  batch = w.batch()  # Packed: the torch sides get the same ids, as plain rows padded at the end.
  torch = dict(factory=peers.train_factory, model=w.model, vocab=w.vocab, batch=batch,
               optim=w.optim, threads=threads)
  specs = {"ours": dict(factory=ours_factory, w=w, batch=batch),
           "ours-2dev": dict(factory=ours_factory, w=w, batch=batch, measure_peak=False,
                             env=harness.host_devices_env(2)),
           "torch": torch, "torch.compile": dict(torch, compile=True)}
  sides, failed = [], {}
  for name in ["ours"] + [s for s in SIDES if s in wanted and s != "ours"]:
    try:
      sides.append(harness.Side(name, **specs[name]))
    except RuntimeError as e:
      if name == "ours":
        raise
      failed[name] = str(e)
    else:
      info = sides[-1].info
      first = info.get("compile_s", info["first_call_s"])
      print(f"[{w.name}] {name}: {info['params']:,} params, first call {first:.1f} s",
            flush=True)
  return sides, failed


def report_rows(w: Workload, sides, failed: dict) -> tuple[list[list], str]:
  """Table rows of one workload, and its summary line (ratio, share of peak, targets)."""
  tokens = w.target_tokens()
  flops = workload.model_flops_per_step(w.shape, w.vocab, w.rows, w.length)
  peak = sides[0].info["matmul_peak"]
  by_name = {s.name: s for s in sides if s.times}
  eager = by_name.get("torch")
  rows = []
  for s in sides:
    t, info, compile_s = s.median, s.info, s.info.get("compile_s")
    timed = [f"{tokens / t:,.0f}", f"{t * 1e3:,.0f}",
             f"{eager.median / t:.2f}x" if eager else "-", f"{flops / t / 1e9:,.1f}",
             f"{flops / t / peak:.0%}"] if s.times else ["-"] * 5
    rows.append([w.name, s.name + (" (failed)" if s.error else ""), *timed,
                 f"{compile_s:.1f}" if compile_s is not None else "-",
                 f"{s.rss_mib:,.0f} ({info['rss_import_mib']:,.0f})", len(s.times)])
    if s.error:
      failed[s.name] = s.error
  built = {s.name for s in sides}
  rows += [[w.name, f"{name} (failed)", *["-"] * 7, 0] for name in failed if name not in built]
  ours = [by_name[n] for n in ("ours", "ours-2dev") if n in by_name]
  best = min(ours, key=lambda s: s.median) if ours else None
  summary = f"{w.name}: matmul peak {peak / 1e9:,.1f} GFLOP/s"
  if best is not None:
    summary += f"; ours-best ({best.name}) {flops / best.median / peak:.0%} of the peak"
    if eager is not None:
      summary += f", {eager.median / best.median:.2f}x torch eager"
    if w.name in TARGETS:
      share, ratio = TARGETS[w.name]
      met = flops / best.median / peak >= share and eager and eager.median / best.median >= ratio
      summary += f" (target >= {share:.0%} and >= {ratio}x: {'met' if met else 'not met'})"
  bound = sides[0].info.get("matmul_bound_s")
  if bound:  # matmul_ceiling.py: the step's dots alone, each at its best; nothing can beat it.
    summary += (f"\n  matmul-only bound (the step's dots alone, each at its best, "
                f"matmul_ceiling.py): {bound * 1e3:,.0f} ms = at most {flops / bound / peak:.0%} "
                "of the peak")
    if eager is not None:
      summary += f", at most {eager.median / bound:.2f}x torch eager"
    if w.name in TARGETS and (flops / bound / peak < TARGETS[w.name][0]
                              or (eager and eager.median / bound < TARGETS[w.name][1])):
      summary += " (a target is above this bound: out of reach with XLA's CPU matmuls)"
  return rows, summary


def main(argv=None):
  """Runs the command (see the module docstring)."""
  args = parse_args(argv)
  workload.use_cpu()
  wanted = args.sides.split(",")
  rows, summaries, params, failures = [], [], [], []
  for name in args.shapes.split(","):
    w = workload.make_workload(name, vocab=args.vocab_size, batch=args.batch, length=args.length)
    print(f"[{name}] building the sides ...", flush=True)
    sides, failed = build_sides(w, wanted, args.threads)
    try:
      counts = {s.name: s.info["params"] for s in sides}
      if len(set(counts.values())) > 1:
        print(f"WARNING: parameter counts differ: {counts}", flush=True)
      harness.interleave(sides, warmup=args.warmup, rounds=args.rounds,
                         per_round=args.per_round)
    finally:
      for side in sides:
        side.close()
    more_rows, summary = report_rows(w, sides, failed)
    rows += more_rows
    summaries.append(summary)
    failures += [f"{name} {side}: {error}" for side, error in failed.items()]
    params.append(f"{name} {w.rows}x{w.length}{' packed' if w.packed else ''}, vocab "
                  f"{w.vocab:,}, {w.target_tokens():,} target tokens, {counts['ours']:,} params")
  print()
  print(f"Training step ({'; '.join(params)}); {os.cpu_count()} CPU cores; {args.malloc} malloc "
        "in every side; medians of interleaved steps; GFLOP/s = model_flops_per_step / median step")
  print(harness.markdown_table(
      ["shape", "side", "target tok/s", "ms / step", "vs torch eager", "GFLOP/s",
       "of matmul peak", "compile s", "peak RSS MiB (import)", "steps"], rows))
  print()
  for line in summaries + failures:
    print(line)


if __name__ == "__main__":
  main()
