"""The training loop: setup (data, model, state, compiled steps), train, log, evaluate, save."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import math
import os
import shutil
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import experiment_config, monitoring, preflight, schedules, sharding, steps
from transformer_jax import workdir as workdir_lib
from transformer_jax import workdir_layout as layout
from transformer_jax.experiment_config import ExperimentConfig
from transformer_jax.model import Transformer
from transformer_jax.steps import TrainState, init_state

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """The loss, gradients or state became NaN or infinite; no checkpoint holds them."""


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Run:
  """Everything the loop needs, built by `setup`; `state` advances as the loop runs."""
  config: ExperimentConfig
  workdir: str
  data: Any                     # transformer_jax.data.DataBundle
  model: Transformer
  mesh: jax.sharding.Mesh
  state: TrainState
  start_step: int
  train_step: Callable          # Compiled: (state, batch) -> (state, metrics).
  eval_step: Callable           # Compiled: (params, batch) -> loss sums.
  checkpointer: checkpoint_lib.Checkpointer
  writer: monitoring.MetricsWriter

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0

  def close(self) -> None:
    """Finishes the saves already started, flushes metrics, stops the data threads."""
    try:
      self.checkpointer.close()
    finally:
      self.writer.close()
      self.data.close()


def setup(config: ExperimentConfig, workdir: str, *, allow_corpus_change: bool = False) -> Run:
  """Data, model, optimizer, mesh, state (fresh or restored), compiled steps and metrics writer."""
  from transformer_jax import data as data_lib  # Deferred: heavy imports (datasets).

  ckpt = checkpoint_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints,
                                     keep_period=config.keep_every_steps or None)
  resuming, corpus_changed = bool(ckpt.all_steps()), []

  def check_corpus(fingerprints):
    corpus_changed.append(workdir_lib.check_corpus(
        workdir, fingerprints, resuming=resuming, allow_change=allow_corpus_change,
        write=jax.process_index() == 0))

  mesh = sharding.create_mesh()
  platform = mesh.devices.flat[0].platform
  num_workers = config.data.workers_for(platform)
  data = data_lib.create_datasets(config.data, workdir, seed=config.seed,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count(), num_workers=num_workers,
                                  check_corpus=check_corpus)
  log.info("Training batches: %s.", "made in this process" if not num_workers else
           f"{num_workers} worker process{'es' if num_workers > 1 else ''}")
  tok = data.tokenizer
  model_config = config.model_config(vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                                     bos_id=tok.bos_id, eos_id=tok.eos_id)
  model = Transformer(model_config.resolved(mesh.devices.flat[0].platform))
  tx, schedule = schedules.create_optimizer(config.optim, d_model=model.config.d_model,
                                            num_train_steps=config.num_train_steps)
  init_rng, dropout_key = jax.random.split(jax.random.key(config.seed))
  init_fn = functools.partial(init_state, model=model, tx=tx)
  abstract = jax.eval_shape(init_fn, init_rng)
  state_shardings = sharding.state_shardings(abstract, mesh, fsdp=config.fsdp)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, state_shardings)
  restored = ckpt.restore(abstract)
  if restored is not None:
    state, data_state, start_step = restored
    if data_state and not any(corpus_changed):  # A fine-tune on new data starts its epoch.
      data.train_iter.set_state(data_state)
    log.info("Resumed from %s/%d.", ckpt.directory, start_step)
  else:
    state, start_step = jax.jit(init_fn, out_shardings=state_shardings)(init_rng), 0
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  log.info("Model: %s parameters; mesh %s over %d devices in %d processes.", f"{num_params:,}",
           dict(mesh.shape), jax.device_count(), jax.process_count())

  p_train_step, p_eval_step = steps.compile_steps(
      config.parallelism, model=model, mesh=mesh, state_shardings=state_shardings,
      dropout_key=dropout_key, label_smoothing=config.optim.label_smoothing, schedule=schedule)
  writer = monitoring.MetricsWriter(workdir, enabled=jax.process_index() == 0)
  writer.truncate_after(start_step)
  return Run(config, workdir, data, model, mesh, state, start_step, p_train_step, p_eval_step,
             ckpt, writer)


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(config, workdir: str, *,
                       allow_corpus_change: bool = False) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics.

  `config` is an `ExperimentConfig` or a ConfigDict / dict of one (validated here). At eval
  steps it logs eval loss, and BLEU/chrF when `config.eval_bleu_examples` is set. The workdir
  is locked for the whole run (`workdir.WorkdirLock`); resuming it on another corpus is refused
  unless `allow_corpus_change`.

  Raises:
    WorkdirBusyError: another live run holds the workdir.
    CorpusChangedError: the workdir was trained on another corpus.
    NonFiniteLossError: the loss, gradients or state became non-finite.
    CheckpointSaveError: a checkpoint could not be written.
  """
  config = experiment_config.from_config_dict(config)
  workdir = os.path.abspath(layout.check_local(workdir))
  preflight.check_runnable(config, jax.device_count(), jax.devices()[0].platform)
  preflight.check_imported_model(config, workdir)  # Both before anything is written.
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  started = False
  try:
    with _workdir_lock(workdir):
      run = setup(config, workdir, allow_corpus_change=allow_corpus_change)
      started = True
      try:
        final = _loop(run)
      finally:
        run.close()
  except BaseException:
    # A new workdir whose setup failed (a bad corpus, a config the data refutes) is removed, so
    # that nothing is left to refuse or confuse the corrected command.
    if created and not started and jax.process_index() == 0:
      shutil.rmtree(workdir, ignore_errors=True)
    raise
  if run.is_main:
    monitoring.plot_curves(run.writer.path, layout.path(workdir, layout.CURVES_FILE))
  return final


@contextlib.contextmanager
def _workdir_lock(workdir: str):
  """Process 0 holds the workdir lock for the block; every process learns whether it got it."""
  lock = workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0 else None
  error = None
  if lock is not None:
    try:
      lock.acquire()
    except workdir_lib.WorkdirBusyError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    busy = multihost_utils.broadcast_one_to_all(np.array(error is not None))
    if bool(busy) and error is None:
      error = workdir_lib.WorkdirBusyError(f"{workdir} is locked by another run (see process 0).")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def _loop(run: Run) -> dict[str, Any]:
  """Train, log, evaluate, save, stop on preemption: one step at a time."""
  c = run.config
  metrics_log = _MetricsLog(run.writer, run.checkpointer.directory, run.start_step)
  progress = _Progress(run.start_step, c.num_train_steps, enabled=run.is_main)
  input_bound = _InputBoundWarning(len(run.data.train_iter.worker_pids()), enabled=run.is_main)
  final, step, stop = {}, run.start_step, False
  with _Preemption() as preemption, progress:
    for step in range(run.start_step + 1, c.num_train_steps + 1):
      waited = time.perf_counter()
      local_batch = next(run.data.train_iter)
      metrics_log.add_input_wait(time.perf_counter() - waited)
      batch = sharding.global_batch(local_batch, run.mesh)
      run.state, metrics = run.train_step(run.state, batch)
      run.checkpointer.check_for_errors()  # A failed background save stops the run now.
      metrics_log.add(step, metrics)
      progress.add(metrics["train_loss"])
      is_last = step == c.num_train_steps
      save_due = step % c.checkpoint_every_steps == 0 or is_last
      stop = preemption.requested(sync_point=save_due or step % c.log_every_steps == 0)
      if step % c.log_every_steps == 0 or is_last or stop:
        final.update(metrics_log.flush(step))
        progress.complete(final)
        input_bound.check(step, final["input_wait"])
      if c.eval_every_steps and (step % c.eval_every_steps == 0 or is_last):
        final.update(_evaluate(run, step))
        metrics_log.restart_clock()  # Evaluation time is not training throughput.
      if save_due or stop:
        _save(run, step, metrics_log)
      if stop:
        log.warning("Stopped by signal at step %d; checkpoint saved.", step)
        break
  final.update(step=step, preempted=stop)
  return final


def _save(run: Run, step: int, metrics_log: _MetricsLog) -> None:
  """A checkpoint of `run.state` at `step`, only if every step since the last save and the whole
  state (parameters, optimizer moments) are finite: a checkpoint is never poisoned."""
  metrics_log.check_finite(step)
  if not bool(_all_finite(run.state)):
    raise NonFiniteLossError(
        f"The parameters or optimizer state hold NaN or infinite values at step {step}; not "
        f"saving them: {metrics_log.where_last_good()}. {_ADVICE}")
  if run.checkpointer.save(step, run.state, run.data.train_iter.get_state(),
                           run.config.to_dict()):
    metrics_log.last_saved = step


def _evaluate(run: Run, step: int) -> dict[str, Any]:
  """Eval loss (+ BLEU / chrF and samples), written at `step`."""
  metrics = evaluate(run.eval_step, run.state.params, run.data.eval_batches(), run.mesh)
  bleu, samples = translation_metrics(run.config, run.state.params, run.model, run.data)
  metrics.update(bleu)
  run.writer.write(step, metrics)
  log.info("step %d: %s", step, {k: round(v, 4) for k, v in metrics.items()})
  return {**metrics, "samples": samples}


_ADVICE = ("Lower optim.peak_learning_rate (or the schedule scale), set optim.grad_clip_norm, or "
           "train in float32 (--config.model.dtype=float32).")


@jax.jit
def _all_finite(state: TrainState) -> jax.Array:
  """Whether every floating-point leaf of the state is finite (one scalar; no host copy)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def evaluate(p_eval_step, params, eval_batches, mesh) -> dict[str, float]:
  """Token-averaged loss, perplexity and accuracy over every eval batch."""
  totals = None
  for batch in eval_batches:
    sums = p_eval_step(params, sharding.global_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    return {}
  totals = jax.device_get(totals)
  n = max(float(totals["num_tokens"]), 1.0)
  loss = float(totals["nll_sum"]) / n
  return {"eval_loss": float(totals["loss_sum"]) / n, "eval_nll": loss,
          "eval_perplexity": math.exp(min(loss, 50.0)),
          "eval_accuracy": float(totals["correct_sum"]) / n}


def translation_metrics(config: ExperimentConfig, params, model: Transformer,
                        data) -> tuple[dict, list[str]]:
  """BLEU and chrF of the first `eval_bleu_examples` eval sentences, and a few sample lines.

  Each process decodes every `process_count`-th sentence (from its `process_index`) and the
  hypotheses are gathered to every process, so hosts share the work instead of repeating it.
  """
  from transformer_jax import evaluation
  n = config.eval_bleu_examples
  if not n or not data.eval_sources:
    return {}, []
  sources = data.eval_sources if n < 0 else data.eval_sources[:n]
  references = data.eval_references[:len(sources)]
  index, count = jax.process_index(), jax.process_count()
  mine = evaluation.translate(model, _local_copy(params), data.tokenizer, sources[index::count],
                              beam_size=config.eval_beam_size)
  hypotheses = interleave(_gather_from_processes(mine, count), len(sources))
  scores = evaluation.corpus_scores(hypotheses, references, tokenize=config.eval_bleu_tokenize)
  samples = [f"  {s}\n  -> {h}\n     (reference: {r})" for s, h, r in
             list(zip(sources, hypotheses, references))[:config.num_sample_translations]]
  return {"eval_bleu": scores["bleu"].score, "eval_chrf": scores["chrf"].score}, samples


def interleave(parts: list[list[str]], total: int) -> list[str]:
  """The inverse of dealing `total` items round-robin: `parts[p]` held items p, p + P, ..."""
  out = [""] * total
  for p, part in enumerate(parts):
    out[p::len(parts)] = part
  return out


def _gather_from_processes(lines: list[str], count: int) -> list[list[str]]:
  """Every process's `lines` (UTF-8 through a padded byte array), in process order."""
  if count == 1:
    return [lines]
  from jax.experimental import multihost_utils
  encoded = [line.encode("utf-8") for line in lines]
  sizes = np.asarray([len(lines), max(map(len, encoded), default=0)], np.int32)
  rows, width = multihost_utils.process_allgather(sizes).max(axis=0)
  lengths = np.full((rows,), -1, np.int32)  # -1: no line in this row.
  table = np.zeros((rows, max(width, 1)), np.uint8)
  for i, line in enumerate(encoded):
    lengths[i] = len(line)
    table[i, :len(line)] = np.frombuffer(line, np.uint8)
  all_lengths = multihost_utils.process_allgather(lengths)  # [processes, rows]
  all_tables = multihost_utils.process_allgather(table)  # [processes, rows, width]
  return [[bytes(row[:n]).decode("utf-8") for row, n in zip(t, ls) if n >= 0]
          for t, ls in zip(all_tables, all_lengths)]


def _local_copy(params):
  """A single-device copy of the parameters for host-side decoding: a replicated array's local
  shard (no communication), or an FSDP-sharded one gathered from every process."""
  def one(x):
    if x.is_fully_replicated:
      return jax.device_put(x.addressable_shards[0].data, jax.local_devices()[0])
    if jax.process_count() == 1:
      return jax.device_put(x, jax.local_devices()[0])
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(x, tiled=True)
  return jax.tree.map(one, params)


# ----------------------------------------------------------------------------- loop helpers


class _MetricsLog:
  """Per-step metrics stay on device until a log step: then one fetch, a finiteness check, a
  record in metrics.jsonl (losses averaged since the last record, throughput) and TensorBoard."""

  def __init__(self, writer: monitoring.MetricsWriter, checkpoint_dir: str, start_step: int):
    self._writer, self._checkpoint_dir = writer, checkpoint_dir
    self._pending: list[dict] = []
    self.last_saved = start_step or None
    self.restart_clock()

  def restart_clock(self) -> None:
    self._tokens, self._input_wait, self._t0 = 0.0, 0.0, time.perf_counter()

  def add_input_wait(self, seconds: float) -> None:
    """Time the loop blocked on the next batch (its share of wall time is `input_wait`)."""
    self._input_wait += seconds

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self._pending.append({"step": step, **metrics})

  def check_finite(self, step: int) -> list[dict]:
    """The pending metrics, fetched; raises NonFiniteLossError if any loss is NaN or infinite."""
    fetched = jax.device_get(self._pending)
    for metrics in fetched:
      for name in ("train_loss", "grad_norm"):  # A NaN gradient poisons a finite loss's update.
        value = float(metrics.get(name, 0.0))
        if not math.isfinite(value):
          raise NonFiniteLossError(
              f"Training {name.replace('train_', '').replace('_', ' ')} is {value} at step "
              f"{int(metrics['step'])} (checked at step {step}); stopping: "
              f"{self.where_last_good()}. {_ADVICE}")
    return fetched

  def where_last_good(self) -> str:
    if self.last_saved is None:
      return "no checkpoint was written"
    return (f"the last good checkpoint, step {self.last_saved}, is untouched in "
            f"{self._checkpoint_dir}")

  def flush(self, step: int) -> dict[str, float]:
    """Writes one record for the steps since the last flush; returns it."""
    fetched = self.check_finite(step)
    self._pending = []
    self._tokens += sum(float(m["num_tokens"]) for m in fetched)
    record = {k: float(v) for k, v in fetched[-1].items() if k != "step"}
    record["train_loss"] = float(np.mean([m["train_loss"] for m in fetched]))
    elapsed = max(time.perf_counter() - self._t0, 1e-9)
    record["tokens_per_sec"] = self._tokens / elapsed
    record["input_wait"] = min(self._input_wait / elapsed, 1.0)
    self._writer.write(step, record)
    self.restart_clock()
    return record


class _Progress:
  """A tqdm bar over completed steps: a step counts once its loss has been computed on device,
  checked without blocking, so the bar never runs ahead of the device."""

  def __init__(self, start: int, total: int, enabled: bool):
    from tqdm.auto import tqdm
    self._bar = tqdm(total=total, initial=start, disable=not enabled, desc="train", unit="step",
                     dynamic_ncols=True, mininterval=1.0)
    self._running: collections.deque[jax.Array] = collections.deque()

  def __enter__(self) -> _Progress:
    return self

  def __exit__(self, *exc) -> None:
    self._bar.close()

  @property
  def completed(self) -> int:
    """The steps counted as done (the bar's position)."""
    return self._bar.n

  def add(self, loss: jax.Array) -> None:
    self._running.append(loss)
    done = 0
    while self._running and self._running[0].is_ready():
      self._running.popleft()
      done += 1
    if done:
      self._bar.update(done)

  def complete(self, record: dict[str, float]) -> None:
    """Every step so far is complete (its metrics were fetched); shows the latest record."""
    self._bar.update(len(self._running))
    self._running.clear()
    self._bar.set_postfix(loss=f"{record['train_loss']:.3f}", lr=f"{record['learning_rate']:.2e}",
                          tok_s=f"{record['tokens_per_sec']:.0f}",
                          wait=f"{record['input_wait']:.0%}")


class _InputBoundWarning:
  """One warning line when the loop waits for input more than 10% of a log interval's wall
  time (not counting the first interval, which includes starting the workers)."""

  THRESHOLD = 0.10

  def __init__(self, num_workers: int, enabled: bool):
    self._num_workers, self._enabled = num_workers, enabled
    self._intervals, self._warned = 0, False

  def check(self, step: int, input_wait: float) -> None:
    self._intervals += 1
    if self._enabled and not self._warned and self._intervals > 1 and (
        input_wait > self.THRESHOLD):
      self._warned = True
      log.warning("input-bound: the loop waited for batches %.0f%% of the time up to step %d; "
                  "raise data.num_workers (now %d).", 100 * input_wait, step, self._num_workers)


class _Preemption:
  """Turns SIGTERM / SIGINT into a flag the loop checks after each step.

  With several processes the flag is agreed (one all-gather) only at sync points, the steps
  where the loop fetches metrics or may save anyway, so that all processes save the same step
  and no other step pays for a collective.
  """

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self) -> _Preemption:
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: no handler, no preemption saves.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    log.warning("Received %s: saving a checkpoint at the next %s, then exiting.",
                signal.Signals(signum).name,
                "log or checkpoint step" if jax.process_count() > 1 else "step")

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self, *, sync_point: bool) -> bool:
    """Whether to save and stop now (in every process alike)."""
    flag = self.signum is not None
    if jax.process_count() == 1:
      return flag
    if not sync_point:
      return False
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array(flag))))
