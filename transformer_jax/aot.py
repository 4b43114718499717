"""The training step and the beam search compiled ahead of time for a TPU topology, from any host.

Before paying for a pod: `python train.py --config configs/wmt14_base.py --compile_for v5e-8`
compiles the real training step (and beam search) with the TPU compiler for compile-only
devices (`topology.py`) and reports, per chip, the HBM it needs against the chip's, the step
time the compiler estimates, tokens/s, MFU and the collectives per step.

The compiler's cost model (`cost_analysis()`) counts the body of a while loop once, and its
`optimal_seconds` comes back 1 s low for each `ConcatBitcast` custom call (base on v5e-8 at
effort 0: -404.8 s with 405 of them). Both are corrected:
  * the fused loss's chunk loop: one chunk is compiled alone, and its FLOPs and time are added
    once per chunk beyond the first;
  * scanned layer stacks: the time and FLOPs come from the same model with unrolled layers
    (the same arithmetic; the memory figures stay those of the program as configured);
  * beam search's decoding loop: one decoder step (the loop body's model call) is compiled
    alone and counted once per generated position beyond the first;
  * 1 s is added back per `ConcatBitcast`, `ZeroCrop` and `SliceId` custom call in the program.

The attention kernel (a Pallas call) is priced by the cost it declares, as a roofline: an
optimistic estimate. Its part of the step is reported (`TrainReport.kernel_seconds`), and beside
it a vector-unit bound (`kernel_vector_seconds`), with these assumptions: the vector unit issues
4 ops a cycle per TensorCore on (8, 128) float32 registers, the transcendental unit one register
a cycle, at the clock the chip's peak implies (`topology.Chip.clock_ghz`), all units
overlapping perfectly.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re
import time

import jax
import jax.numpy as jnp

from transformer_jax import attention_kernel, decoding, losses, schedules, sharding, steps
from transformer_jax import topology as topology_lib
from transformer_jax.config import TransformerConfig
from transformer_jax.experiment_config import ExperimentConfig
from transformer_jax.model import Transformer, init_cache

# The TPU compiler's default effort: -1 compiles base in ~50 s on 2 CPU cores instead of ~225 s
# at 0, with the same fit; its program is estimated ~20% faster (base, v5e-8: 0.143 s against
# 0.177 s at effort 0, before the loop corrections), so quote the effort with the figures.
DEFAULT_EFFORT = -1.0
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_OFFSET_CUSTOM_CALLS = ("ConcatBitcast", "ZeroCrop", "SliceId")  # Each: optimal_seconds 1 s low.
VALU_SLOTS, EUP_SLOTS, VREG_ELEMENTS = 4, 1, 8 * 128  # Per TensorCore and cycle (assumed).
BATCH_KEYS = ("src", "tgt_in", "tgt_out", "src_segments", "tgt_segments", "src_positions",
              "tgt_positions")


@dataclasses.dataclass
class Cost:
  """What the compiler says of one program (per device), corrected as the module says."""
  flops: float
  seconds: float
  hbm_bytes: int            # Arguments + temporaries + outputs not aliased to arguments.
  temp_bytes: int
  collectives: dict[str, int]
  compile_seconds: float
  offsets: dict[str, int] = dataclasses.field(default_factory=dict)  # 1 s added back for each.


@dataclasses.dataclass
class TrainReport:
  """The training step on a topology: fit, estimated time and MFU, per chip."""
  topology: str
  parallelism: str
  fsdp: bool
  remat: bool
  tokens_per_chip: int      # Source + target token slots per step.
  rows_per_device: int
  params_gib: float         # Per device: parameters, optimizer state, temporaries, total.
  optimizer_gib: float
  temp_gib: float
  total_gib: float
  capacity_gib: float
  step_seconds: float
  model_tflop_per_chip: float
  xla_tflop_per_chip: float
  mfu: float
  collectives: dict[str, int]
  compile_seconds: float
  kernel_seconds: float = 0.0         # The attention kernel's calls, as the compiler prices them.
  kernel_vector_seconds: float = 0.0  # The same calls bounded by the vector unit too.
  effort: float = DEFAULT_EFFORT
  offsets: dict[str, int] = dataclasses.field(default_factory=dict)  # Of the timed program.

  @property
  def kernel_share(self) -> float:
    return self.kernel_seconds / self.step_seconds

  @property
  def vector_bound_seconds(self) -> float:
    """The step with the kernel at its vector-unit bound instead of its roofline."""
    return self.step_seconds - self.kernel_seconds + self.kernel_vector_seconds

  @property
  def vector_bound_mfu(self) -> float:
    return self.mfu * self.step_seconds / self.vector_bound_seconds

  @property
  def fits(self) -> bool:
    return self.total_gib <= self.capacity_gib

  @property
  def tokens_per_second_per_chip(self) -> float:
    return self.tokens_per_chip / self.step_seconds


@dataclasses.dataclass(frozen=True)
class InputDemand:
  """What one host must feed a slice's estimated step: rows per step and slots per second."""
  topology: str
  hosts: int
  chips_per_host: int
  rows_per_host: int
  seq_len: int
  step_seconds: float

  @property
  def slots_per_second(self) -> float:
    """Source + target token slots per second per host (padding included)."""
    return self.rows_per_host * self.seq_len * 2 / self.step_seconds

  def describe(self) -> str:
    return (f"Input: each of the {self.hosts} host(s) of {self.topology} feeds its "
            f"{self.chips_per_host} chips {self.rows_per_host} rows x {self.seq_len} per step: "
            f"{self.slots_per_second:,.0f} token slots/s at the estimated "
            f"{self.step_seconds:.3f} s a step (python train.py ... --compile_for "
            f"{self.topology} --measure_input times this host's pipeline at that shape).")

  def verdict(self, timing: dict[str, float], workers: int) -> str:
    """One line: whether `timing` (`data.throughput.measure`) keeps up with the demand."""
    rate, need = timing["slots_per_s"], self.slots_per_second
    head = (f"This host's pipeline ({workers} workers, {self.rows_per_host} x {self.seq_len}): "
            f"{rate:,.0f} slots/s ({timing['tokens_per_s']:,.0f} real tokens/s, density "
            f"{timing['density']:.1%}) against {need:,.0f} needed: ")
    if rate >= need:
      return head + f"keeps up ({rate / need:.1f}x)."
    return head + (f"falls short ({rate / need:.2f}x): the chips would wait for input; raise "
                   "data.num_workers or use a host with more cores.")


def input_demand(report: TrainReport, seq_len: int) -> InputDemand:
  """`report`'s step as a host's input demand (rows of `seq_len` tokens)."""
  topo = topology_lib.parse(report.topology)
  rows = report.tokens_per_chip * topo.chips_per_host // (2 * seq_len)
  return InputDemand(report.topology, topo.hosts, topo.chips_per_host, rows, seq_len,
                     report.step_seconds)


@dataclasses.dataclass
class BeamReport:
  """Beam search on one chip: fit and estimated generated tokens/s."""
  topology: str
  batch: int
  beam_size: int
  source_length: int
  new_tokens: int
  total_gib: float
  capacity_gib: float
  seconds: float
  compile_seconds: float

  @property
  def tokens_per_second(self) -> float:
    return self.batch * self.new_tokens / self.seconds


def model_flops_per_step(config: TransformerConfig, rows: int, length: int) -> float:
  """Matmul FLOPs of one training step on `rows` rows of `length` source and target slots.

  Forward x 3 (the backward is twice the forward): Q/K/V/O projections, dense attention scores
  and weighted values, the feed-forward layers and the vocabulary projection. Not counted:
  embeddings, softmax, LayerNorm, dropout, the optimizer, remat recomputation.
  """
  d, f, s, t = config.d_model, config.d_ff, length, length
  attn_proj = lambda q, kv: 2 * d * d * (2 * q + 2 * kv)  # Q, O on queries; K, V on keys.
  scores = lambda q, kv: 2 * 2 * q * kv * d  # QK^T and PV.
  ffn = lambda n: 2 * 2 * n * d * f
  enc = attn_proj(s, s) + scores(s, s) + ffn(s)
  dec = attn_proj(t, t) + scores(t, t) + attn_proj(t, s) + scores(t, s) + ffn(t)
  forward = rows * (config.num_encoder_layers * enc + config.num_decoder_layers * dec
                    + 2 * t * d * config.vocab_size)
  return 3.0 * forward


# ----------------------------------------------------------------------------- programs


def _cost(compiled, compile_seconds: float) -> Cost:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  hlo = compiled.as_text()
  offsets = {t: len(re.findall(rf'custom_call_target="{t}"', hlo)) for t in _OFFSET_CUSTOM_CALLS}
  memory = compiled.memory_analysis()
  hbm = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
         + memory.output_size_in_bytes - memory.alias_size_in_bytes)
  return Cost(flops=float(analysis.get("flops", 0.0)),
              seconds=float(analysis.get("optimal_seconds", 0.0)) + sum(offsets.values()),
              hbm_bytes=int(hbm), temp_bytes=int(memory.temp_size_in_bytes),
              collectives=count_collectives(hlo), compile_seconds=compile_seconds,
              offsets={t: n for t, n in offsets.items() if n})


def count_collectives(hlo_text: str) -> dict[str, int]:
  """Collective operations in an HLO module's text (async pairs counted once)."""
  counts = collections.Counter()
  for name in COLLECTIVES:
    # The opcode follows the (possibly tuple, "/*index=5*/"-annotated) type after a space;
    # operands are "%name" and never match.
    counts[name] = len(re.findall(rf"\s{name}(?:-start)?\(", hlo_text))
  return dict(counts)


def _compile(jitted, *args, effort: float = DEFAULT_EFFORT, **static) -> Cost:
  start = time.perf_counter()
  options = {"exec_time_optimization_effort": effort}
  compiled = jitted.lower(*args, **static).compile(compiler_options=options)
  return _cost(compiled, time.perf_counter() - start)


def _model(config: ExperimentConfig, platform: str, **overrides) -> Transformer:
  model_config = config.model_config(vocab_size=config.data.vocab_size, pad_id=0, bos_id=1,
                                     eos_id=2)
  return Transformer(model_config.replace(**overrides).resolved(platform))


def _abstract(x, sharding_):
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_)


def _bytes_per_device(tree, shardings) -> int:
  sizes = jax.tree.map(lambda x, s: math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize,
                       tree, shardings)
  return int(sum(jax.tree.leaves(sizes)))


def _train_program(config: ExperimentConfig, mesh, model: Transformer, rows: int):
  """The jitted train step, its abstract (sharded) state and batch, and the state's bytes."""
  tx, schedule = schedules.create_optimizer(config.optim, d_model=model.config.d_model,
                                            num_train_steps=config.num_train_steps)
  init = functools.partial(steps.init_state, model=model, tx=tx)
  state = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.state_shardings(state, mesh, fsdp=config.fsdp)
  train_step, _ = steps.compile_steps(
      config.parallelism, model=model, mesh=mesh, state_shardings=shardings,
      dropout_key=jax.random.key(1), label_smoothing=config.optim.label_smoothing,
      schedule=schedule)
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((rows, config.data.seq_len), jnp.int32,
                                   sharding=batch_sharding) for k in BATCH_KEYS}
  sizes = (_bytes_per_device(state.params, shardings.params),
           _bytes_per_device(state.opt_state, shardings.opt_state))
  return train_step, jax.tree.map(_abstract, state, shardings), batch, sizes


def _loss_chunk_cost(model: Transformer, device, tokens_per_device: int,
                     effort: float) -> tuple[float, float]:
  """(FLOPs, seconds) the fused loss's chunk loop adds beyond its first chunk, per device."""
  cfg = model.config
  chunk = min(losses.default_chunk_tokens(cfg.vocab_size, device.platform), tokens_per_device)
  extra = math.ceil(tokens_per_device / chunk) - 1
  if extra == 0 or not cfg.share_embeddings:
    return 0.0, 0.0
  one = jax.sharding.SingleDeviceSharding(device)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=one)
  body = jax.jit(lambda h, k, b, t, w: losses._fused_forward(h, k, b, t, w, 0.1, chunk))
  cost = _compile(body, spec((chunk, cfg.d_model), cfg.compute_dtype),
                  spec((cfg.vocab_size, cfg.d_model), jnp.float32),
                  spec((cfg.vocab_size,), jnp.float32), spec((chunk,), jnp.int32),
                  spec((chunk,), jnp.float32), effort=effort)
  return extra * cost.flops, extra * cost.seconds


def _kernel_seconds(model: Transformer, chip: topology_lib.Chip, cores: float, device, rows: int,
                    length: int, effort: float) -> tuple[float, float]:
  """(roofline, vector-bound) seconds of a step's attention kernel calls on one device.

  Each of the encoder's self-attentions and the decoder's self- and cross-attentions is one
  forward and one backward call of `rows` x `length` (and a second forward under remat); each
  pass is compiled alone for its priced time. `cores`: TensorCores per device.
  """
  cfg = model.config
  if cfg.attention_impl != "pallas" or not attention_kernel.supports(length, length,
                                                                     cfg.d_model // cfg.num_heads):
    return 0.0, 0.0
  one = jax.sharding.SingleDeviceSharding(device)
  width = cfg.d_model
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=one)
  q = spec((rows, width, length), cfg.compute_dtype)
  ids = spec((rows, length), jnp.int32)
  statics = dict(causal=False, heads=cfg.num_heads)
  forward = _compile(jax.jit(attention_kernel._forward, static_argnames=tuple(statics)),
                     q, q, q, ids, ids, effort=effort, **statics)
  backward = _compile(jax.jit(attention_kernel._backward, static_argnames=tuple(statics)),
                      q, q, q, ids, ids, q, effort=effort, **statics)
  works = attention_kernel.fused_attention_work(rows, length, length, cfg.num_heads,
                                                width // cfg.num_heads, causal=False,
                                                dtype=cfg.compute_dtype)
  cycles = chip.clock_ghz * 1e9 * cores  # Per second, over the device's TensorCores.
  bound = lambda work, seconds: max(seconds, work.vector_ops / (VALU_SLOTS * VREG_ELEMENTS
                                                                * cycles),
                                    work.transcendentals / (EUP_SLOTS * VREG_ELEMENTS * cycles))
  calls = cfg.num_encoder_layers + 2 * cfg.num_decoder_layers
  forwards = calls * (2 if cfg.remat else 1)
  return (forwards * forward.seconds + calls * backward.seconds,
          forwards * bound(works[0], forward.seconds) + calls * bound(works[1], backward.seconds))


def compile_train(config: ExperimentConfig, topology: str, *, tokens_per_chip: int | None = None,
                  effort: float = DEFAULT_EFFORT) -> TrainReport:
  """Compiles `config`'s training step for `topology` ("v5e-8", ...) and reports on it.

  `tokens_per_chip` (source + target slots per step) defaults to the config's global batch
  spread over the chips; rows are `data.seq_len` long and split evenly over the devices.
  """
  topo = topology_lib.parse(topology)
  devices = topology_lib.devices(topo)
  per_chip = len(devices) // topo.chips
  tokens = tokens_per_chip or config.data.batch_size * config.data.seq_len * 2 // topo.chips
  rows = max(1, tokens // (2 * config.data.seq_len) // per_chip)  # Per device.
  mesh = sharding.create_mesh(devices)
  model = _model(config, "tpu")
  step, state, batch, (params_bytes, opt_bytes) = _train_program(config, mesh, model,
                                                                  rows * len(devices))
  real = _compile(step, state, batch, effort=effort)
  timed = real
  if model.config.scan_layers:  # The loop over layers would be counted once: unroll it.
    unrolled = _model(config, "tpu", scan_layers=False)
    timed = _compile(*_train_program(config, mesh, unrolled, rows * len(devices))[:3],
                     effort=effort)
  extra_flops, extra_seconds = _loss_chunk_cost(model, devices[0], rows * config.data.seq_len,
                                                effort)
  seconds = timed.seconds + extra_seconds
  kernel_seconds, kernel_vector_seconds = _kernel_seconds(
      model, topo.chip, topo.chip.cores / per_chip, devices[0], rows, config.data.seq_len, effort)
  model_flops = model_flops_per_step(model.config, rows * per_chip, config.data.seq_len)
  gib = 2.0**30
  return TrainReport(
      topology=topology, parallelism=config.parallelism, fsdp=config.fsdp,
      remat=model.config.remat, tokens_per_chip=rows * per_chip * 2 * config.data.seq_len,
      rows_per_device=rows, params_gib=params_bytes / gib, optimizer_gib=opt_bytes / gib,
      temp_gib=real.temp_bytes / gib, total_gib=real.hbm_bytes / gib,
      capacity_gib=topo.chip.hbm_gib / per_chip, step_seconds=seconds,
      model_tflop_per_chip=model_flops / 1e12,
      xla_tflop_per_chip=(timed.flops + extra_flops) * per_chip / 1e12,
      mfu=model_flops / seconds / (topo.chip.peak_tflops * 1e12),
      collectives=real.collectives, kernel_seconds=kernel_seconds,
      kernel_vector_seconds=kernel_vector_seconds, effort=effort, offsets=timed.offsets,
      compile_seconds=real.compile_seconds + (timed.compile_seconds if timed is not real else 0))


def largest_fitting_tokens(a: TrainReport, b: TrainReport) -> int:
  """Tokens per chip at which HBM runs out, on the line through two reports' (tokens, GiB)."""
  if a.tokens_per_chip == b.tokens_per_chip:
    raise ValueError("Two reports at different tokens per chip are needed.")
  slope = (b.total_gib - a.total_gib) / (b.tokens_per_chip - a.tokens_per_chip)
  if slope <= 0:
    return 0
  return int(a.tokens_per_chip + (a.capacity_gib - a.total_gib) / slope)


def compile_beam(config: ExperimentConfig, topology: str, *, batch: int = 64, beam_size: int = 4,
                 source_length: int = 32, effort: float = DEFAULT_EFFORT) -> BeamReport:
  """Compiles beam search (the paper's: up to source + 50 tokens) on one chip of `topology`."""
  topo = topology_lib.parse(topology)
  devices = topology_lib.devices(topo)
  one = jax.sharding.SingleDeviceSharding(devices[0])
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=one)
  model = _model(config, "tpu")
  cfg, new_tokens = model.config, source_length + decoding.EXTRA_LENGTH
  dummy = jnp.ones((1, 8), jnp.int32)
  params = jax.tree.map(lambda x: _abstract(x, one), jax.eval_shape(
      lambda: model.init(jax.random.key(0), dummy, dummy)["params"]))
  src = spec((batch, source_length), jnp.int32)
  whole = _compile(decoding._beam, params, src, spec((batch,), jnp.int32), spec((), jnp.int32),
                   spec((), jnp.float32), effort=effort, config=cfg, beam_size=beam_size,
                   max_len=new_tokens)
  encoded = spec((batch, source_length, cfg.d_model), cfg.compute_dtype)
  cache = jax.tree.map(lambda x: _abstract(x, one), jax.eval_shape(
      lambda p, e, s: init_cache(model, p, e, s, new_tokens, beam_size=beam_size),
      params, encoded, src))
  step = _compile(jax.jit(functools.partial(decoding._decode_step, model)), params, cache,
                  encoded, src, spec((batch, beam_size), jnp.int32),
                  spec((batch, beam_size, new_tokens), jnp.int32), effort=effort)
  return BeamReport(topology=topology, batch=batch, beam_size=beam_size,
                    source_length=source_length, new_tokens=new_tokens,
                    total_gib=whole.hbm_bytes / 2.0**30,
                    capacity_gib=topo.chip.hbm_gib * topo.chips / len(devices),
                    seconds=whole.seconds + (new_tokens - 1) * step.seconds,
                    compile_seconds=whole.compile_seconds + step.compile_seconds)


# ----------------------------------------------------------------------------- the report


def train_table(reports: list[TrainReport]) -> str:
  """A markdown table of training reports, one row each."""
  head = ("| topology | mode | fsdp | remat | tokens/chip | HBM GiB (params / opt / temp) | fits "
          "| step s | tokens/s/chip | MFU | kernel s (share) | VPU-bound step s (MFU) "
          "| collectives | compile s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  rows = []
  for r in reports:
    coll = ", ".join(f"{n} {k}" for k, n in r.collectives.items() if n) or "none"
    kernel = (f"{r.kernel_seconds:.4f} ({r.kernel_share:.0%}) | {r.vector_bound_seconds:.3f} "
              f"({r.vector_bound_mfu:.0%})" if r.kernel_seconds else "none | -")
    rows.append(
        f"| {r.topology} | {r.parallelism} | {'on' if r.fsdp else 'off'} | "
        f"{'on' if r.remat else 'off'} | {r.tokens_per_chip:,} | {r.total_gib:.1f} / "
        f"{r.capacity_gib:.0f} ({r.params_gib:.2f} / {r.optimizer_gib:.2f} / {r.temp_gib:.1f}) "
        f"| {'yes' if r.fits else 'NO'} | {r.step_seconds:.3f} | "
        f"{r.tokens_per_second_per_chip:,.0f} | {r.mfu:.0%} | {kernel} | {coll} | "
        f"{r.compile_seconds:.0f} |")
  return "\n".join([head] + rows)


def advice(report: TrainReport) -> str:
  """What to change when the step does not fit."""
  if report.fits:
    return f"Fits: {report.total_gib:.1f} of {report.capacity_gib:.0f} GiB per device."
  hints = []
  if not report.fsdp:
    hints.append("--config.fsdp=True (shard parameters and optimizer state)")
  if not report.remat:
    hints.append("--config.model.remat=True (recompute activations in the backward pass)")
  hints.append("a smaller --config.data.batch_size")
  return (f"Does NOT fit: {report.total_gib:.1f} GiB per device, {report.capacity_gib:.0f} "
          f"available. Try {'; or '.join(hints)}.")
