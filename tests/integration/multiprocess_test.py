"""Real multi-process training on CPU: 2 processes x 2 devices == 1 process x 4 devices."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from transformer_jax import monitoring

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")
STEPS = ["--config.num_train_steps=20", "--config.eval_every_steps=20",
         "--config.eval_bleu_examples=16", "--config.eval_beam_size=2",
         "--config.checkpoint_every_steps=10"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, devices, *extra):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--config={TINY}",
         f"--workdir={workdir}", *STEPS, *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _two_processes(workdir, *extra):
  port = _free_port()
  return [_launch(workdir, 2, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}", *extra) for i in range(2)]


def _wait(procs, timeout=300):
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def _losses(workdir):
  return {r["step"]: r["train_loss"] for r in
          monitoring.read_metrics(os.path.join(workdir, "metrics.jsonl")) if "train_loss" in r}


def _eval_chrf(workdir):
  records = monitoring.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  return [r["eval_chrf"] for r in records if "eval_chrf" in r][-1]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("single"))
  _wait([_launch(workdir, 4)])
  return workdir


@pytest.fixture(scope="module")
def single_process_losses(single_process):
  return _losses(single_process)


def test_two_processes_match_one_process(tmp_path, single_process, single_process_losses):
  workdir = str(tmp_path / "multi")
  outs = _wait(_two_processes(workdir))
  # Each process translated half the eval sentences; the gathered hypotheses score as one
  # process's (the parameters agree to float rounding, so the translations do).
  assert _eval_chrf(workdir) == pytest.approx(_eval_chrf(single_process), abs=0.5)
  losses = _losses(workdir)
  assert sorted(losses) == sorted(single_process_losses) and max(losses) == 20
  assert losses[20] == pytest.approx(single_process_losses[20], rel=1e-3)
  assert losses[20] < losses[1]
  assert "Finished at step 20" in outs[0] and "Finished at step 20" in outs[1]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]


@pytest.mark.parametrize("parallelism", ["shard_map"])
def test_sigterm_in_one_process_gives_one_consistent_checkpoint(tmp_path, single_process_losses,
                                                                parallelism):
  # With shard_map: two processes, a preemption and a resume end where one jit process does.
  # The stop and its shared checkpoint are the loop's, whatever the step: shard_map only (two
  # jit processes are test_two_processes_match_one_process), which keeps the suite's time.
  workdir = str(tmp_path / "multi")
  mode = f"--config.parallelism={parallelism}"
  procs = _two_processes(workdir, mode)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and procs[0].poll() is None:
    if os.path.exists(metrics) and any(r["step"] >= 3 for r in monitoring.read_metrics(metrics)):
      break
    time.sleep(0.01)
  for p in procs:  # Freeze both so that the signal lands mid-run.
    p.send_signal(signal.SIGSTOP)
  procs[1].send_signal(signal.SIGTERM)  # Only one process is signalled...
  for p in procs:
    p.send_signal(signal.SIGCONT)
  _wait(procs)  # ...and both stop cleanly, after saving the same step together.
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps and steps[-1] < 20, steps
  _wait(_two_processes(workdir, mode))
  losses = _losses(workdir)
  assert losses[20] == pytest.approx(single_process_losses[20], rel=1e-3)
