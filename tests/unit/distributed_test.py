"""distributed.initialize: its checks, and when it starts jax.distributed (never started here)."""

import jax
import pytest

from transformer_jax import distributed


@pytest.fixture
def started(monkeypatch):
  """The calls `initialize` makes to jax.distributed.initialize, which is replaced."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  return calls


def test_settings_go_together_and_the_process_id_must_be_in_range():
  assert distributed.check_settings(None, None, None) is False
  assert distributed.check_settings("10.0.0.1:1234", 2, 1) is True
  for partial in [("10.0.0.1:1234", None, None), (None, 2, 0), ("10.0.0.1:1234", 2, None)]:
    with pytest.raises(ValueError, match="--coordinator_address, --num_processes and "
                                         "--process_id go together"):
      distributed.check_settings(*partial)
  for process_id in (2, -1):
    with pytest.raises(ValueError, match=rf"--process_id={process_id} is outside \[0, "
                                         r"--num_processes=2\)"):
      distributed.check_settings("10.0.0.1:1234", 2, process_id)


@pytest.mark.parametrize("environ, detected", [
    ({}, False),
    ({"TPU_WORKER_HOSTNAMES": "t1k-0"}, False),  # A single-host TPU VM.
    ({"TPU_WORKER_HOSTNAMES": "t1k-0,t1k-1,t1k-2,t1k-3"}, True),
    ({"SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "3"}, True),
])
def test_a_cluster_is_detected_by_its_worker_list_or_task_count(environ, detected):
  assert distributed.cluster_detected(environ) is detected


def test_a_malformed_task_count_is_named():
  with pytest.raises(ValueError, match="SLURM_NTASKS='many' is not a number of tasks"):
    distributed.cluster_detected({"SLURM_NTASKS": "many"})


def test_explicit_settings_start_it_with_them_even_on_a_cluster(started):
  assert distributed.initialize("10.0.0.1:1234", 4, 3, environ={"SLURM_NTASKS": "8"})
  assert started == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                      "process_id": 3}]


def test_a_detected_cluster_starts_it_with_jax_auto_detection(started):
  assert distributed.initialize(environ={"TPU_WORKER_HOSTNAMES": "w0,w1"})
  assert started == [{}]


def test_a_single_process_and_bad_settings_start_nothing(started):
  assert not distributed.initialize(environ={})
  with pytest.raises(ValueError, match="go together"):
    distributed.initialize(num_processes=2, environ={"SLURM_NTASKS": "8"})
  assert started == []
