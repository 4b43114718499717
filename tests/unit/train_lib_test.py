"""The training loop's helpers (the steps are in steps_test.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import train_lib


# ----------------------------------------------------------------------------- loop helpers


class _Loss:
  """Stands in for a device array whose computation finishes when the test says so."""

  def __init__(self):
    self.ready = False

  def is_ready(self):
    return self.ready


def test_progress_bar_counts_only_completed_steps():
  losses = [_Loss() for _ in range(4)]
  with train_lib._Progress(10, 20, enabled=True) as progress:
    for loss in losses[:3]:
      progress.add(loss)
    assert progress.completed == 10  # Dispatched, not computed: the bar does not run ahead.
    losses[0].ready = losses[1].ready = True
    progress.add(losses[3])
    assert progress.completed == 12  # The ready prefix counts; step 3 is still running.
    progress.complete({"train_loss": 1.0, "learning_rate": 1e-3, "tokens_per_sec": 5.0,
                       "input_wait": 0.25})
    assert progress.completed == 14  # Fetched metrics mean every step so far is done.


def test_metrics_log_averages_losses_and_refuses_a_non_finite_one(tmp_path):
  from transformer_jax import monitoring
  writer = monitoring.MetricsWriter(str(tmp_path))
  metrics_log = train_lib._MetricsLog(writer, str(tmp_path / "checkpoints"), start_step=0)
  for step, loss in ((1, 2.0), (2, 4.0)):
    metrics_log.add(step, {"train_loss": jnp.asarray(loss), "num_tokens": jnp.asarray(10.0),
                           "learning_rate": jnp.asarray(0.1)})
  record = metrics_log.flush(2)
  assert record["train_loss"] == 3.0 and record["learning_rate"] == pytest.approx(0.1)
  assert monitoring.read_metrics(writer.path)[-1]["step"] == 2
  metrics_log.last_saved = 2
  metrics_log.add(3, {"train_loss": jnp.asarray(jnp.nan), "num_tokens": jnp.asarray(10.0),
                      "learning_rate": jnp.asarray(0.1)})
  with pytest.raises(train_lib.NonFiniteLossError, match="step 3.*last good checkpoint, step 2"):
    metrics_log.check_finite(4)
  writer.close()


def test_input_wait_is_the_share_of_wall_time_spent_waiting(tmp_path, monkeypatch, caplog):
  from transformer_jax import monitoring
  clock = iter([100.0, 110.0, 110.0, 120.0, 120.0, 130.0, 130.0])  # start; (flush, restart) x 3
  monkeypatch.setattr(train_lib.time, "perf_counter", lambda: next(clock))
  writer = monitoring.MetricsWriter(str(tmp_path))
  metrics_log = train_lib._MetricsLog(writer, str(tmp_path / "checkpoints"), start_step=0)
  warning = train_lib._InputBoundWarning(num_workers=2, enabled=True)
  for step, wait in ((1, 4.0), (2, 0.5), (3, 3.0)):  # 40%, 5%, 30% of each 10 s interval.
    metrics_log.add_input_wait(wait)
    metrics_log.add(step, {"train_loss": jnp.asarray(1.0), "num_tokens": jnp.asarray(10.0),
                           "learning_rate": jnp.asarray(0.1)})
    record = metrics_log.flush(step)
    assert record["input_wait"] == pytest.approx(wait / 10)
    with caplog.at_level("WARNING"):
      warning.check(step, record["input_wait"])
  assert [r["input_wait"] for r in monitoring.read_metrics(writer.path)] == pytest.approx(
      [0.4, 0.05, 0.3])
  # The first interval (workers starting) is not judged; then one line, once.
  lines = [r.getMessage() for r in caplog.records if "input-bound" in r.getMessage()]
  assert lines == ["input-bound: the loop waited for batches 30% of the time up to step 3; "
                   "raise data.num_workers (now 2)."]
  writer.close()


def test_preemption_flag_is_local_with_one_process():
  with train_lib._Preemption() as preemption:
    assert not preemption.requested(sync_point=True)
    preemption.signum = 15
    # One process needs no agreement: it stops at the very next step.
    assert preemption.requested(sync_point=False)


def test_hypotheses_dealt_round_robin_come_back_in_order():
  lines = [f"line {i}" for i in range(7)]
  parts = [lines[p::3] for p in range(3)]  # What processes 0, 1, 2 translate.
  assert train_lib.interleave(parts, 7) == lines
  assert train_lib.interleave([lines], 7) == lines
