"""One command that checks and measures what only an accelerator shows (GPU or TPU host).

  python benchmarks/accelerator.py [--out DIR] [--budget_s 450] [--sections a,b,...]
  python benchmarks/accelerator.py --smoke     # the same code on CPU at tiny shapes (tests)

Sections, in this order (the checks first; each one guarded: an error is recorded in the report
and the next section runs; a section that would not fit in the time left is skipped):

  matmul_peak       best bf16 TFLOP/s of a big square matmul (MFU's measured ceiling)
  attention         plain / XLA / cuDNN attention in bf16 agree with float32 (output, gradients)
  bf16_step         bf16 training steps of a small model stay finite and close to float32
  multi_device      the step over every device equals the one-device step (several devices)
  torch_peer        PyTorch, bf16 autocast + SDPA, at the training shapes (child process)
  train_base        Transformer base training in bf16: tokens/s, MFU (datasheet and measured)
  decode_base       beam-4 decoding at base: generated tokens/s
  train_big         Transformer big, as train_base
  train_base_remat  base with remat (rematerialized layers)
  train_big_remat   big with remat

It writes DIR/accelerator.json (rewritten after every section, so a run stopped early keeps what
it measured) and DIR/accelerator.md (the tables), and prints progress as it goes. On GPUs, JAX
allocates on demand (XLA_PYTHON_CLIENT_PREALLOCATE=false, at most 90% of the memory) so that
the PyTorch peer's process finds the memory free. Exit code: 0 all ran or were skipped, 1 some
check failed or section errored, 2 no accelerator (without --smoke) or the package does not
import, 3 the run outlived its budget by a minute and was stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
import types

_HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.dirname(_HERE), _HERE):  # The repository (no install needed), benchmarks.
  if _path not in sys.path:
    sys.path.insert(0, _path)

import accelerator_report  # noqa: E402  (stdlib only)

# name, minimum seconds to start it (full profile), what it does.
SECTIONS = (
    ("matmul_peak", 5, "bf16 matmul peak"),
    ("attention", 15, "attention implementations agree in bf16"),
    ("bf16_step", 20, "bf16 training step vs float32"),
    ("multi_device", 20, "multi-device step vs one device"),
    ("torch_peer", 30, "PyTorch peer"),
    ("train_base", 30, "base training throughput"),
    ("decode_base", 25, "base beam-search throughput"),
    ("train_big", 30, "big training throughput"),
    ("train_base_remat", 30, "base training throughput, remat"),
    ("train_big_remat", 30, "big training throughput, remat"),
)
GRACE_S = 60.0  # The watchdog stops the process this long after the budget.


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", default="accelerator_results", help="Directory for the JSON and MD.")
  p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: the tests' run.")
  p.add_argument("--budget_s", type=float, default=None,
                 help="Overall time budget in seconds (default 450; smoke 300).")
  p.add_argument("--sections", default="all", help="Comma-separated sections (default all).")
  p.add_argument("--attention_impl", default="auto", choices=("auto", "xla", "cudnn", "plain"),
                 help="Attention of the training sections and the bf16 check.")
  p.add_argument("--parallelism", default="jit",
                 help="How the training sections' step is written: jit, or shard_map where the "
                      "package has it (the multi-device check runs every mode it has).")
  p.add_argument("--scan_layers", action="store_true",
                 help="Train with scanned layer stacks (faster compiles).")
  args = p.parse_args(argv)
  names = [name for name, _, _ in SECTIONS]
  args.sections = names if args.sections == "all" else args.sections.split(",")
  for name in args.sections:
    if name not in names:
      p.error(f"--sections: unknown section {name!r}; choose among {', '.join(names)}.")
  if args.budget_s is None:
    args.budget_s = 300.0 if args.smoke else 450.0
  return args


# ----------------------------------------------------------------------------- preflight


def _environment(smoke: bool) -> None:
  """Set before jax is first imported (no effect on a process that already imported it)."""
  if smoke:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  else:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")


def _preflight(args) -> tuple[str | None, list[str]]:
  """(one-line error or None, notes): jax imports, has an accelerator, the package imports."""
  notes = []
  try:
    import jax
    backend = jax.default_backend()
  except Exception as e:
    return f"jax does not initialize: {type(e).__name__}: {str(e).splitlines()[0]}", notes
  if not args.smoke and backend == "cpu":
    return (f"jax {jax.__version__} has no GPU or TPU backend here (devices: "
            f"{jax.devices()}); install jax with CUDA or TPU support, or run --smoke."), notes
  try:
    import ml_collections  # noqa: F401
  except ImportError:  # Only configs/ and base_config() use it; no config file is read here.
    sys.modules["ml_collections"] = types.ModuleType("ml_collections")
    notes.append("ml_collections is not installed: a stand-in module was used (no config "
                 "file is read here)")
  try:
    import accelerator_checks  # noqa: F401
    import accelerator_speed  # noqa: F401
  except Exception as e:
    return f"the package does not import: {type(e).__name__}: {e}", notes
  return None, notes


def _section_functions():
  import accelerator_checks as checks
  import accelerator_speed as speed
  train = lambda shape, remat: lambda ctx: speed.train_throughput(ctx, shape, remat)
  return {"matmul_peak": speed.matmul_peak, "attention": checks.attention_check,
          "bf16_step": checks.bf16_step_check, "multi_device": checks.multi_device_check,
          "torch_peer": speed.torch_peer, "train_base": train("base", False),
          "decode_base": speed.decode_throughput, "train_big": train("big", False),
          "train_base_remat": train("base", True), "train_big_remat": train("big", True)}


# ----------------------------------------------------------------------------- the run


class Report:
  """The results, rewritten to DIR/accelerator.json and DIR/accelerator.md on every change."""

  def __init__(self, out_dir: str, results: dict):
    self.out_dir, self.results = out_dir, results
    self.json_path = os.path.join(out_dir, "accelerator.json")
    self.md_path = os.path.join(out_dir, "accelerator.md")
    self._lock = threading.Lock()
    self._start = time.monotonic()
    os.makedirs(out_dir, exist_ok=True)

  def write(self) -> None:
    with self._lock:
      self.results["elapsed_s"] = round(time.monotonic() - self._start, 1)
      with open(self.json_path + ".tmp", "w") as f:
        json.dump(self.results, f, indent=1, default=str)
      os.replace(self.json_path + ".tmp", self.json_path)
      with open(self.md_path, "w") as f:
        f.write(accelerator_report.markdown(self.results))


def _run_section(ctx, name: str, fn) -> dict:
  """One section, guarded: its result, or its error with the end of the traceback."""
  start = time.monotonic()
  try:
    result = fn(ctx)
  except Exception as e:
    tail = traceback.format_exc().strip().splitlines()[-6:]
    result = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:1000]}",
              "traceback": tail}
  result.setdefault("status", "ok")
  result["seconds"] = round(time.monotonic() - start, 1)
  return result


def run(args, report: Report, functions: dict) -> None:
  """Runs the chosen sections in order within the budget, writing the report after each."""
  import accelerator_lib as lib
  ctx = lib.Context(args=args, profile=lib.SMOKE if args.smoke else lib.FULL,
                    deadline=time.monotonic() + args.budget_s, results=report.results)
  chosen = [(name, need) for name, need, _ in SECTIONS if name in args.sections]
  scale = 0.0 if args.smoke else 1.0  # Smoke: skip only once the budget is spent.
  for i, (name, need) in enumerate(chosen):
    ctx.reserve_s = scale * sum(n for _, n in chosen[i + 1:])
    elapsed = args.budget_s - ctx.remaining()
    if ctx.remaining() < scale * need:
      result = {"status": "skipped", "reason": f"time budget ({ctx.remaining():.0f} s left, "
                f"needs at least {need} s)", "seconds": 0.0}
    else:
      print(f"[{elapsed:6.1f} s] {name} ...", flush=True)
      report.results["running"] = name
      report.write()
      result = _run_section(ctx, name, functions[name])
    report.results["sections"][name] = result
    report.results["running"] = None
    report.write()
    print(f"[{args.budget_s - ctx.remaining():6.1f} s] {name}: "
          f"{accelerator_report.one_line(name, result)}", flush=True)


def _start_watchdog(report: Report, budget_s: float) -> threading.Timer:
  def stop():
    report.results["aborted"] = (f"stopped {GRACE_S:.0f} s past the {budget_s:.0f} s budget, "
                                 f"in section {report.results.get('running')}")
    report.write()
    print(f"accelerator.py: {report.results['aborted']}", file=sys.stderr, flush=True)
    os._exit(3)

  timer = threading.Timer(budget_s + GRACE_S, stop)
  timer.daemon = True
  timer.start()
  return timer


def main(argv=None, *, watchdog: bool = True) -> int:
  args = parse_args(argv)
  _environment(args.smoke)
  error, notes = _preflight(args)
  if error:
    print(f"accelerator.py: {error}", file=sys.stderr)
    return 2
  import accelerator_lib as lib
  if args.parallelism not in lib.PARALLELISMS:
    print(f"accelerator.py: --parallelism={args.parallelism} is not one of {lib.PARALLELISMS}.",
          file=sys.stderr)
    return 2
  profile = lib.SMOKE if args.smoke else lib.FULL
  results = {"tool": "benchmarks/accelerator.py", "profile": profile.name,
             "argv": sys.argv[1:] if argv is None else list(argv), "budget_s": args.budget_s,
             "device": lib.device_info(), "notes": notes, "shapes": profile.shapes,
             "vocab_size": profile.vocab_size, "sections": {}, "running": None}
  report = Report(args.out, results)
  d = results["device"]
  print(f"accelerator.py: {d['device_count']} x {d['device_kind']} ({d['backend']}), jax "
        f"{d['jax']}, budget {args.budget_s:.0f} s; writing {report.json_path}", flush=True)
  timer = _start_watchdog(report, args.budget_s) if watchdog else None
  try:
    run(args, report, _section_functions())
  finally:
    if timer is not None:
      timer.cancel()
  results["summary"] = accelerator_report.summary(results)
  report.write()
  print("\n" + accelerator_report.markdown(results), flush=True)
  return 1 if results["summary"]["failed"] or results["summary"]["error"] else 0


if __name__ == "__main__":
  sys.exit(main())
