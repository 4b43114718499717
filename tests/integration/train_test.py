"""train.py end to end: it learns, checkpoints, resumes exactly after SIGTERM, refuses bad input."""

import os
import signal
import subprocess
import sys
import time

import pytest

import jax
import numpy as np

from transformer_jax import checkpoint_reader
from transformer_jax import monitoring, train_lib
from transformer_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _train(workdir, *overrides, config=TINY, **kwargs):
  cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--config={config}",
         f"--workdir={workdir}", *overrides]
  return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kwargs)


def _losses(workdir):
  return {r["step"]: r["train_loss"] for r in
          monitoring.read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train_loss" in r}


def _steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def test_sigterm_then_resume_reproduces_the_uninterrupted_run(tmp_path):
  steps = ["--config.num_train_steps=60", "--config.checkpoint_every_steps=20",
           "--config.eval_every_steps=0"]
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  # Runs alongside the interrupted one, its batches made by 2 worker processes; the interrupted
  # run makes them in-process, and resumes with 1 worker: the batches do not depend on it.
  full_proc = _train(full, *steps, "--config.data.num_workers=2")
  proc = _train(cut, *steps, "--config.data.num_workers=0")
  metrics = os.path.join(cut, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and any(r["step"] >= 5 for r in monitoring.read_metrics(metrics)):
      break
    time.sleep(0.005)
  # Freeze the child so that the signal lands mid-run, however fast its steps are.
  proc.send_signal(signal.SIGSTOP)
  proc.send_signal(signal.SIGTERM)
  proc.send_signal(signal.SIGCONT)
  code, out = _finish(proc)
  assert code == 0, out
  stopped = _steps(cut)[-1]
  assert 5 <= stopped < 60, (stopped, out)
  assert stopped not in (20, 40), "the preemption save is at the signalled step"

  code, out = _finish(_train(cut, *steps, "--config.data.num_workers=1"))
  assert code == 0, out
  assert "Training batches: 1 worker process." in out
  code, full_out = _finish(full_proc)
  assert code == 0, full_out
  records = monitoring.read_metrics(os.path.join(full, "metrics.jsonl"))
  assert all(0 <= r["input_wait"] <= 1 for r in records if "train_loss" in r)
  losses, resumed = _losses(full), _losses(cut)
  assert max(losses) == 60 and losses[60] < losses[1]
  assert _steps(full)[-1] == 60 and _steps(cut)[-1] == 60
  assert sorted(resumed) == sorted(losses)
  for step in (stopped + 1, 60):
    assert resumed[step] == pytest.approx(losses[step], rel=1e-4), step


@pytest.mark.parametrize("args, message", [
    (["--config.optim.warmup_step=3"],
     "error: --config.optim.warmup_step: config.optim.warmup_step is not a setting (did you mean "
     "optim.warmup_steps?)."),
    (["--config.no_such_key=1"], "config.no_such_key is not a setting"),
    (["--config.model.d_model=30"], "config.model.d_model=30 is not divisible by num_heads=4"),
    (["--config.num_train_steps=abc"], "--config.num_train_steps=abc"),
    (["--config.model.pre_norm=maybe"], "--config.model.pre_norm=maybe"),
    (["--config.log_every_steps=0"], "config.log_every_steps=0: must be >= 1."),
    (["--config.num_train_steps=-5"], "config.num_train_steps=-5: must be >= 1."),
    (["--config=configs/no_such_config.py"], "--config: cannot load the config file"),
])
def test_bad_config_is_one_line_and_exit_code_2_before_anything_is_written(tmp_path, args,
                                                                          message):
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--config={TINY}",
                         f"--workdir={workdir}", *args], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
  assert not workdir.exists()  # Refused before data preparation: nothing written.


def test_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("not a directory")
  code, out = _finish(_train(str(path)), timeout=120)
  assert code == 2 and "is a file, not a directory" in out and "Traceback" not in out
  assert path.read_text() == "not a directory"


def _tiny_config(path=TINY, **changes):
  import importlib.util
  spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update_from_flattened_dict(changes)
  return config


def test_a_diverging_run_never_saves_a_non_finite_state(tmp_path):
  # The demo with an absurd learning rate: within a few steps the parameters overflow and the
  # gradient norm or the loss is NaN, and so are the updated parameters and Adam's moments.
  # Every step (loss and gradient norm) and the whole state are checked before a save.
  config = _tiny_config(os.path.join(ROOT, "configs", "default.py"),
                        **{"num_train_steps": 12, "checkpoint_every_steps": 1,
                           "log_every_steps": 6, "eval_every_steps": 0,
                           "optim.peak_learning_rate": 1e30})
  with pytest.raises(train_lib.NonFiniteLossError, match=r"step \d+.*last good checkpoint, step"):
    train_lib.train_and_evaluate(config, str(tmp_path))
  saved = _steps(str(tmp_path))
  assert saved and saved[-1] < 12
  params, _, _ = checkpoint_reader.read_params(str(tmp_path))  # What a rerun would resume from.
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_a_second_run_on_a_busy_workdir_exits_2_and_a_killed_runs_lock_is_taken_over(tmp_path):
  workdir = str(tmp_path)
  first = _train(workdir, "--config.num_train_steps=100000", "--config.checkpoint_every_steps=5",
                 "--config.eval_every_steps=0")
  try:
    deadline = time.time() + 240
    while not _steps(workdir) and time.time() < deadline:
      time.sleep(0.5)
    assert _steps(workdir), "the first run never saved"
    metrics_before = open(os.path.join(workdir, "metrics.jsonl")).read()
    code, out = _finish(_train(workdir, "--config.num_train_steps=100000"), timeout=120)
    assert code == 2 and f"being trained by pid {first.pid}" in out and "Traceback" not in out
    assert open(os.path.join(workdir, "metrics.jsonl")).read().startswith(metrics_before)
  finally:
    first.kill()  # kill -9: no chance to release the lock.
    first.wait()
  assert os.path.exists(os.path.join(workdir, "train.lock"))
  resume_at = _steps(workdir)[-1]
  code, out = _finish(_train(workdir, f"--config.num_train_steps={resume_at + 2}",
                             "--config.eval_every_steps=0"))
  assert code == 0, out[-2000:]
  assert "Taking over" in out and not os.path.exists(os.path.join(workdir, "train.lock"))


def test_resuming_a_workdir_on_another_corpus_is_refused_unless_asked(tmp_path):
  config = _tiny_config(**{"num_train_steps": 2, "eval_every_steps": 0})
  train_lib.train_and_evaluate(config, str(tmp_path))
  other = _tiny_config(**{"num_train_steps": 4, "eval_every_steps": 0,
                          "data.synthetic_task": "numbers"})
  with pytest.raises(workdir_lib.CorpusChangedError, match="train_corpus: .* in the workdir"):
    train_lib.train_and_evaluate(other, str(tmp_path))
  assert _steps(str(tmp_path)) == [2]
  final = train_lib.train_and_evaluate(other, str(tmp_path), allow_corpus_change=True)
  assert final["step"] == 4 and _steps(str(tmp_path))[-1] == 4
