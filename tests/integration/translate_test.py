"""translate.py and checkpoint averaging on a tiny trained workdir."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from transformer_jax import checkpoint_reader
from transformer_jax import evaluation, executable_cache, inference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, stdin=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, input=stdin,
                        capture_output=True, text=True, timeout=300)


def test_translate_cli_keeps_order_and_empty_lines_and_scores(workdir, tmp_path):
  lines = ["2019-03-04", "", "1999-12-31", "2001-01-01"]
  src = tmp_path / "src.txt"
  src.write_text("\n".join(lines) + "\n")
  out = tmp_path / "out.txt"
  result = _run("translate.py", f"--workdir={workdir}", f"--input={src}", f"--output={out}",
                "--beam_size=2")
  assert result.returncode == 0, result.stderr
  hypotheses = out.read_text().split("\n")[:-1]
  assert len(hypotheses) == 4 and hypotheses[1] == ""
  # Scoring the output against itself gives 100, through stdin / stdout this time.
  result = _run("translate.py", f"--workdir={workdir}", f"--reference={out}", "--beam_size=2",
                "--checkpoint=average:2", stdin=src.read_text())
  assert result.returncode == 0, result.stderr
  assert "BLEU" in result.stderr and "chrF" in result.stderr and "nrefs:1" in result.stderr
  assert result.stdout.split("\n")[1] == ""


def test_translate_cli_reads_gzipped_input_and_reference(workdir, tmp_path):
  lines = ["2019-03-04", "1999-12-31"]
  src = tmp_path / "src.txt.gz"
  with gzip.open(src, "wt", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  out = tmp_path / "out.txt"
  result = _run("translate.py", f"--workdir={workdir}", f"--input={src}", f"--output={out}",
                "--beam_size=1")
  assert result.returncode == 0, result.stderr
  ref = tmp_path / "ref.txt.gz"
  with gzip.open(ref, "wt", encoding="utf-8") as f:
    f.write(out.read_text())
  result = _run("translate.py", f"--workdir={workdir}", f"--input={src}", f"--reference={ref}",
                "--beam_size=1")
  assert result.returncode == 0, result.stderr
  assert "= 100.0" in result.stderr


def test_translate_cli_errors(tmp_path, workdir):
  result = _run("translate.py", f"--workdir={tmp_path / 'missing'}")
  assert result.returncode == 2 and "does not exist" in result.stderr
  result = _run("translate.py", f"--workdir={workdir}", "--input=/no/such/file")
  assert result.returncode == 2 and "/no/such/file" in result.stderr
  result = _run("translate.py", f"--workdir={tmp_path}", stdin="x\n")
  assert result.returncode == 2 and "tokenizer.model" in result.stderr
  for beam in ("0", "-3"):  # Refused before loading anything, not decoded greedily.
    result = _run("translate.py", f"--workdir={workdir}", f"--beam_size={beam}", stdin="x\n")
    assert result.returncode == 2 and "positive beam size" in result.stderr
  # Each of these is one line, exit code 2, before anything is decoded.
  latin1 = tmp_path / "latin1.txt"
  latin1.write_bytes("2019-03-04\ncaf\xe9\n".encode("latin-1"))
  for args, message in [
      (["--output=/missing/dir/out.txt"], "directory /missing/dir does not exist"),
      (["--batch_tokens=0"], "--batch_tokens 0"),
      (["--checkpoint=averaged"], "average_checkpoints.py"),
      ([f"--input={latin1}"], f"{latin1}, line 2: bytes that are not UTF-8"),
  ]:
    result = _run("translate.py", f"--workdir={workdir}", *args, stdin="x\n")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_average_is_the_mean_and_is_written_as_a_checkpoint(workdir):
  a, step_a, _ = checkpoint_reader.read_params(workdir, 10)
  b, step_b, _ = checkpoint_reader.read_params(workdir, 20)
  mean, steps, config = checkpoint_reader.average_params(workdir, 2)
  assert steps == [10, 20] and config["model"]["d_model"] == 32
  key = ("shared_embedding", "embedding")
  np.testing.assert_allclose(mean[key[0]][key[1]], (a[key[0]][key[1]] + b[key[0]][key[1]]) / 2,
                             rtol=1e-6)
  path, steps = checkpoint_reader.save_averaged(workdir, 2)
  assert path.endswith(os.path.join("averaged", "20"))
  written, step, _ = checkpoint_reader.read_params(workdir, subdir="averaged")
  assert step == 20
  np.testing.assert_allclose(written[key[0]][key[1]], mean[key[0]][key[1]])
  with pytest.raises(ValueError, match="holds 2"):
    checkpoint_reader.average_params(workdir, 5)


def test_average_checkpoints_cli_writes_the_average_and_refuses_too_many(workdir):
  result = _run("average_checkpoints.py", f"--workdir={workdir}", "--num_last=2")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("Averaged checkpoints [10, 20] into ")
  assert checkpoint_reader.read_params(workdir, subdir="averaged")[1] == 20
  result = _run("average_checkpoints.py", f"--workdir={workdir}", "--num_last=5")
  assert result.returncode == 2 and "holds 2" in result.stderr, result.stderr
  assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_tune_decoding_compares_every_setting_with_the_baseline(workdir, tmp_path):
  lines = ["2019-03-04", "1999-12-31", "2001-01-01", "1987-06-15"]
  model, params, tokenizer, _ = inference.load_translator(workdir, "latest")
  # References are the latest checkpoint's own greedy output (this barely trained model's beams
  # end at once): that row scores 100, the others less.
  references = evaluation.translate(model, params, tokenizer, lines, beam_size=1)
  src, ref = tmp_path / "dev.src", tmp_path / "dev.ref"
  src.write_text("\n".join(lines) + "\n")
  ref.write_text("\n".join(references) + "\n")
  out = tmp_path / "tuning.json"
  result = _run("tune_decoding.py", f"--workdir={workdir}", f"--input={src}", f"--reference={ref}",
                "--checkpoints=latest,average:2", "--beam_sizes=1,2", "--alphas=0.6,1.0",
                f"--output_json={out}")
  assert result.returncode == 0, result.stderr
  table = json.loads(out.read_text())
  # Per checkpoint: one greedy row (alpha does not apply) and one row per alpha at beam 2.
  settings = [(r["checkpoint"], r["beam_size"], r["alpha"]) for r in table["rows"]]
  assert settings == [("latest", 1, 0.6), ("latest", 2, 0.6), ("latest", 2, 1.0),
                      ("average:2", 1, 0.6), ("average:2", 2, 0.6), ("average:2", 2, 1.0)]
  row = table["rows"][0]
  assert row["bleu"] == pytest.approx(100.0) and row["checkpoint_steps"] == "checkpoint 20"
  assert table["rows"][1]["bleu"] < 100.0
  # The baseline is the first of each list; each row has its interval, length ratio and p.
  assert table["baseline"]["setting"] == "latest greedy" and row["baseline"]
  for r in table["rows"][1:]:
    assert 0 < r["p_value"] <= 1 and r["bleu_ci95"] >= 0 and r["length_ratio"] >= 0
    assert not r["baseline"] and r["delta"] == pytest.approx(r["bleu"] - 100.0, abs=1e-3)
  assert table["chosen"]["setting"] == "latest greedy"  # Nothing beats 100 BLEU.
  assert "kept the baseline latest greedy" in result.stdout and "chosen: --checkpoint latest" \
      in result.stdout and table["reason"].startswith("kept the baseline")
  hyps = tmp_path / "hyps"
  result = _run("tune_decoding.py", f"--workdir={workdir}", f"--input={src}", f"--reference={ref}",
                "--checkpoints=latest", "--beam_sizes=1,2", "--alphas=1.0",
                "--baseline=latest,2,1.0", f"--hypotheses_dir={hyps}", f"--output_json={out}")
  assert result.returncode == 0, result.stderr
  table = json.loads(out.read_text())
  assert table["baseline"]["setting"] == "latest beam 2 alpha 1"
  assert sorted(p.name for p in hyps.iterdir()) == ["latest_beam_2_alpha_1.txt",
                                                    "latest_greedy.txt"]
  assert (hyps / "latest_greedy.txt").read_text().splitlines() == references


def test_tune_decoding_errors(workdir, tmp_path):
  src, ref = tmp_path / "dev.src", tmp_path / "dev.ref"
  src.write_text("2019-03-04\n1999-12-31\n")
  ref.write_text("only one line\n")
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  for inputs, args, message in [
      ((src, ref), [], "line-aligned"),
      ((src, src), ["--alphas=0.6,high"], "--alphas=0.6,high"),
      ((src, src), ["--checkpoints=average:9"], "holds 2"),
      ((src, src), ["--beam_sizes=0,-2"], "beam sizes must be positive"),
      ((src, src), ["--output_json=/missing/dir/table.json"],
       "directory /missing/dir does not exist"),
      ((empty, empty), [], "no sentence to translate"),
      ((src, src), ["--baseline=averaged"], "--baseline averaged: give CHECKPOINT,BEAM,ALPHA"),
      ((src, src), ["--baseline=latest,3,0.6"], "is not among the settings swept"),
      ((src, src), ["--significance=1.5"], "give a significance level in (0, 1)"),
  ]:
    result = _run("tune_decoding.py", f"--workdir={workdir}", f"--input={inputs[0]}",
                  f"--reference={inputs[1]}", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_second_translate_call_loads_the_stored_search(workdir, tmp_path):
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", executable_cache.ENV_DIR)}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", XDG_CACHE_HOME=str(tmp_path / "cache"))
  cache = tmp_path / "cache" / "transformer_jax" / "executables"
  outputs, entries = [], []
  for _ in range(2):
    result = subprocess.run([sys.executable, "translate.py", f"--workdir={workdir}"], cwd=ROOT,
                            env=env, input="2019-03-04\n1999-12-31\n", capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    outputs.append(result.stdout)
    entries.append({p.name: p.stat().st_mtime_ns for p in cache.glob("*.pkl")})
  assert entries[0], "the first call stored its compiled search"
  assert entries[1].keys() == entries[0].keys()  # The second found it: nothing new was stored.
  assert all(entries[1][k] > entries[0][k] for k in entries[0])  # ... and loaded it (used).
  assert outputs[1] == outputs[0]
