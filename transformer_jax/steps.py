"""The pure train / eval steps, in both parallel modes.

`parallelism="jit"` (the default): the steps are written for the global batch and compiled
with `jax.jit` and `NamedSharding`s; XLA inserts the collectives, except in the fused loss,
which runs per device on its rows (`_per_device`). `parallelism="shard_map"`: the loss and
gradients are written per device under `jax.shard_map` over the batch axes (`slice`, `data`),
with explicit collectives: each device computes loss sums and gradients on its rows; gradients
are summed over every device (`psum`, or for FSDP `psum_scatter` onto the shards within a
slice, whose parameters are `all_gather`ed before use, then `psum` over slices) after each
device divided its share by the global token count, so the update equals the jit step's. The
optimizer update runs on the global (replicated or sharded) arrays in both.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import PartitionSpec as P

from transformer_jax import sharding
from transformer_jax import losses
from transformer_jax.losses import cross_entropy_loss, projected_cross_entropy
from transformer_jax.experiment_config import Parallelism
from transformer_jax.model import Transformer
from transformer_jax.sharding import BATCH_AXES, DATA_AXIS, SLICE_AXIS

TrainState = train_state.TrainState


def _model_inputs(batch):
  return dict(src_segments=batch.get("src_segments"), tgt_segments=batch.get("tgt_segments"),
              src_positions=batch.get("src_positions"), tgt_positions=batch.get("tgt_positions"))


def _loss_sums(params, batch, *, model: Transformer, label_smoothing: float,
               rng: jax.Array | None = None, fused_loss: bool = False,
               mesh: jax.sharding.Mesh | None = None,
               chunk_tokens: int | None = None) -> dict[str, jax.Array]:
  """Loss sums of `model` on `batch` (training mode with dropout when `rng` is given).

  `fused_loss` (tied embeddings only): the output projection and the loss run fused and
  chunked (`losses.projected_cross_entropy`), never materializing the `[B, T, V]` logits;
  given the `mesh` of a global (jit) batch, each device runs it on its own rows.
  """
  kwargs = dict(deterministic=rng is None, rngs=None if rng is None else {"dropout": rng},
                **_model_inputs(batch))
  if fused_loss and model.config.share_embeddings:
    hidden, projection, bias = model.apply({"params": params}, batch["src"], batch["tgt_in"],
                                           return_hidden=True, **kwargs)
    loss = functools.partial(projected_cross_entropy, label_smoothing=label_smoothing,
                             chunk_tokens=chunk_tokens)
    args = (hidden, projection, bias, batch["tgt_out"], _target_weights(batch))
    return loss(*args) if mesh is None else _per_device(loss, mesh, *args)
  logits = model.apply({"params": params}, batch["src"], batch["tgt_in"], **kwargs)
  return cross_entropy_loss(logits, batch["tgt_out"], _target_weights(batch), label_smoothing)


def _target_weights(batch):
  return batch["tgt_out"] != 0  # pad_id is always 0.


def _per_device(loss, mesh, hidden, projection, bias, targets, weights):
  """`loss` of a global batch computed per device on its rows, the sums added up.

  Written for the global batch, the chunked loss loop would walk the global token axis: every
  device would compute every chunk's loss after all-gathering its hidden states (on 8 TPU
  chips ~256 GiB per step at base). Per device it reads only local rows; the projection's
  gradient is summed over devices once, after the loop (shard_map's transpose of a
  replicated input).
  """
  if bias is None:
    bias = jnp.zeros((projection.shape[0],), jnp.float32)
  rows = P(BATCH_AXES)
  per_device = lambda *args: jax.lax.psum(loss(*args), BATCH_AXES)
  return jax.shard_map(per_device, mesh=mesh, in_specs=(rows, P(), P(), rows, rows),
                       out_specs=P(), check_vma=False)(hidden, projection, bias, targets,
                                                       weights)


def _apply_update(state: TrainState, grads, sums, schedule) -> tuple[TrainState, dict]:
  """The optimizer update with token-averaged `grads`, and the step's metrics."""
  n = jnp.maximum(sums["num_tokens"], 1.0)
  metrics = {"train_loss": sums["loss_sum"] / n, "train_nll": sums["nll_sum"] / n,
             "train_accuracy": sums["correct_sum"] / n, "num_tokens": sums["num_tokens"],
             "grad_norm": optax.tree_utils.tree_norm(grads),
             "learning_rate": schedule(state.step + 1)}
  return state.apply_gradients(grads=grads), metrics


# ----------------------------------------------------------------------------- jit (global) steps


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: Transformer,
               dropout_key: jax.Array, label_smoothing: float, schedule,
               fused_loss: bool = True, mesh: jax.sharding.Mesh | None = None,
               chunk_tokens: int | None = None):
  """One optimizer step on a (global) batch: `(state, batch) -> (state, metrics)`.

  `fused_loss=False` computes the loss on materialized logits (the plain path; same result).
  With the batch's `mesh`, the fused loss runs per device (see `_per_device`).
  """
  rng = jax.random.fold_in(dropout_key, state.step)

  def loss_fn(params):
    sums = _loss_sums(params, batch, model=model, label_smoothing=label_smoothing, rng=rng,
                      fused_loss=fused_loss, mesh=mesh, chunk_tokens=chunk_tokens)
    return sums["loss_sum"] / jnp.maximum(sums["num_tokens"], 1.0), sums

  grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
  return _apply_update(state, grads, sums, schedule)


def eval_step(params, batch: dict[str, jax.Array], *, model: Transformer,
              label_smoothing: float) -> dict[str, jax.Array]:
  """Loss sums on one batch, for averaging over the whole eval set."""
  return _loss_sums(params, batch, model=model, label_smoothing=label_smoothing)


def init_state(rng: jax.Array, *, model: Transformer, tx) -> TrainState:
  """Fresh parameters and optimizer state (shapes do not depend on the sequence length)."""
  dummy = jnp.ones((1, 8), jnp.int32)
  params = model.init(rng, dummy, dummy)["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


# ----------------------------------------------------------------------------- shard_map steps


def _sharded_axis(spec: P) -> int | None:
  """The axis of a parameter split over `data` (FSDP), or None when it is replicated."""
  for axis, name in enumerate(spec):
    if name == DATA_AXIS:
      return axis
  return None


def _gather(params, specs):
  """Full parameters on every device: FSDP shards are all-gathered, replicated ones kept."""
  def gather(x, spec):
    axis = _sharded_axis(spec)
    return x if axis is None else jax.lax.all_gather(x, DATA_AXIS, axis=axis, tiled=True)
  return jax.tree.map(gather, params, specs)


def _reduce(grads, specs):
  """Gradients summed over `data`: onto each device's shard (FSDP) or onto every device."""
  def reduce(g, spec):
    axis = _sharded_axis(spec)
    if axis is None:
      return jax.lax.psum(g, BATCH_AXES)
    # FSDP shards live within a slice: reduce-scatter there, then sum the slices' shards.
    shard = jax.lax.psum_scatter(g, DATA_AXIS, scatter_dimension=axis, tiled=True)
    return jax.lax.psum(shard, SLICE_AXIS)
  return jax.tree.map(reduce, grads, specs)


def shard_map_grads(params, batch, rng, *, model: Transformer, label_smoothing: float,
                    mesh: jax.sharding.Mesh, param_specs, chunk_tokens: int | None = None):
  """Gradients of the token-averaged loss, and the loss sums over every device's rows.

  Each device differentiates its rows' loss sum divided by the global token count (one `psum`
  of the weights first), so its gradient is its exact share of the jit step's; the shares are
  then summed over `data`. `param_specs` are the parameters' `PartitionSpec`s (all `P()`
  unless FSDP); the gradients come back with the same specs.
  """
  def per_device(params_shard, rows, rng):
    num_tokens = jax.lax.psum(jnp.sum(_target_weights(rows).astype(jnp.float32)), BATCH_AXES)

    def loss_fn(params):
      sums = _loss_sums(params, rows, model=model, label_smoothing=label_smoothing, rng=rng,
                        fused_loss=True, chunk_tokens=chunk_tokens)
      return sums["loss_sum"] / jnp.maximum(num_tokens, 1.0), sums

    grads, sums = jax.grad(loss_fn, has_aux=True)(_gather(params_shard, param_specs))
    return _reduce(grads, param_specs), jax.lax.psum(sums, BATCH_AXES)

  # check_vma=False: every collective is written out here; none is inferred by autodiff.
  return jax.shard_map(per_device, mesh=mesh, in_specs=(param_specs, P(BATCH_AXES), P()),
                       out_specs=(param_specs, P()), check_vma=False)(params, batch, rng)


def shard_map_train_step(state: TrainState, batch: dict[str, jax.Array], *, model: Transformer,
                         dropout_key: jax.Array, label_smoothing: float, schedule,
                         mesh: jax.sharding.Mesh, param_specs,
                         chunk_tokens: int | None = None):
  """`train_step` with the loss and gradients computed per device under `jax.shard_map`."""
  rng = jax.random.fold_in(dropout_key, state.step)
  grads, sums = shard_map_grads(state.params, batch, rng, model=model,
                                label_smoothing=label_smoothing, mesh=mesh,
                                param_specs=param_specs, chunk_tokens=chunk_tokens)
  return _apply_update(state, grads, sums, schedule)


def shard_map_eval_step(params, batch: dict[str, jax.Array], *, model: Transformer,
                        label_smoothing: float, mesh: jax.sharding.Mesh,
                        param_specs) -> dict[str, jax.Array]:
  """`eval_step` computed per device under `jax.shard_map`, the sums reduced with `psum`."""
  def per_device(params_shard, rows):
    sums = _loss_sums(_gather(params_shard, param_specs), rows, model=model,
                      label_smoothing=label_smoothing)
    return jax.lax.psum(sums, BATCH_AXES)

  return jax.shard_map(per_device, mesh=mesh, in_specs=(param_specs, P(BATCH_AXES)),
                       out_specs=P(), check_vma=False)(params, batch)


# ----------------------------------------------------------------------------- compiled steps


def under_mesh(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """`fn` traced with `mesh` as the abstract mesh (`jax.sharding.get_abstract_mesh()`)."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  return traced


def compile_steps(parallelism: Parallelism, *, model: Transformer, mesh: jax.sharding.Mesh,
                  state_shardings, dropout_key: jax.Array, label_smoothing: float,
                  schedule) -> tuple[Callable, Callable]:
  """The jitted `(state, batch) -> (state, metrics)` and `(params, batch) -> sums` steps.

  Args:
    parallelism: "jit" (global steps, collectives by XLA) or "shard_map" (per-device steps,
      explicit collectives); both give the same update.
    state_shardings: `NamedSharding`s of the train state (`sharding.state_shardings`).
  """
  # The fused loss's chunk for the mesh's devices (which need not be the default backend's).
  chunk = losses.default_chunk_tokens(model.config.vocab_size, mesh.devices.flat[0].platform)
  train_fn = functools.partial(train_step, model=model, dropout_key=dropout_key,
                               label_smoothing=label_smoothing, schedule=schedule, mesh=mesh,
                               chunk_tokens=chunk)
  eval_fn = functools.partial(eval_step, model=model, label_smoothing=label_smoothing)
  if parallelism == "shard_map":
    specs = jax.tree.map(lambda s: s.spec, state_shardings.params)
    train_fn = functools.partial(shard_map_train_step, model=model, dropout_key=dropout_key,
                                 label_smoothing=label_smoothing, schedule=schedule, mesh=mesh,
                                 param_specs=specs, chunk_tokens=chunk)
    eval_fn = functools.partial(shard_map_eval_step, model=model,
                                label_smoothing=label_smoothing, mesh=mesh, param_specs=specs)
  else:
    # Global steps trace under their mesh, where per-device pieces (the TPU attention kernel,
    # which XLA cannot partition) find it to run under shard_map.
    train_fn, eval_fn = under_mesh(train_fn, mesh), under_mesh(eval_fn, mesh)
  replicated, batch_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  p_train_step = jax.jit(train_fn, in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, replicated), donate_argnums=0)
  p_eval_step = jax.jit(eval_fn, in_shardings=(state_shardings.params, batch_sharding),
                        out_shardings=replicated)
  return p_train_step, p_eval_step
