"""benchmarks.accelerator --smoke: the accelerator check's code runs on CPU at tiny shapes.

Every section lands in the JSON and the Markdown with sane values (finite, positive throughput,
checks passed; 8 fake devices run the multi-device check); a failing section is recorded and
the others still run; the time budget skips sections; no accelerator is one line and exit 2.
"""

import json
import math
import pathlib

import pytest

from benchmarks import accelerator, accelerator_checks, accelerator_speed

NAMES = [name for name, _, _ in accelerator.SECTIONS]
TRAIN = ["train_base", "train_big", "train_base_remat", "train_big_remat"]


def _run(out: pathlib.Path, *flags) -> tuple[int, dict, str]:
  code = accelerator.main(["--smoke", "--out", str(out), *flags], watchdog=False)
  return (code, json.loads((out / "accelerator.json").read_text()),
          (out / "accelerator.md").read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("accelerator"))


def test_every_section_runs_and_the_checks_pass(smoke):
  code, results, _ = smoke
  assert code == 0, results["summary"]
  assert list(results["sections"]) == NAMES
  for name, r in results["sections"].items():
    allowed = ("ok", "skipped") if name == "torch_peer" else ("ok",)  # torch may be absent.
    assert r["status"] in allowed, (name, r)
  assert results["device"]["backend"] == "cpu" and results["running"] is None
  attention = results["sections"]["attention"]
  assert attention["passed"] and attention["cases"]["cudnn"]["skipped"]
  for impl in ("plain", "xla"):
    for case in ("self", "causal", "cross"):
      errors = attention["cases"][impl][case]
      assert 0 < errors["output_rel_err"] < 2e-2 and 0 < errors["grads_rel_err"] < 3e-2
  bf16 = results["sections"]["bf16_step"]
  assert bf16["passed"] and all(math.isfinite(x) for x in bf16["loss_bfloat16"])
  multi = results["sections"]["multi_device"]
  assert multi["devices"] == 8 and multi["passed"] and "jit" in multi["parallelism"]


def test_throughput_sections_report_positive_finite_figures(smoke):
  _, results, _ = smoke
  sections = results["sections"]
  assert sections["matmul_peak"]["tflops_best"] > 0
  for name in TRAIN:
    r = sections[name]
    assert r["remat"] == name.endswith("_remat") and r["rows"] > 0 and r["finite"]
    for key in ("tokens_per_s", "target_tokens_per_s", "mfu_measured", "model_tflop_per_step"):
      assert math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
    assert r["mfu_table"] is None  # No datasheet peak for a CPU.
  decode = sections["decode_base"]
  assert decode["generated_tokens_per_s"] > 0 and decode["new_tokens"] == 4
  torch = sections["torch_peer"]
  if torch["status"] == "ok":
    assert all(s["tokens_per_s"] > 0 and s["model_tflop_per_step"] > 0
               for s in torch["shapes"].values())
  else:
    assert torch["reason"]


def test_markdown_has_every_table_and_section(smoke):
  _, results, md = smoke
  for heading in ("# Accelerator check: 8 × cpu", "## Correctness on the device", "## Training",
                  "## Beam-search decoding", "## Sections"):
    assert heading in md
  assert "| attention `xla` bf16 vs f32 (self, causal, cross) | pass |" in md
  assert "| 8-device step vs 1 device (`jit`, f32) | pass |" in md
  for shape, remat in (("base", "off"), ("big", "off"), ("base", "on"), ("big", "on")):
    assert f"| {shape} | {remat} | ours (auto) |" in md
  assert "| base | 2 | 2 | 6 | 4 |" in md  # Decoding: beam, batch, source, new tokens.
  if results["sections"]["torch_peer"]["status"] == "ok":
    assert "| base | off | PyTorch eager, autocast bf16, SDPA | 2×8 |" in md
  for name in NAMES:
    assert f"| {name} | {results['sections'][name]['status']} |" in md


def test_a_failing_section_is_recorded_and_the_others_run(tmp_path, monkeypatch):
  def broken(ctx):
    raise RuntimeError("injected failure")

  monkeypatch.setattr(accelerator_checks, "attention_check", broken)
  code, results, md = _run(tmp_path, "--sections", "attention,matmul_peak")
  assert code == 1
  assert list(results["sections"]) == ["matmul_peak", "attention"]  # The fixed order.
  failed = results["sections"]["attention"]
  assert failed["status"] == "error" and "injected failure" in failed["error"]
  assert failed["traceback"]
  assert results["sections"]["matmul_peak"]["status"] == "ok"
  assert results["summary"]["error"] == ["attention"]
  assert "| attention | error |" in md and "injected failure" in md


def test_spent_budget_skips_sections(tmp_path):
  code, results, _ = _run(tmp_path, "--budget_s", "0", "--sections", "train_base,decode_base")
  assert code == 0
  for r in results["sections"].values():
    assert r["status"] == "skipped" and "time budget" in r["reason"]


def test_without_an_accelerator_it_says_so_in_one_line(tmp_path, capsys, monkeypatch):
  for name, value in (("XLA_PYTHON_CLIENT_PREALLOCATE", "false"),
                      ("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")):
    monkeypatch.setenv(name, value)  # What the run sets on GPUs; restored after the test.
  assert accelerator.main(["--out", str(tmp_path)], watchdog=False) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "no GPU or TPU backend" in err and "--smoke" in err
  assert not (tmp_path / "accelerator.json").exists()


def test_unknown_section_is_refused():
  with pytest.raises(SystemExit):
    accelerator.parse_args(["--sections", "train_huge"])


def test_batch_ladder_steps_down_on_memory_errors_only():
  speed = accelerator_speed

  def try_rows(rows):
    if rows == 8:
      raise speed.DoesNotFit("needs 90 GiB of 80 GiB")
    if rows == 4:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
    if rows == 3:
      raise ValueError("a bug")
    return f"ran {rows}"

  time_left = lambda: 100.0
  rows, ran, attempts = speed.choose_rows((8, 4, 2), try_rows, time_left, 10.0)
  assert (rows, ran) == (2, "ran 2") and [a["rows"] for a in attempts] == [8, 4]
  with pytest.raises(speed.NoRungFits, match="could be measured"):
    speed.choose_rows((8, 4), try_rows, time_left, 10.0)
  with pytest.raises(ValueError, match="a bug"):  # Not a memory error: a real failure.
    speed.choose_rows((3, 2), try_rows, time_left, 10.0)
  with pytest.raises(speed.NoRungFits, match="time budget"):
    speed.choose_rows((2,), try_rows, lambda: 5.0, 10.0)
