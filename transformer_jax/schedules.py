"""Learning-rate schedules (the paper's, linear warmup + rsqrt decay, warmup + cosine) and the
Adam optimizer built from the `optim` config block.

Every schedule is a function of the paper's step number (the first update is step 1);
`optimizer_schedule` shifts it for optax, whose update counter starts at 0.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from transformer_jax.experiment_config import OptimConfig, ScheduleKind, WeightDecayMask

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def paper_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> Schedule:
  """lrate = scale * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5) (Section 5.3)."""

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    safe = jnp.maximum(step, 1.0)
    lr = scale * d_model**-0.5 * jnp.minimum(safe**-0.5, safe * warmup_steps**-1.5)
    return jnp.where(step > 0, lr, 0.0)

  return schedule


def rsqrt_schedule(peak: float, warmup_steps: int) -> Schedule:
  """Linear warmup to `peak` at `warmup_steps`, then peak * sqrt(warmup_steps / step)."""

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / warmup_steps
    decay = peak * jnp.sqrt(warmup_steps / jnp.maximum(step, 1.0))
    return jnp.where(step < warmup_steps, warm, decay)

  return schedule


def cosine_schedule(peak: float, warmup_steps: int, total_steps: int,
                    end_fraction: float = 0.0) -> Schedule:
  """Linear warmup to `peak`, then cosine decay to `end_fraction * peak` at `total_steps`."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=end_fraction * peak)


def create_schedule(kind: ScheduleKind, *, d_model: int, warmup_steps: int,
                    peak_learning_rate: float, total_steps: int, scale: float = 1.0,
                    end_fraction: float = 0.0) -> Schedule:
  """The schedule named by `kind`, in paper step numbering (arguments as `OptimConfig` checks)."""
  builders = {
      "paper": lambda: paper_schedule(d_model, warmup_steps, scale),
      "rsqrt": lambda: rsqrt_schedule(peak_learning_rate, warmup_steps),
      "cosine": lambda: cosine_schedule(peak_learning_rate, warmup_steps, total_steps,
                                        end_fraction),
      "constant": lambda: lambda step: jnp.full((), peak_learning_rate, jnp.float32),
  }
  return builders[kind]()


def optimizer_schedule(schedule: Schedule) -> Schedule:
  """The same schedule indexed by optax's update count (0 for the first update)."""
  return lambda count: schedule(count + 1)


# ----------------------------------------------------------------------------- the optimizer


def weight_decay_mask(kind: WeightDecayMask):
  """The `mask` argument of `optax.adamw` for `optim.weight_decay_mask`.

  "all" decays every parameter (mask None: the optimizer state has no mask wrapper, so
  checkpoints from before this option restore). "matrices" decays only the weight matrices,
  leaves named `kernel` or `embedding`, sparing biases and LayerNorm scales and offsets (by name,
  not by rank: the attention projections' biases are [heads, head_dim]).
  """
  if kind == "all":
    return None

  def is_matrix(path, _):
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) in ("kernel", "embedding")
  return lambda params: jax.tree_util.tree_map_with_path(is_matrix, params)


def create_optimizer(o: OptimConfig, *, d_model: int, num_train_steps: int):
  """Adam(beta1, beta2, eps) under the configured schedule, optional clipping and accumulation.

  Returns `(tx, schedule)`; `schedule(step)` is the rate used at step `step` (the first is 1;
  with `grad_accum_steps=k`, k steps make one update).
  """
  schedule = create_schedule(
      o.schedule, d_model=d_model, warmup_steps=o.warmup_steps,
      peak_learning_rate=o.peak_learning_rate, total_steps=num_train_steps,
      scale=o.schedule_scale, end_fraction=o.end_learning_rate_fraction)
  chain = []
  if o.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
  chain.append(optax.adamw(optimizer_schedule(schedule), b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay,
                           mask=weight_decay_mask(o.weight_decay_mask)))
  tx = optax.chain(*chain)
  k = o.grad_accum_steps
  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k)
    # Steps count batches; the k batches ending in update u all report update u's rate.
    per_update = schedule
    schedule = lambda step: per_update((jnp.asarray(step) - 1) // k + 1)
  return tx, schedule
