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
  config.optim.peak_learning_rate = 1e30  # Parameters overflow after the first update.
  with pytest.raises(train_lib.NonFiniteLossError, match=r"step 2.*checkpoint, step 1"):
    train_lib.train_and_evaluate(config, str(tmp_path))
  assert _steps(str(tmp_path)) == [1]
