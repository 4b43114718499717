"""TrainState, the label-smoothed loss, pure train/eval steps, and the training loop."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import monitoring, schedules, sharding
from transformer_jax.config import TransformerConfig
from transformer_jax.model import Transformer

log = logging.getLogger(__name__)

TrainState = train_state.TrainState
BATCH_KEYS = ("src", "tgt_in", "tgt_out", "src_segments", "tgt_segments", "src_positions",
              "tgt_positions")


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; no checkpoint was written past the last good one."""


# ----------------------------------------------------------------------------- config edges


def build_model_config(model_config, *, vocab_size: int, bos_id: int, eos_id: int,
                       pad_id: int = 0) -> TransformerConfig:
  """`TransformerConfig` from the `model` block; the tokenizer fixes the vocabulary and ids."""
  fields = dict(model_config)
  known = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"config.model.{unknown[0]} is not a TransformerConfig field; known fields: "
                     f"{sorted(known)}.")
  if fields.get("dtype", "auto") == "auto":  # bf16 on accelerators, float32 on CPU.
    fields["dtype"] = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  fields.update(vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
  return TransformerConfig(**fields)


WEIGHT_DECAY_MASKS = ("all", "matrices")


def weight_decay_mask(kind: str):
  """The `mask` argument of `optax.adamw` for `optim.weight_decay_mask`.

  "all" decays every parameter (mask None: the optimizer state has no mask wrapper, so
  checkpoints from before this option restore). "matrices" decays only the weight matrices,
  leaves named `kernel` or `embedding`, sparing biases and LayerNorm scales and offsets (by name,
  not by rank: the attention projections' biases are [heads, head_dim]).
  """
  if kind == "all":
    return None
  if kind == "matrices":
    def is_matrix(path, _):
      last = path[-1]
      return getattr(last, "key", getattr(last, "name", None)) in ("kernel", "embedding")
    return lambda params: jax.tree_util.tree_map_with_path(is_matrix, params)
  raise ValueError(f"optim.weight_decay_mask={kind!r} is not one of {WEIGHT_DECAY_MASKS}.")


def create_optimizer(optim_config, *, d_model: int, num_train_steps: int):
  """Adam(beta1, beta2, eps) under the configured schedule, optional clipping and accumulation.

  Returns `(tx, schedule)`; `schedule(step)` is the rate used at step `step` (the first is 1;
  with `grad_accum_steps=k`, k steps make one update).
  """
  o = optim_config
  schedule = schedules.create_schedule(
      o.schedule, d_model=d_model, warmup_steps=o.warmup_steps,
      peak_learning_rate=o.peak_learning_rate, total_steps=num_train_steps,
      scale=o.get("schedule_scale", 1.0), end_fraction=o.get("end_learning_rate_fraction", 0.0))
  chain = []
  if o.get("grad_clip_norm", 0.0) and o.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
  chain.append(optax.adamw(schedules.optimizer_schedule(schedule), b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.get("weight_decay", 0.0),
                           mask=weight_decay_mask(o.get("weight_decay_mask", "all"))))
  tx = optax.chain(*chain)
  k = o.get("grad_accum_steps", 1)
  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k)
    # Steps count batches; the k batches ending in update u all report update u's rate.
    per_update = schedule
    schedule = lambda step: per_update((jnp.asarray(step) - 1) // k + 1)
  return tx, schedule


# ----------------------------------------------------------------------------- loss and steps


def cross_entropy_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array,
                       label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """Sums over real tokens of the label-smoothed cross-entropy, the NLL and correct predictions.

  The smoothed target puts 1 - eps on the label and eps spread uniformly over the vocabulary;
  computed from integer labels, without materializing one-hot targets.
  """
  logits = logits_BxTxV.astype(jnp.float32)
  max_logit = jnp.max(logits, axis=-1)
  shifted = logits - jax.lax.stop_gradient(max_logit)[..., None]
  log_z = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
  target_logit = jnp.take_along_axis(shifted, targets_BxT[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  smooth = log_z - jnp.mean(shifted, axis=-1)
  loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth
  w = weights_BxT.astype(jnp.float32)
  # "Correct" when the label's logit is the maximum: no second pass over [B, T, V] for an argmax.
  correct = (target_logit >= 0.0).astype(jnp.float32)
  return {"loss_sum": jnp.sum(loss * w), "nll_sum": jnp.sum(nll * w),
          "correct_sum": jnp.sum(correct * w), "num_tokens": jnp.sum(w)}


def _model_inputs(batch):
  return dict(src_segments=batch.get("src_segments"), tgt_segments=batch.get("tgt_segments"),
              src_positions=batch.get("src_positions"), tgt_positions=batch.get("tgt_positions"))


def _target_weights(batch):
  return batch["tgt_out"] != 0  # pad_id is always 0.


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: Transformer,
               dropout_key: jax.Array, label_smoothing: float, schedule):
  """One optimizer step on a (global) batch: `(state, batch) -> (state, metrics)`."""
  rng = jax.random.fold_in(dropout_key, state.step)

  def loss_fn(params):
    logits = model.apply({"params": params}, batch["src"], batch["tgt_in"], deterministic=False,
                         rngs={"dropout": rng}, **_model_inputs(batch))
    sums = cross_entropy_loss(logits, batch["tgt_out"], _target_weights(batch), label_smoothing)
    return sums["loss_sum"] / jnp.maximum(sums["num_tokens"], 1.0), sums

  grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  n = jnp.maximum(sums["num_tokens"], 1.0)
  metrics = {"train_loss": sums["loss_sum"] / n, "train_nll": sums["nll_sum"] / n,
             "train_accuracy": sums["correct_sum"] / n, "num_tokens": sums["num_tokens"],
             "grad_norm": optax.tree_utils.tree_norm(grads),
             "learning_rate": schedule(state.step + 1)}
  return new_state, metrics


def eval_step(params, batch: dict[str, jax.Array], *, model: Transformer,
              label_smoothing: float) -> dict[str, jax.Array]:
  """Loss sums on one batch, for averaging over the whole eval set."""
  logits = model.apply({"params": params}, batch["src"], batch["tgt_in"], deterministic=True,
                       **_model_inputs(batch))
  return cross_entropy_loss(logits, batch["tgt_out"], _target_weights(batch), label_smoothing)


def init_state(rng: jax.Array, *, model: Transformer, tx) -> TrainState:
  """Fresh parameters and optimizer state (shapes do not depend on the sequence length)."""
  dummy = jnp.ones((1, 8), jnp.int32)
  params = model.init(rng, dummy, dummy)["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


# ----------------------------------------------------------------------------- the loop


class _Preemption:
  """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: no handler, no preemption saves.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    log.warning("Received %s: saving a checkpoint after this step, then exiting.",
                signal.Signals(signum).name)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self) -> bool:
    """Whether any process was signalled (agreed across processes, so all save together)."""
    flag = self.signum is not None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      flag = bool(np.any(multihost_utils.process_allgather(np.array(flag))))
    return flag


def _check_finite(history: list[dict], step: int, last_good: int | None, workdir: str) -> None:
  for metrics in history:
    loss = float(metrics["train_loss"])
    if not math.isfinite(loss):
      where = (f"the last good checkpoint, step {last_good}, is untouched in "
               f"{checkpoint_lib.checkpoint_dir(workdir)}" if last_good is not None
               else "no checkpoint was written")
      raise NonFiniteLossError(
          f"Training loss is {loss} at step {int(metrics['step'])} (checked at step {step}); "
          f"stopping: {where}. Lower optim.peak_learning_rate (or the schedule scale), set "
          "optim.grad_clip_norm, or train in float32 (--config.model.dtype=float32).")


def evaluate(p_eval_step, params, eval_batches, mesh) -> dict[str, float]:
  """Token-averaged loss, perplexity and accuracy over every eval batch."""
  totals = None
  for batch in eval_batches:
    sums = p_eval_step(params, sharding.global_batch(_select(batch), mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    return {}
  totals = jax.device_get(totals)
  n = max(float(totals["num_tokens"]), 1.0)
  loss = float(totals["nll_sum"]) / n
  return {"eval_loss": float(totals["loss_sum"]) / n, "eval_nll": loss,
          "eval_perplexity": math.exp(min(loss, 50.0)),
          "eval_accuracy": float(totals["correct_sum"]) / n}


def _local_copy(params):
  """A single-device copy of (replicated or FSDP-sharded) parameters, for host-side decoding."""
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: jax.device_put(x, jax.local_devices()[0]), params)
  from jax.experimental import multihost_utils
  return jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True), params)


def translation_metrics(config, params, model: Transformer, data) -> tuple[dict, list[str]]:
  """BLEU and chrF of the first `eval_bleu_examples` eval sentences, and a few sample lines."""
  from transformer_jax import evaluation
  n = config.get("eval_bleu_examples", 0)
  if not n or not data.eval_sources:
    return {}, []
  sources = data.eval_sources if n < 0 else data.eval_sources[:n]
  references = data.eval_references[:len(sources)]
  beam = config.get("eval_beam_size", 4)
  hypotheses, scores = evaluation.translate_and_score(
      model, _local_copy(params), data.tokenizer, sources, references,
      tokenize=config.get("eval_bleu_tokenize", "13a"), beam_size=max(beam, 1), greedy=beam <= 1)
  samples = [f"  {s}\n  -> {h}\n     (reference: {r})" for s, h, r in
             list(zip(sources, hypotheses, references))[:config.get("num_sample_translations", 3)]]
  metrics = {"eval_bleu": scores["bleu"].score, "eval_chrf": scores["chrf"].score}
  return metrics, samples


def _select(batch):
  return {k: np.asarray(batch[k], np.int32) for k in BATCH_KEYS if k in batch}


def train_and_evaluate(config, workdir: str, *, eval_hook=None) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics.

  At eval steps it logs eval loss, and BLEU/chrF when `config.eval_bleu_examples` is set;
  `eval_hook(params, model, data, step) -> dict` adds more metrics.
  """
  from transformer_jax import data as data_lib  # Deferred: heavy imports (datasets, grain).

  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  # Fail on a bad model block now, before the (possibly long) data preparation.
  build_model_config(config.model, vocab_size=max(config.data.vocab_size, 3), bos_id=1, eos_id=2)
  data = data_lib.create_datasets(config.data, workdir, seed=config.seed,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
  tok = data.tokenizer
  model_config = build_model_config(config.model, vocab_size=tok.vocab_size, bos_id=tok.bos_id,
                                    eos_id=tok.eos_id, pad_id=tok.pad_id)
  model = Transformer(model_config)
  tx, schedule = create_optimizer(config.optim, d_model=model_config.d_model,
                                  num_train_steps=config.num_train_steps)
  mesh = sharding.create_mesh()
  rng = jax.random.key(config.seed)
  init_rng, dropout_key = jax.random.split(rng)
  init_fn = functools.partial(init_state, model=model, tx=tx)
  abstract = jax.eval_shape(init_fn, init_rng)
  state_shardings = sharding.state_shardings(abstract, mesh, fsdp=config.get("fsdp", False))
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, state_shardings)

  ckpt = checkpoint_lib.Checkpointer(workdir, max_to_keep=config.get("keep_checkpoints", 3),
                                     keep_period=config.get("keep_every_steps", 0) or None)
  restored = ckpt.restore(abstract)
  if restored is not None:
    state, data_state, start_step = restored
    if data_state:
      data.train_iter.set_state(data_state)
    log.info("Resumed from %s/%d.", ckpt.directory, start_step)
  else:
    state = jax.jit(init_fn, out_shardings=state_shardings)(init_rng)
    start_step = 0
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  log.info("Model: %s parameters; mesh %s over %d devices in %d processes.", f"{num_params:,}",
           dict(mesh.shape), jax.device_count(), jax.process_count())

  replicated = sharding.replicated(mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  p_train_step = jax.jit(
      functools.partial(train_step, model=model, dropout_key=dropout_key,
                        label_smoothing=config.optim.label_smoothing, schedule=schedule),
      in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, replicated),
      donate_argnums=0)
  p_eval_step = jax.jit(
      functools.partial(eval_step, model=model, label_smoothing=config.optim.label_smoothing),
      in_shardings=(state_shardings.params, batch_sharding), out_shardings=replicated)

  writer = monitoring.MetricsWriter(workdir, enabled=is_main)
  writer.truncate_after(start_step)
  config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  num_steps = config.num_train_steps
  pending, last_saved, final = [], start_step if restored else None, {}
  progress = _progress_bar(start_step, num_steps, is_main)
  tokens, t0 = 0.0, time.perf_counter()
  step = start_step
  try:
    with _Preemption() as preemption:
      for step in range(start_step + 1, num_steps + 1):
        batch = sharding.global_batch(_select(next(data.train_iter)), mesh)
        state, metrics = p_train_step(state, batch)
        pending.append({"step": step, **metrics})
        is_last = step == num_steps
        stop = preemption.requested()
        if step % config.log_every_steps == 0 or is_last or stop:
          fetched = jax.device_get(pending)
          pending = []
          _check_finite(fetched, step, last_saved, workdir)
          tokens += sum(float(m["num_tokens"]) for m in fetched)
          final = {k: float(v) for k, v in fetched[-1].items() if k != "step"}
          final["train_loss"] = float(np.mean([m["train_loss"] for m in fetched]))
          final["tokens_per_sec"] = tokens / max(time.perf_counter() - t0, 1e-9)
          writer.write(step, final)
          progress.set_postfix(loss=f"{final['train_loss']:.3f}",
                               lr=f"{final['learning_rate']:.2e}",
                               tok_s=f"{final['tokens_per_sec']:.0f}")
          tokens, t0 = 0.0, time.perf_counter()
        progress.update(1)
        if config.eval_every_steps and (step % config.eval_every_steps == 0 or is_last):
          eval_metrics = evaluate(p_eval_step, state.params, data.eval_batches(), mesh)
          bleu, samples = translation_metrics(config, state.params, model, data)
          eval_metrics.update(bleu)
          final["samples"] = samples
          if eval_hook is not None:
            eval_metrics.update(eval_hook(state.params, model, data, step))
          writer.write(step, eval_metrics)
          final.update(eval_metrics)
          log.info("step %d: %s", step, {k: round(v, 4) for k, v in eval_metrics.items()})
          t0 = time.perf_counter()  # Evaluation time is not training throughput.
        if step % config.checkpoint_every_steps == 0 or is_last or stop:
          _check_finite(jax.device_get(pending), step, last_saved, workdir)
          if ckpt.save(step, state, data.train_iter.get_state(), config_dict):
            last_saved = step
        if stop:
          log.warning("Stopped by signal at step %d; checkpoint saved.", step)
          break
  finally:  # Whatever happens, finish the saves already started and flush the metrics.
    progress.close()
    ckpt.close()
    writer.close()
  if is_main:
    monitoring.plot_curves(writer.path, os.path.join(workdir, "curves.png"))
  final["step"] = step
  final["preempted"] = preemption.signum is not None
  return final


def _progress_bar(start: int, total: int, enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=start, disable=not enabled, desc="train", unit="step",
              dynamic_ncols=True, mininterval=1.0)
