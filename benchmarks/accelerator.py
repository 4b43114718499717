"""One command that checks and measures what only an accelerator shows (GPU or TPU host).

  python -m benchmarks.accelerator [--out DIR] [--budget_s 450] [--sections a,b,...]
  python -m benchmarks.accelerator --smoke     # the same code on CPU at tiny shapes (tests)

Sections, in this order (the checks first; each one guarded: an error is recorded in the report
and the next section runs; a section that would not fit in the time left is skipped):

  matmul_peak       best bf16 TFLOP/s of a big square matmul (MFU's measured ceiling)
  attention         plain / XLA / cuDNN / Pallas (TPU) attention in bf16 agree with float32
  bf16_step         bf16 training steps of a small model stay finite and close to float32
  multi_device      the step over every device equals the one-device step (several devices)
  torch_peer        PyTorch, bf16 autocast + SDPA, at the training shapes (child process)
  train_base        Transformer base training in bf16: tokens/s, MFU (datasheet and measured)
  decode_base       beam-4 decoding at base: generated tokens/s
  train_big         Transformer big, as train_base
  train_base_remat  base with remat (rematerialized layers)
  train_big_remat   big with remat

The checks are in accelerator_checks.py (with the run's profiles and context), the measurements
in accelerator_speed.py; this module runs them and writes the report. It writes
DIR/accelerator.json (rewritten after every section, so a run stopped early keeps what it
measured) and DIR/accelerator.md (the tables), and prints progress as it goes. On GPUs, JAX
allocates on demand (XLA_PYTHON_CLIENT_PREALLOCATE=false, at most 90% of the memory) so that
the PyTorch peer's process finds the memory free. Exit code: 0 all ran or were skipped, 1 some
check failed or section errored, 2 no accelerator (without --smoke) or the package does not
import, 3 the run outlived its budget by a minute and was stopped.

This module imports the standard library only: jax and the package are imported after the JAX
environment is set and a preflight has checked that they import (`_preflight`), so that a
broken install is one line and exit code 2.
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
from typing import Any, Callable

from benchmarks.harness import markdown_table

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
  """The command line, checked (unknown names are refused)."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", default="accelerator_results", help="Directory for the JSON and MD.")
  p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: the tests' run.")
  p.add_argument("--budget_s", type=float, default=None,
                 help="Overall time budget in seconds (default 450; smoke 300).")
  p.add_argument("--sections", default="all", help="Comma-separated sections (default all).")
  p.add_argument("--attention_impl", default="auto",
                 choices=("auto", "xla", "cudnn", "plain", "pallas"),
                 help="Attention of the training sections and the bf16 check.")
  p.add_argument("--parallelism", default="jit",
                 help="How the training sections' step is written: jit or shard_map (the "
                      "multi-device check runs both).")
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
  """(one-line error or None, notes): jax imports, has an accelerator, the sections import."""
  notes = []
  try:
    import jax  # After `_environment`: the platform and the GPU allocator are read here.
    backend = jax.default_backend()
  except Exception as e:
    return f"jax does not initialize: {type(e).__name__}: {str(e).splitlines()[0]}", notes
  if not args.smoke and backend == "cpu":
    return (f"jax {jax.__version__} has no GPU or TPU backend here (devices: "
            f"{jax.devices()}); install jax with CUDA or TPU support, or run --smoke."), notes
  try:
    import ml_collections  # noqa: F401
  except ImportError:  # Accelerator images may lack it; only config files and base_config() use it.
    sys.modules["ml_collections"] = types.ModuleType("ml_collections")
    notes.append("ml_collections is not installed: a stand-in module was used (no config "
                 "file is read here)")
  try:
    _import_sections()
  except Exception as e:
    return f"the package does not import: {type(e).__name__}: {e}", notes
  return None, notes


def _import_sections() -> tuple[types.ModuleType, types.ModuleType]:
  """accelerator_checks and accelerator_speed: imported here, not at the top of this module,
  because they import jax and the package, which must come after `_environment` (and the
  ml_collections stand-in of `_preflight`)."""
  from benchmarks import accelerator_checks, accelerator_speed
  return accelerator_checks, accelerator_speed


def _section_functions() -> dict[str, Callable]:
  """Each section's function, by name (looked up now, so that tests may replace one)."""
  checks, speed = _import_sections()
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
    """Rewrites both files (the JSON through a rename, so that it is never half written)."""
    with self._lock:
      self.results["elapsed_s"] = round(time.monotonic() - self._start, 1)
      with open(self.json_path + ".tmp", "w") as f:
        json.dump(self.results, f, indent=1, default=str)
      os.replace(self.json_path + ".tmp", self.json_path)
      with open(self.md_path, "w") as f:
        f.write(markdown(self.results))


def _run_section(ctx, name: str, fn: Callable) -> dict:
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


def run(args, report: Report, ctx, functions: dict[str, Callable]) -> None:
  """Runs the chosen sections in order within the budget, writing the report after each."""
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
    print(f"[{args.budget_s - ctx.remaining():6.1f} s] {name}: {one_line(name, result)}",
          flush=True)


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
  """Runs the check; returns the exit code (see the module docstring)."""
  args = parse_args(argv)
  _environment(args.smoke)
  error, notes = _preflight(args)
  if error:
    print(f"accelerator.py: {error}", file=sys.stderr)
    return 2
  checks, _ = _import_sections()
  if args.parallelism not in checks.PARALLELISMS:
    print(f"accelerator.py: --parallelism={args.parallelism} is not one of {checks.PARALLELISMS}.",
          file=sys.stderr)
    return 2
  profile = checks.SMOKE if args.smoke else checks.FULL
  results = {"tool": "benchmarks/accelerator.py", "profile": profile.name,
             "argv": sys.argv[1:] if argv is None else list(argv), "budget_s": args.budget_s,
             "device": checks.device_info(), "notes": notes, "shapes": profile.shapes,
             "vocab_size": profile.vocab_size, "sections": {}, "running": None}
  report = Report(args.out, results)
  d = results["device"]
  print(f"accelerator.py: {d['device_count']} x {d['device_kind']} ({d['backend']}), jax "
        f"{d['jax']}, budget {args.budget_s:.0f} s; writing {report.json_path}", flush=True)
  ctx = checks.Context(args=args, profile=profile, deadline=time.monotonic() + args.budget_s,
                       results=results)
  timer = _start_watchdog(report, args.budget_s) if watchdog else None
  try:
    run(args, report, ctx, _section_functions())
  finally:
    if timer is not None:
      timer.cancel()
  results["summary"] = summary(results)
  report.write()
  print("\n" + markdown(results), flush=True)
  return 1 if results["summary"]["failed"] or results["summary"]["error"] else 0


# ----------------------------------------------------------------------------- report


_TRAIN = ("train_base", "train_big", "train_base_remat", "train_big_remat")
_CHECKS = ("attention", "bf16_step", "multi_device")


def _num(x: Any, fmt: str = ",.0f") -> str:
  return "-" if x is None else format(x, fmt)


def _pct(x: Any) -> str:
  return "-" if x is None else f"{x:.0%}"


def summary(results: dict) -> dict[str, list[str]]:
  """Section names by status."""
  out: dict[str, list[str]] = {"ok": [], "failed": [], "error": [], "skipped": []}
  for name, r in results["sections"].items():
    out.setdefault(r.get("status", "error"), []).append(name)
  return out


def one_line(name: str, r: dict) -> str:
  """A short progress line for a finished section."""
  status = r.get("status")
  if status == "skipped":
    return f"skipped: {r.get('reason')}"
  if status == "error":
    return f"ERROR {r.get('error', '')[:200]}"
  head = f"{status} ({r.get('seconds', 0):.1f} s)"
  if name == "matmul_peak":
    return f"{head}: {r['tflops_best']:.1f} TFLOP/s bf16 (n={r['n']})"
  if name in _TRAIN:
    return (f"{head}: {r['rows']}x{r['seq_len']} rows, {r['tokens_per_s']:,.0f} tok/s, "
            f"MFU {_pct(r.get('mfu_table'))} datasheet / {_pct(r.get('mfu_measured'))} measured")
  if name == "decode_base":
    return f"{head}: {r['generated_tokens_per_s']:,.0f} generated tok/s"
  if name == "torch_peer":
    return head + "".join(f"; {s}: {_num(v.get('tokens_per_s'))} tok/s"
                          for s, v in r.get("shapes", {}).items())
  return head


# ----------------------------------------------------------------------------- report: checks


def _check_rows(sections: dict) -> list[list[str]]:
  rows = []
  att = sections.get("attention", {})
  tol = att.get("tolerance", {})
  for impl, r in att.get("cases", {}).items():
    if "skipped" in r or "error" in r:
      rows.append([f"attention `{impl}` bf16 vs f32", "skipped" if "skipped" in r else "ERROR",
                   r.get("skipped") or r.get("error"), ""])
      continue
    cases = [c for c in ("self", "causal", "cross") if c in r]
    out = max(r[c]["output_rel_err"] for c in cases)
    grads = max(r[c]["grads_rel_err"] for c in cases)
    rows.append([f"attention `{impl}` bf16 vs f32 ({', '.join(cases)})",
                 "pass" if r.get("passed") else "FAIL",
                 f"output {out:.1e}, grads {grads:.1e} (worst case)",
                 f"{tol.get('output')}, {tol.get('grads')}"])
  b = sections.get("bf16_step", {})
  if b.get("status") in ("ok", "failed"):
    rows.append([f"bf16 training steps vs f32 ({b['steps']} steps, d_model "
                 f"{b['model']['d_model']})", "pass" if b["passed"] else "FAIL",
                 f"loss {b['loss_max_rel_err']:.1e}, grad norm {b['grad_norm_max_rel_err']:.1e}"
                 f" (update {b['update_rel_err']:.1e}, not gated)",
                 f"{b['tolerance']['loss']}, {b['tolerance']['grad_norm']}"])
  m = sections.get("multi_device", {})
  if m.get("status") in ("ok", "failed"):
    for mode, r in m["parallelism"].items():
      rows.append([f"{m['devices']}-device step vs 1 device (`{mode}`, f32)",
                   "pass" if r["passed"] else "FAIL",
                   f"params max abs {r['params_max_abs_diff']:.1e}, loss {r['loss_rel_err']:.1e}",
                   f"{m['tolerance']['params_max_abs']}, {m['tolerance']['loss']}"])
  elif m.get("status") == "skipped":
    rows.append(["multi-device step vs 1 device", "skipped", m.get("reason"), ""])
  return rows


# ----------------------------------------------------------------------------- report: speed


def _train_rows(results: dict) -> list[list[str]]:
  sections = results["sections"]
  table = results["device"].get("table_peak_tflops")
  measured = sections.get("matmul_peak", {}).get("tflops_best")
  torch = sections.get("torch_peer", {}).get("shapes", {})
  rows = []
  for name in _TRAIN:
    r = sections.get(name, {})
    if r.get("status") != "ok":
      continue
    rows.append([r["shape"], "on" if r["remat"] else "off", f"ours ({r['attention_impl']})",
                 f"{r['rows']}×{r['seq_len']}", f"{r['step_s_median'] * 1e3:,.1f}",
                 _num(r["tokens_per_s"]), _num(r["target_tokens_per_s"]),
                 _pct(r.get("mfu_table")), _pct(r.get("mfu_measured")),
                 f"{r['model_tflop_per_step']:.3g} / {_num(r.get('xla_tflop_per_step'), '.3g')}",
                 _num(r.get("compiled_memory_gib"), ".1f"), f"{r['compile_s']:.0f}"])
    peer = torch.get(r["shape"], {})
    if not r["remat"] and "tokens_per_s" in peer:
      rows.append(_torch_row(r, peer, table, measured))
  return rows


def _torch_row(ours: dict, peer: dict, table, measured) -> list[str]:
  flops = peer.get("model_tflop_per_step", 0.0) * 1e12  # Set by accelerator_speed.torch_peer.
  t = peer["step_s_median"]
  mfu = lambda peak: _pct(flops / t / (peak * 1e12)) if flops and peak else "-"
  per_device = ours["tokens_per_s"] / ours["devices"]  # The peer runs on one device.
  same = peer["rows"] * ours["devices"] == ours["rows"]
  ratio = (f" (ours {per_device / peer['tokens_per_s']:.2f}× per device)" if same
           else " (another batch)")
  return [ours["shape"], "off", "PyTorch eager, autocast bf16, SDPA",
          f"{peer['rows']}×{peer['seq_len']}", f"{t * 1e3:,.1f}",
          _num(peer["tokens_per_s"]) + ratio, _num(peer["target_tokens_per_s"]),
          mfu(table), mfu(measured), f"{flops / 1e12:.3g}" if flops else "-", "-", "-"]


def _decode_rows(sections: dict) -> list[list[str]]:
  r = sections.get("decode_base", {})
  if r.get("status") != "ok":
    return []
  return [["base", r["beam"], r["batch"], r["src_len"], r["new_tokens"],
           _num(r["generated_tokens_per_s"]), f"{r['call_s_median']:.3f}",
           f"{r['first_call_s']:.1f}"]]


def _section_rows(sections: dict) -> list[list[str]]:
  rows = []
  for name, r in sections.items():
    note = r.get("error") or r.get("reason") or ""
    rows.append([name, r.get("status"), f"{r.get('seconds', 0):.1f}", note[:160]])
  return rows


def markdown(results: dict) -> str:
  """The whole report: device line, correctness, training, decoding, per-section status."""
  d, sections = results["device"], results["sections"]
  peak = sections.get("matmul_peak", {})
  lines = [f"# Accelerator check: {d['device_count']} × {d['device_kind']}, {d['date']}", "",
           f"Backend {d['backend']}, jax {d['jax']} (jaxlib {d['jaxlib']}), flax {d['flax']}, "
           f"optax {d['optax']}; profile `{results['profile']}`, budget "
           f"{results['budget_s']:.0f} s, {results.get('elapsed_s', 0):.0f} s elapsed. "
           f"Peak bf16: datasheet {_num(d.get('table_peak_tflops'), '.0f')} TFLOP/s, measured "
           f"{_num(peak.get('tflops_best'), '.1f')} TFLOP/s (n={peak.get('n', '-')} matmul).", ""]
  for note in results.get("notes", []):
    lines += [f"Note: {note}.", ""]
  if results.get("aborted"):
    lines += [f"**Aborted:** {results['aborted']}.", ""]
  lines += ["## Correctness on the device", "",
            markdown_table(["check", "result", "measured (relative error)", "tolerance"],
                           _check_rows(sections)), ""]
  lines += ["## Training (bf16 compute, float32 parameters and Adam, dropout as in the paper)",
            "", "Tokens count source + target; MFU = model FLOPs (3 × forward matmuls, "
            "attention and output projection included, remat recomputation excluded) / step "
            "time / peak. XLA's count (`cost_analysis()` of the compiled step) sees no FLOPs "
            "inside cuDNN's fused attention and counts recomputation.", "",
            markdown_table(["model", "remat", "side", "batch (rows × tokens)", "step ms",
                            "tok/s", "target tok/s", "MFU datasheet", "MFU measured",
                            "TFLOP / step (model / XLA)", "compiled GiB", "compile s"],
                           _train_rows(results)), ""]
  lines += ["## Beam-search decoding (bf16, random parameters, EOS forbidden: every sentence "
            "gets exactly `new tokens`)", "",
            markdown_table(["model", "beam", "batch", "source tokens", "new tokens",
                            "generated tok/s", "s / call", "first call s"],
                           _decode_rows(sections)), ""]
  lines += ["## Sections", "",
            markdown_table(["section", "status", "seconds", "note"], _section_rows(sections)),
            ""]
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
