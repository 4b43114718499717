"""The Markdown tables, progress lines and summary of `benchmarks/accelerator.py` (stdlib only)."""

from __future__ import annotations

from typing import Any

from harness import markdown_table
from train_benchmark import model_flops_per_step

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


# ----------------------------------------------------------------------------- checks


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


# ----------------------------------------------------------------------------- speed


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
      rows.append(_torch_row(r, peer, results, table, measured))
  return rows


def _torch_row(ours: dict, peer: dict, results: dict, table, measured) -> list[str]:
  shape = results.get("shapes", {}).get(ours["shape"])
  flops = (model_flops_per_step(shape, results["vocab_size"], peer["rows"], peer["seq_len"])
           if shape else None)
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
