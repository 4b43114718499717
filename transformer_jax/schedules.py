"""Learning-rate schedules: the paper's, linear warmup + rsqrt decay, warmup + cosine.

Every schedule is a function of the paper's step number (the first update is step 1);
`optimizer_schedule` shifts it for optax, whose update counter starts at 0.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
KINDS = ("paper", "rsqrt", "cosine", "constant")


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


def create_schedule(kind: str, *, d_model: int, warmup_steps: int, peak_learning_rate: float,
                    total_steps: int, scale: float = 1.0, end_fraction: float = 0.0) -> Schedule:
  """The schedule named by `kind` (one of KINDS), in paper step numbering."""
  if warmup_steps <= 0 and kind != "constant":
    raise ValueError(f"optim.warmup_steps must be positive for the '{kind}' schedule, "
                     f"got {warmup_steps}.")
  if kind == "paper":
    return paper_schedule(d_model, warmup_steps, scale)
  if kind == "rsqrt":
    return rsqrt_schedule(peak_learning_rate, warmup_steps)
  if kind == "cosine":
    return cosine_schedule(peak_learning_rate, warmup_steps, total_steps, end_fraction)
  if kind == "constant":
    return lambda step: jnp.full((), peak_learning_rate, jnp.float32)
  raise ValueError(f"optim.schedule={kind!r} is not one of {KINDS}.")


def optimizer_schedule(schedule: Schedule) -> Schedule:
  """The same schedule indexed by optax's update count (0 for the first update)."""
  return lambda count: schedule(count + 1)
