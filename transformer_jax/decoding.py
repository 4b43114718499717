"""Key/value-cached greedy and beam search, each compiled end to end as one `lax.while_loop`.

Shape legend as in `model.py`, plus N beam size (K is taken by head_dim).

The encoder runs once per source row; the decoder is fed one token per hypothesis per step and
keeps its keys and values in the "cache" collection (`Transformer.decode(..., decode=True)`).
Beam search never moves the cache: hypothesis n writes into slot n of its row, and a small
int32 table of which slot holds each hypothesis's earlier tokens is reordered instead (the
self-attention mask follows it). Both searches stop as soon as every row is done, and a row
that is done is frozen, so that a row decodes in a padded batch exactly as it would alone. The
compiled functions are module-level `jax.jit`s keyed on the config and the static lengths, so
repeated calls with the same shapes do not recompile.

Generated tokens exclude BOS, include EOS, and are `pad_id` after it. Nothing but EOS (before
`min_len`) is ever forbidden, and `pad_id` when it is the decoder start token
(`decoder_start_is_pad`, Marian's convention, whose generation configs forbid it too): the
searches follow the model's distribution over the whole vocabulary, as an argmax loop or an
exhaustive search over the full forward pass would.

Beam search follows one of two conventions. "gnmt" (the default; the paper's decoding as in
tensor2tensor and Flax's WMT example): scores divide by ((5 + length) / 6)^alpha, every alive
hypothesis may finish with EOS, a row stops when no alive hypothesis can beat its worst finished
one at any length up to its limit, and hypotheses cut at the limit are returned only when none
finished. "huggingface" reproduces transformers' `generate(num_beams=N, length_penalty=alpha,
early_stopping=False)`: scores divide by length^alpha, only the candidates among the N most
probable of a step can finish, a row stops once N hypotheses finished and the best alive one,
scored at its current length, cannot beat the worst of them, and at the length limit the N most
probable candidates all finish, with or without EOS. Lengths count generated tokens with EOS.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax import executable_cache
from transformer_jax.config import TransformerConfig, require_int
from transformer_jax.model import Transformer, init_cache

Array = jax.Array

EXTRA_LENGTH = 50  # Section 6.1: maximum output length = input length + 50.
CONVENTIONS = ("gnmt", "huggingface")
_NEG_INF = -jnp.inf


def length_penalty(length: Any, alpha: Any, convention: str = "gnmt") -> Any:
  """What beam search divides a hypothesis's sum of log-probabilities by.

  GNMT's ((5 + length) / 6)^alpha (Wu et al., 2016), or with `convention="huggingface"`
  length^alpha (transformers' `length_penalty`).
  """
  if convention == "huggingface":
    return length ** alpha
  return ((5.0 + length) / 6.0) ** alpha


# ----------------------------------------------------------------------------- public API


def greedy_search(model: Transformer, params: Any, src: Any, *, max_len: int | None = None,
                  min_len: int = 0, return_steps: bool = False):
  """Greedy (argmax) decoding of a batch of sources.

  Args:
    model: The `Transformer` (its config is what matters).
    params: Its parameters: the "params" collection, or `{"params": ...}`.
    src: Source ids `[B, S]`, padded with `pad_id`.
    max_len: Most tokens to generate, EOS included. Default: each row's own source length
      (non-pad tokens) + 50, with `T = S + 50`.
    min_len: No EOS among the first `min_len` generated tokens.
    return_steps: Also return how many decoder steps the loop ran (for tests and benchmarks).

  Returns:
    int32 tokens `[B, T]` (T = max_len), `pad_id` after EOS; with `return_steps`, a pair
    (tokens, steps).
  """
  config, params, src, limit_B, length = _prepare(model, params, src, max_len, min_len)
  tokens_BxT, steps = executable_cache.call(
      _greedy, (params, src, limit_B, np.int32(min_len)), dict(config=config, max_len=length))
  return (tokens_BxT, steps) if return_steps else tokens_BxT


def beam_search(model: Transformer, params: Any, src: Any, *, beam_size: int = 4,
                alpha: float = 0.6, max_len: int | None = None, min_len: int = 0,
                convention: str = "gnmt", return_steps: bool = False):
  """Beam search with GNMT's length penalty, as in section 6.1 of the paper (beam 4, alpha 0.6).

  This describes the default `convention="gnmt"`; "huggingface" follows transformers' rules
  (see the module docstring) and takes its `length_penalty` as `alpha`.

  Every step, each of the `beam_size` alive hypotheses is extended by EOS (a finished candidate,
  scored `sum log p / length_penalty(length, alpha)` with EOS counted in the length) and by every
  other token (alive candidates, ranked by `sum log p`). The best `beam_size` of each are kept. A
  row is done when no alive hypothesis can still beat its worst finished one, or at `max_len`.
  Hypotheses that reach `max_len` without EOS are unfinished; they are returned only for rows
  without any finished hypothesis (scored with length `max_len`).

  Args:
    model: The `Transformer` (its config is what matters).
    params: Its parameters: the "params" collection, or `{"params": ...}`.
    src: Source ids `[B, S]`, padded with `pad_id`.
    beam_size: Number of hypotheses kept per row.
    alpha: Length penalty exponent (0: plain sum of log-probabilities).
    max_len: Most tokens to generate, EOS included. Default: each row's own source length
      (non-pad tokens) + 50, with `T = S + 50`.
    min_len: No EOS among the first `min_len` generated tokens.
    convention: "gnmt" or "huggingface" (see the module docstring).
    return_steps: Also return how many decoder steps the loop ran (for tests and benchmarks).

  Returns:
    (tokens int32 `[B, N, T]`, scores float32 `[B, N]`), best first; tokens are `pad_id` after
    EOS. Slots beyond the number of possible hypotheses score -inf and hold only padding. With
    `return_steps`, a triple (tokens, scores, steps).
  """
  beam_size = require_int("beam_size", beam_size, minimum=1)
  if not np.isfinite(alpha):
    raise ValueError(f"alpha (the length penalty exponent) must be finite, got {alpha!r}.")
  if convention not in CONVENTIONS:
    raise ValueError(f"convention={convention!r} is not one of {CONVENTIONS}.")
  config, params, src, limit_B, length = _prepare(model, params, src, max_len, min_len)
  tokens_BxNxT, scores_BxN, steps = executable_cache.call(
      _beam, (params, src, limit_B, np.int32(min_len), np.float32(alpha)),
      dict(config=config, beam_size=beam_size, max_len=length, convention=convention))
  if return_steps:
    return tokens_BxNxT, scores_BxN, steps
  return tokens_BxNxT, scores_BxN


def ids_until_eos(tokens: Any, *, eos_id: int, pad_id: int = 0) -> list:
  """Token arrays (`[T]`, `[B, T]`, `[B, N, T]`, ...) -> nested lists of ids before the first EOS.

  EOS and everything after it are dropped, and so is `pad_id` anywhere (an untrained model may
  generate it).
  """
  tokens = np.asarray(tokens)
  if tokens.ndim == 0:
    raise ValueError("ids_until_eos takes an array of token ids with at least one axis, "
                     f"got a scalar {tokens!r}.")
  if tokens.ndim > 1:
    return [ids_until_eos(row, eos_id=eos_id, pad_id=pad_id) for row in tokens]
  ids = []
  for token in tokens.tolist():
    if token == eos_id:
      break
    if token != pad_id:
      ids.append(token)
  return ids


# ----------------------------------------------------------------------------- arguments


def _prepare(model, params, src, max_len, min_len):
  """Checks the arguments; returns (config, params, src, per-row limits, buffer length T)."""
  config = getattr(model, "config", None)
  if not isinstance(config, TransformerConfig):
    raise ValueError(f"model must be a transformer_jax.Transformer, got {type(model).__name__}.")
  if isinstance(params, Mapping) and "params" in params:
    params = params["params"]  # {"params": ...} as returned by `init`.
  src = np.asarray(src) if not isinstance(src, jax.Array) else src
  if src.ndim != 2 or not jnp.issubdtype(src.dtype, jnp.integer):
    raise ValueError(f"src must be a [batch, length] integer array of token ids, got shape "
                     f"{src.shape} and dtype {src.dtype}; for one sentence use src[None].")
  if src.shape[0] == 0 or src.shape[1] == 0:
    raise ValueError(f"src is empty (shape {src.shape}); give at least one row and one column.")
  xp = jnp if isinstance(src, jax.Array) else np  # Host input stays on the host: no dispatch.
  src = xp.asarray(src, xp.int32)
  if max_len is None:
    length = src.shape[1] + EXTRA_LENGTH
    limit_B = xp.sum(src != config.pad_id, axis=1, dtype=xp.int32) + EXTRA_LENGTH
  else:
    length = require_int("max_len", max_len, minimum=1)
    limit_B = xp.full((src.shape[0],), length, xp.int32)
  min_len = require_int("min_len", min_len, minimum=0)
  if min_len > length:
    raise ValueError(f"min_len={min_len} exceeds max_len={length}: nothing could be generated.")
  if config.positional == "learned" and length > config.max_len:
    raise ValueError(f"Decoding up to {length} tokens needs positions beyond the learned table "
                     f"(TransformerConfig.max_len={config.max_len}); pass a smaller max_len.")
  return config, params, src, limit_B, length


# ----------------------------------------------------------------------------- shared pieces


def _decode_step(model, params, cache, encoded_BxSxD, src_BxS, tokens_BxN, history_BxNxL=None):
  """One cached decoder step for N hypotheses per row: float32 logits `[B, N, V]`, new cache."""
  logits_BxNxV, updates = model.apply({"params": params, "cache": cache}, encoded_BxSxD, src_BxS,
                                      tokens_BxN, decode=True, beam_history=history_BxNxL,
                                      method=Transformer.decode, mutable=["cache"])
  return logits_BxNxV, updates["cache"]


def _mask_eos(scores_xV: Array, step: Array, min_len: Array, eos_id: int) -> Array:
  """-inf for EOS while fewer than `min_len` tokens precede it."""
  is_eos = jnp.arange(scores_xV.shape[-1]) == eos_id
  return jnp.where(is_eos & (step < min_len), _NEG_INF, scores_xV)


def _mask_pad(scores_xV: Array, config: TransformerConfig) -> Array:
  """-inf for pad_id when it is the decoder start token (never generated then)."""
  if not config.decoder_start_is_pad:
    return scores_xV
  return jnp.where(jnp.arange(scores_xV.shape[-1]) == config.pad_id, _NEG_INF, scores_xV)


# ----------------------------------------------------------------------------- greedy


@functools.partial(jax.jit, static_argnames=("config", "max_len"))
def _greedy(params, src_BxS, limit_B, min_len, *, config: TransformerConfig, max_len: int):
  model = Transformer(config)
  batch = src_BxS.shape[0]
  encoded_BxSxD = model.apply({"params": params}, src_BxS, method=Transformer.encode)
  cache = init_cache(model, params, encoded_BxSxD, src_BxS, max_len)

  def done(step, finished_B):
    return finished_B | (step >= limit_B)

  def cond(state):
    step, _, _, finished_B, _ = state
    return (step < max_len) & ~jnp.all(done(step, finished_B))

  def body(state):
    step, tokens_BxT, last_B, finished_B, cache = state
    logits_Bx1xV, cache = _decode_step(model, params, cache, encoded_BxSxD, src_BxS,
                                       last_B[:, None])
    logits_BxV = _mask_pad(logits_Bx1xV[:, 0], config)
    next_B = jnp.argmax(_mask_eos(logits_BxV, step, min_len, config.eos_id), axis=-1)
    next_B = next_B.astype(jnp.int32)
    active_B = ~done(step, finished_B)
    written_B = jnp.where(active_B, next_B, config.pad_id)
    tokens_BxT = jax.lax.dynamic_update_slice(tokens_BxT, written_B[:, None], (0, step))
    finished_B = finished_B | (active_B & (next_B == config.eos_id))
    return step + 1, tokens_BxT, next_B, finished_B, cache

  state = (jnp.array(0, jnp.int32), jnp.full((batch, max_len), config.pad_id, jnp.int32),
           jnp.full((batch,), config.bos_id, jnp.int32), jnp.zeros((batch,), bool), cache)
  steps, tokens_BxT, _, _, _ = jax.lax.while_loop(cond, body, state)
  return tokens_BxT, steps


# ----------------------------------------------------------------------------- beam search


class _BeamState(NamedTuple):
  step: Array                # Tokens generated so far (scalar).
  alive_seqs_BxNxT: Array    # Unfinished hypotheses, best first.
  alive_logprobs_BxN: Array  # Their summed log-probabilities (-inf: no hypothesis).
  finished_seqs_BxNxT: Array
  finished_scores_BxN: Array  # Length-penalized scores, best first (-inf: empty slot).
  history_BxNxT: Array       # The cache slot holding each alive hypothesis's token at each step.
  done_B: Array              # Rows whose hypotheses are final (frozen from then on).
  cache: Any                 # Decoder cache: N slots per row, written in place, never reordered.


def _gather_beams(x_BxNx_: Array, origin_BxN: Array) -> Array:
  """x[b, origin[b, n], ...] for every b and n."""
  index = origin_BxN.reshape(origin_BxN.shape + (1,) * (x_BxNx_.ndim - 2))
  return jnp.take_along_axis(x_BxNx_, index, axis=1)


@functools.partial(jax.jit, static_argnames=("config", "beam_size", "max_len", "convention"))
def _beam(params, src_BxS, limit_B, min_len, alpha, *, config: TransformerConfig, beam_size: int,
          max_len: int, convention: str = "gnmt"):
  model = Transformer(config)
  batch, beams = src_BxS.shape[0], beam_size
  eos = config.eos_id
  # The encoder runs, and the encoder-decoder keys/values are projected, once per source row.
  encoded_BxSxD = model.apply({"params": params}, src_BxS, method=Transformer.encode)
  penalty = lambda length: length_penalty(jnp.asarray(length, jnp.float32), alpha, convention)

  def cond(state: _BeamState) -> Array:
    return (state.step < max_len) & ~jnp.all(state.done_B)

  def body(state: _BeamState) -> _BeamState:
    step = state.step
    last_BxN = jax.lax.dynamic_index_in_dim(state.alive_seqs_BxNxT, step - 1, axis=2,
                                            keepdims=False)
    last_BxN = jnp.where(step == 0, config.bos_id, last_BxN)
    # Hypothesis n writes this step's keys/values into slot n; earlier ones stay where they are.
    slots_BxN = jnp.broadcast_to(jnp.arange(beams, dtype=jnp.int32), (batch, beams))
    history_BxNxT = _set_step(state.history_BxNxT, step, slots_BxN)
    logits_BxNxV, cache = _decode_step(model, params, state.cache, encoded_BxSxD, src_BxS,
                                       last_BxN, history_BxNxT)
    # log_softmax without materializing it: log p = (logit - max) - log(sum exp(logit - max)).
    max_BxNx1 = jnp.max(logits_BxNxV, axis=-1, keepdims=True)
    log_sum_BxNx1 = jnp.log(jnp.sum(jnp.exp(logits_BxNxV - max_BxNx1), axis=-1, keepdims=True))
    logprob = lambda logits_BxNx_: (logits_BxNx_ - max_BxNx1) - log_sum_BxNx1

    eos_logprob_BxN = logprob(logits_BxNxV[..., eos:eos + 1])[..., 0]
    eos_logprob_BxN = jnp.where(step < min_len, _NEG_INF, eos_logprob_BxN)
    # A forbidden pad_id keeps the others' log-probabilities (normalized with it), as there.
    alive_logprobs_BxN, alive_seqs_BxNxT, history_BxNxT = _extend_alive(
        state, _mask_pad(logits_BxNxV, config), logprob, history_BxNxT, eos)
    if convention == "huggingface":
      finished_scores_BxN, finished_seqs_BxNxT = _finish_most_probable(
          state, eos_logprob_BxN, alive_logprobs_BxN, alive_seqs_BxNxT, penalty(step + 1),
          step + 1 >= limit_B, eos)
    else:
      finished_scores_BxN, finished_seqs_BxNxT = _finish_with_eos(
          state, eos_logprob_BxN, penalty(step + 1), eos)

    # Rows already done keep their hypotheses, so a row ends as it would alone.
    keep = lambda old, new: jnp.where(
        state.done_B.reshape((-1,) + (1,) * (new.ndim - 1)), old, new)
    new_state = _BeamState(
        step=step + 1,
        alive_seqs_BxNxT=keep(state.alive_seqs_BxNxT, alive_seqs_BxNxT),
        alive_logprobs_BxN=keep(state.alive_logprobs_BxN, alive_logprobs_BxN),
        finished_seqs_BxNxT=keep(state.finished_seqs_BxNxT, finished_seqs_BxNxT),
        finished_scores_BxN=keep(state.finished_scores_BxN, finished_scores_BxN),
        history_BxNxT=history_BxNxT,
        done_B=state.done_B,
        cache=cache)
    return new_state._replace(done_B=_row_done(new_state, limit_B, penalty, convention))

  cache = init_cache(model, params, encoded_BxSxD, src_BxS, max_len, beam_size=beams)
  state = jax.lax.while_loop(cond, body, _initial_state(batch, beams, max_len, config.pad_id,
                                                        cache))
  seqs_BxNxT, scores_BxN = _best_hypotheses(state, penalty(limit_B), config.pad_id)
  return seqs_BxNxT, scores_BxN, state.step


def _row_done(state: _BeamState, limit_B: Array, penalty, convention: str) -> Array:
  """Whether each row is done once `state.step` tokens are generated (and stays done)."""
  if convention == "huggingface":  # transformers' heuristic: the best alive one, as it is.
    best_penalty = penalty(state.step)
  else:
    # Log-probabilities only fall as hypotheses grow, so an alive hypothesis finishing at some
    # length in (step, limit] scores at most best_logprob / the largest penalty there.
    best_penalty = jnp.maximum(penalty(state.step + 1), penalty(limit_B))
  bound_B = state.alive_logprobs_BxN[:, 0] / best_penalty
  cannot_improve_B = bound_B <= state.finished_scores_BxN[:, -1]
  return state.done_B | (state.step >= limit_B) | cannot_improve_B


def _initial_state(batch: int, beams: int, max_len: int, pad_id: int, cache) -> _BeamState:
  """One live hypothesis per row (BOS, log-probability 0), nothing finished yet."""
  empty_BxNxT = jnp.full((batch, beams, max_len), pad_id, jnp.int32)
  no_scores_BxN = jnp.full((batch, beams), _NEG_INF, jnp.float32)
  return _BeamState(
      step=jnp.array(0, jnp.int32),
      alive_seqs_BxNxT=empty_BxNxT,
      alive_logprobs_BxN=no_scores_BxN.at[:, 0].set(0.0),
      finished_seqs_BxNxT=empty_BxNxT,
      finished_scores_BxN=no_scores_BxN,
      history_BxNxT=jnp.zeros((batch, beams, max_len), jnp.int32),
      done_B=jnp.zeros((batch,), bool),
      cache=cache)


def _best_hypotheses(state: _BeamState, limit_penalty_B: Array, pad_id: int):
  """Finished hypotheses whenever a row has one; otherwise its alive ones, scored at the limit."""
  has_finished_B = state.finished_scores_BxN[:, 0] > _NEG_INF
  alive_scores_BxN = state.alive_logprobs_BxN / limit_penalty_B[:, None]
  scores_BxN = jnp.where(has_finished_B[:, None], state.finished_scores_BxN, alive_scores_BxN)
  seqs_BxNxT = jnp.where(has_finished_B[:, None, None], state.finished_seqs_BxNxT,
                         state.alive_seqs_BxNxT)
  seqs_BxNxT = jnp.where((scores_BxN > _NEG_INF)[..., None], seqs_BxNxT, pad_id)
  return seqs_BxNxT, scores_BxN


def _finish_with_eos(state: _BeamState, eos_logprob_BxN: Array, penalty: Array, eos: int):
  """Finished candidates: every alive hypothesis extended by EOS (scored with the length
  penalty), merged with the finished ones; the best N (scores `[B, N]`, seqs `[B, N, T]`)."""
  new_scores_BxN = (state.alive_logprobs_BxN + eos_logprob_BxN) / penalty
  new_seqs_BxNxT = _set_step(state.alive_seqs_BxNxT, state.step,
                             jnp.full_like(new_scores_BxN, eos, jnp.int32))
  return _merge_finished(state, new_scores_BxN, new_seqs_BxNxT)


def _finish_most_probable(state: _BeamState, eos_logprob_BxN: Array, alive_logprobs_BxN: Array,
                          alive_seqs_BxNxT: Array, penalty: Array, at_limit_B: Array, eos: int):
  """transformers' finished candidates: of this step's candidates (every alive hypothesis
  extended by any token), the N with the highest sum log p may finish, those that end with EOS
  and, at the row's length limit, all N; merged with the finished ones, the best N.

  `alive_logprobs_BxN` / `alive_seqs_BxNxT` are the best N candidates without EOS: every other
  one has N better candidates, so the rank of a candidate among all is its rank among these
  and the N EOS candidates.
  """
  beams = alive_logprobs_BxN.shape[1]
  eos_logprobs_BxN = state.alive_logprobs_BxN + eos_logprob_BxN
  eos_seqs_BxNxT = _set_step(state.alive_seqs_BxNxT, state.step,
                             jnp.full_like(alive_seqs_BxNxT[..., 0], eos))
  logprobs_Bx2N = jnp.concatenate([eos_logprobs_BxN, alive_logprobs_BxN], axis=1)
  seqs_Bx2NxT = jnp.concatenate([eos_seqs_BxNxT, alive_seqs_BxNxT], axis=1)
  rank_Bx2N = jnp.sum(logprobs_Bx2N[:, None, :] > logprobs_Bx2N[:, :, None], axis=-1)
  may_finish_Bx2N = jnp.concatenate(
      [jnp.ones_like(eos_logprobs_BxN, bool),
       jnp.broadcast_to(at_limit_B[:, None], alive_logprobs_BxN.shape)], axis=1)
  finishes_Bx2N = may_finish_Bx2N & (rank_Bx2N < beams)
  scores_Bx2N = jnp.where(finishes_Bx2N, logprobs_Bx2N / penalty, _NEG_INF)
  return _merge_finished(state, scores_Bx2N, seqs_Bx2NxT)


def _merge_finished(state: _BeamState, new_scores_BxM: Array, new_seqs_BxMxT: Array):
  """The best N of the finished hypotheses and the new ones (scores `[B, N]`, seqs `[B, N, T]`)."""
  beams = state.finished_scores_BxN.shape[1]
  scores_BxK = jnp.concatenate([state.finished_scores_BxN, new_scores_BxM], axis=1)
  seqs_BxKxT = jnp.concatenate([state.finished_seqs_BxNxT, new_seqs_BxMxT], axis=1)
  finished_scores_BxN, best_BxN = jax.lax.top_k(scores_BxK, beams)  # Ties keep the older.
  return finished_scores_BxN, _gather_beams(seqs_BxKxT, best_BxN)


def _extend_alive(state: _BeamState, logits_BxNxV: Array, logprob, history_BxNxT: Array,
                  eos: int):
  """Alive candidates: every alive hypothesis extended by any token but EOS; the best N as
  (log-probabilities `[B, N]`, seqs `[B, N, T]`, slot history `[B, N, T]`).

  Log-probabilities rank like logits within a hypothesis, so its best N + 1 logits (EOS
  dropped) hold all of its candidates that can make the top N: two small top-k's instead of one
  over N * V.
  """
  batch, beams, vocab = logits_BxNxV.shape
  top_logits_BxNxM, top_tokens_BxNxM = jax.lax.top_k(logits_BxNxV, min(beams + 1, vocab))
  top_logprobs_BxNxM = jnp.where(top_tokens_BxNxM == eos, _NEG_INF, logprob(top_logits_BxNxM))
  candidates_BxNxM = state.alive_logprobs_BxN[..., None] + top_logprobs_BxNxM
  alive_logprobs_BxN, flat_BxN = jax.lax.top_k(candidates_BxNxM.reshape(batch, -1), beams)
  origin_BxN = flat_BxN // top_tokens_BxNxM.shape[-1]
  token_BxN = jnp.take_along_axis(top_tokens_BxNxM.reshape(batch, -1), flat_BxN, axis=1)
  alive_seqs_BxNxT = _set_step(_gather_beams(state.alive_seqs_BxNxT, origin_BxN), state.step,
                               token_BxN)
  # The small slot table follows the hypotheses instead of the cache.
  return alive_logprobs_BxN, alive_seqs_BxNxT, _gather_beams(history_BxNxT, origin_BxN)


def _set_step(seqs_BxNxT: Array, step: Array, tokens_BxN: Array) -> Array:
  """seqs[:, :, step] = tokens."""
  return jax.lax.dynamic_update_slice(seqs_BxNxT, tokens_BxN[..., None], (0, 0, step))
