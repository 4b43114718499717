"""train.py end to end: it learns, checkpoints, resumes exactly after SIGTERM, refuses bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from transformer_jax import monitoring, train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
  steps = ["--config.num_train_steps=150", "--config.checkpoint_every_steps=50",
           "--config.eval_every_steps=0"]
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  full_proc = _train(full, *steps)  # Runs alongside the interrupted one.
  proc = _train(cut, *steps)
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
  assert 5 <= stopped < 150, (stopped, out)
  assert stopped not in (50, 100), "the preemption save is at the signalled step"

  code, out = _finish(_train(cut, *steps))
  assert code == 0, out
  code, full_out = _finish(full_proc)
  assert code == 0, full_out
  losses, resumed = _losses(full), _losses(cut)
  assert max(losses) == 150 and losses[150] < losses[1]
  assert _steps(full)[-1] == 150 and _steps(cut)[-1] == 150
  assert sorted(resumed) == sorted(losses)
  for step in (stopped + 1, 150):
    assert resumed[step] == pytest.approx(losses[step], rel=1e-4), step


def test_unknown_config_key_is_refused(tmp_path):
  code, out = _finish(_train(str(tmp_path), "--config.no_such_key=1"), timeout=120)
  assert code != 0 and "no_such_key" in out
  code, out = _finish(_train(str(tmp_path), "--config.model.d_model=30"), timeout=120)
  assert code != 0 and "num_heads" in out and "Traceback" not in out


def test_non_finite_loss_stops_without_a_bad_checkpoint(tmp_path):
  from ml_collections import config_flags  # noqa: F401 (the config module uses ml_collections)
  import importlib.util
  spec = importlib.util.spec_from_file_location("tiny", TINY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.num_train_steps = 6
  config.checkpoint_every_steps = 1
  config.log_every_steps = 3
  config.eval_every_steps = 0
  config.optim.schedule = "constant"
  config.optim.peak_learning_rate = float("nan")  # Parameters turn NaN after the first update.
  with pytest.raises(train_lib.NonFiniteLossError, match=r"step 2.*checkpoint, step 1"):
    train_lib.train_and_evaluate(config, str(tmp_path))
  assert _steps(str(tmp_path)) == [1]
