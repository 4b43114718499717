"""Training-step throughput: our jit-compiled step vs PyTorch `nn.Transformer`, same shapes.

  python benchmarks/train_benchmark.py [--shapes recipe,base] [--rounds 5] [--per_round 3]
      [--sides ours,ours-2dev,torch,torch.compile]
  python benchmarks/train_benchmark.py --quick

Shapes. `recipe` is the Multi30k recipe as `train.py` runs it, read from `configs/multi30k.py`
(`get_config()`): its model (4+4 x 128, 4 heads, d_ff 512, dropout 0.1, no attention dropout),
vocabulary (`data.vocab_size`, 6,000), batch (`data.batch_size` rows x `data.seq_len` tokens,
64 x 64), label smoothing, and optimizer (`schedules.create_optimizer` on the config's `optim`
block: AdamW with weight decay 0.2, clipping at 1.0, cosine schedule). Its rows are packed like
`transformer_jax.data.pipeline`'s: several pairs per row with segment ids and positions that
restart per pair, 61 of every 64 target slots real (the pipeline packs Multi30k to ~96%),
padding at the row's end.
`base` (512, 6+6) and `small` (128, 4+4) keep the earlier settings: `--batch` 32 rows of
`--length` 32 source and 32 target tokens, no padding, vocabulary `--vocab_size` 8,000, dropout
0.1, Adam(0.9, 0.98, 1e-9) at a constant rate; label smoothing 0.1 everywhere.

Sides. `ours`: `steps.compile_steps(...)` exactly as `train.py` builds it (the recipe's
`parallelism`, shard_map; jit for base and small), on one XLA CPU device. `ours-2dev`: the same
on 2 XLA CPU devices (the worker's environment sets
XLA_FLAGS=--xla_force_host_platform_device_count=2 before jax starts; the batch is split in
two, data parallel), as the recipe runs. `torch`: `torch.nn.Transformer` eager (post-norm, no final
norms, tied sqrt(d)-scaled embeddings, sinusoidal positions, the same dropout on the same places,
attention dropout as ours; the same parameter count, checked), with Adam or AdamW and clipping as
ours. `torch.compile`: the same module and loss under `torch.compile` (inductor; the optimizer
step stays eager); its compile time is the first step's; a failure is recorded and the others
go on. `nn.Transformer` has no segment masks: on packed shapes the torch sides get the same id
arrays (so the same target-token count and shapes) as plain rows with key-padding masks, each
row one long example.

Each side runs in its own worker process (peak RSS is per side; it includes the library import,
shown apart), and timed blocks alternate between them. Reported per side: target tokens/s (real,
non-padding target tokens / median step), the ratio to torch eager, achieved GFLOP/s
(`model_flops_per_step`, analytic) and its share of a float32 matmul peak measured in the same
run (`matmul_peak`, in the `ours` worker), compile time, peak RSS. Per shape, the matmul-only
bound (`matmul_ceiling.py`, in the `ours` worker): the one-device step's dots timed alone, each
at its best, summed; the share of the peak and the ratio to torch eager no step could beat.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {  # Model shapes (also read by decode_benchmark and accelerator_*).
    "base": dict(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6,
                 num_decoder_layers=6),
    "small": dict(d_model=128, num_heads=4, d_ff=512, num_encoder_layers=4,
                  num_decoder_layers=4),
}
WORKLOADS = ("recipe", "base", "small")
SIDES = ("ours", "ours-2dev", "torch", "torch.compile")
LABEL_SMOOTHING = 0.1
DROPOUT = 0.1
PACKED_FILL = 0.96  # Real tokens per slot of the recipe's packed rows (data_benchmark.py).
TARGETS = {"recipe": (0.55, 1.8), "base": (0.70, 1.25)}  # (share of matmul peak, x torch eager).


@dataclasses.dataclass(frozen=True)
class Workload:
  """One benchmarked training step: model, batch and optimizer (picklable, for the workers).

  Attributes:
    name: recipe, base or small.
    model: `TransformerConfig` fields except the vocabulary.
    vocab: Vocabulary size.
    rows: Rows per step; length: tokens per row, source and target alike.
    packed: Packed rows (segment ids, positions, padding at the end) or plain full rows.
    optim: `OptimConfig` fields (the optimizer `schedules.create_optimizer` builds).
    num_train_steps: The schedule's length.
    parallelism: "jit" or "shard_map", as `steps.compile_steps` takes it.
  """
  name: str
  model: dict
  vocab: int
  rows: int
  length: int
  packed: bool
  optim: dict
  num_train_steps: int = 100_000
  parallelism: str = "jit"

  @property
  def shape(self) -> dict:
    return {k: self.model[k] for k in SHAPES["base"]}


def recipe_config():
  """The validated `ExperimentConfig` of configs/multi30k.py."""
  from transformer_jax import experiment_config
  spec = importlib.util.spec_from_file_location("multi30k_config",
                                                os.path.join(ROOT, "configs", "multi30k.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return experiment_config.from_config_dict(module.get_config())


def make_workload(name: str, *, vocab: int = 8000, batch: int = 32, length: int = 32) -> Workload:
  """The `recipe` (from its config), or `base` / `small` at `batch` x `length`, `vocab`."""
  from transformer_jax.experiment_config import TOKENIZER_FIELDS
  if name == "recipe":
    c = recipe_config()
    model = {k: v for k, v in dataclasses.asdict(c.model).items() if k not in TOKENIZER_FIELDS}
    return Workload(name, model, c.data.vocab_size, c.data.batch_size, c.data.seq_len, True,
                    dataclasses.asdict(c.optim), c.num_train_steps, c.parallelism)
  optim = dict(schedule="constant", warmup_steps=0, peak_learning_rate=1e-4, b1=0.9, b2=0.98,
               eps=1e-9, label_smoothing=LABEL_SMOOTHING)
  return Workload(name, dict(SHAPES[name], dropout_rate=DROPOUT), vocab, batch, length, False,
                  optim)


def model_flops_per_step(shape: dict, vocab: int, batch: int, length: int) -> float:
  """Matmul FLOPs of one training step as executed (forward x 3: backward is twice the forward).

  Counts every row's `length` source and `length` target slots (packed rows: padding included,
  ~4% at the recipe), the Q/K/V/O projections, dense `length` x `length` attention scores and
  weighted values (causal and cross-segment entries included, as computed), the feed-forward
  layers, and the vocabulary projection of every target slot. Embedding lookups, softmax,
  LayerNorm, dropout and the optimizer are not matmuls and are not counted.
  """
  D, F, S, T = shape["d_model"], shape["d_ff"], length, length
  attn_proj = lambda q, kv: 2 * D * D * (2 * q + 2 * kv)  # Q, O on queries; K, V on keys.
  scores = lambda q, kv: 2 * 2 * q * kv * D  # QK^T and PV.
  ffn = lambda n: 2 * 2 * n * D * F
  enc = attn_proj(S, S) + scores(S, S) + ffn(S)
  dec = attn_proj(T, T) + scores(T, T) + attn_proj(T, S) + scores(T, S) + ffn(T)
  forward = batch * (shape["num_encoder_layers"] * enc + shape["num_decoder_layers"] * dec
                     + 2 * T * D * vocab)
  return 3.0 * forward


def random_batch(vocab: int, batch: int, length: int, seed: int = 0):
  """Source, shifted target and gold target ids, no padding (ids 0-2 are special)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  src = rng.integers(3, vocab, (batch, length), dtype=np.int32)
  tgt = rng.integers(3, vocab, (batch, length + 1), dtype=np.int32)
  tgt[:, 0] = 1  # BOS
  return src, tgt[:, :-1].copy(), tgt[:, 1:].copy()


def _segment_lengths(rng, length: int, fill: float) -> tuple[list[int], list[int]]:
  """Target and source lengths of one packed row's pairs: the targets fill `fill` of the row."""
  tgt, remaining = [], round(fill * length)
  while remaining > 0:
    n = int(rng.integers(6, 20))  # Multi30k pairs: ~14 tokens with EOS / BOS.
    n = remaining if remaining - n < 6 else n
    tgt.append(n)
    remaining -= n
  src = [max(2, n + int(rng.integers(-2, 3))) for n in tgt]
  while sum(src) > length:
    src[src.index(max(src))] -= 1
  return tgt, src


def packed_batch(vocab: int, rows: int, length: int, fill: float = PACKED_FILL, seed: int = 0):
  """A batch laid out as `data.pipeline` packs one: `[rows, length]` int32 arrays.

  Each row holds several pairs back to back (segment ids 1, 2, ..., positions restarting at 0,
  `tgt_in` = BOS + target, `tgt_out` = target + EOS per pair) and padding (0) at its end;
  `fill` of the target slots hold real tokens, about as many of the source slots.
  """
  import numpy as np
  rng = np.random.default_rng(seed)
  batch = {k: np.zeros((rows, length), np.int32) for k in
           ("src", "tgt_in", "tgt_out", "src_segments", "tgt_segments", "src_positions",
            "tgt_positions")}
  for r in range(rows):
    tgt_lens, src_lens = _segment_lengths(rng, length, fill)
    for side, lens in (("src", src_lens), ("tgt", tgt_lens)):
      at = 0
      for segment, n in enumerate(lens, 1):
        batch[f"{side}_segments"][r, at:at + n] = segment
        batch[f"{side}_positions"][r, at:at + n] = np.arange(n)
        ids = rng.integers(3, vocab, n + 1)
        if side == "src":
          batch["src"][r, at:at + n] = np.append(ids[:n - 1], 2)  # ... EOS
        else:
          batch["tgt_in"][r, at:at + n] = np.append(1, ids[:n - 1])  # BOS ...
          batch["tgt_out"][r, at:at + n] = np.append(ids[:n - 1], 2)  # ... EOS
        at += n
  return batch


def workload_batch(w: Workload) -> dict:
  """Our batch: packed rows for packed workloads, else full plain rows (numpy)."""
  if w.packed:
    return packed_batch(w.vocab, w.rows, w.length)
  src, tgt_in, tgt_out = random_batch(w.vocab, w.rows, w.length)
  return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}


def target_tokens(w: Workload) -> int:
  """Real (non-padding) target tokens per step: the tokens/s numerator, the same on every side."""
  return int((workload_batch(w)["tgt_out"] != 0).sum())


# ----------------------------------------------------------------------------- ours


@dataclasses.dataclass
class OursStep:
  """A compiled train step with its state and batch (`run()` does one donated step)."""
  compiled: object
  state: object
  batch: dict
  params: int
  compile_s: float

  def run(self):
    import jax
    self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return metrics


def build_ours(w: Workload, num_devices: int | None = None) -> OursStep:
  """Model, optimizer, state and compiled step as `train_lib.setup` builds them, data parallel
  over the first `num_devices` devices (None: all)."""
  import jax
  from transformer_jax import Transformer, TransformerConfig, schedules, sharding, steps
  from transformer_jax.experiment_config import OptimConfig
  model = Transformer(TransformerConfig(vocab_size=w.vocab, **w.model))
  optim = OptimConfig(**w.optim)
  tx, schedule = schedules.create_optimizer(optim, d_model=w.model["d_model"],
                                            num_train_steps=w.num_train_steps)
  mesh = sharding.create_mesh(jax.devices()[:num_devices] if num_devices else None)
  init_rng, dropout_key = jax.random.split(jax.random.key(0))
  init_fn = functools.partial(steps.init_state, model=model, tx=tx)
  shardings = sharding.state_shardings(jax.eval_shape(init_fn, init_rng), mesh)
  # Initialized under jit as train.py does: eager init keeps ~200 MiB more resident at base.
  state = jax.jit(init_fn, out_shardings=shardings)(init_rng)
  train_step, _ = steps.compile_steps(
      w.parallelism, model=model, mesh=mesh, state_shardings=shardings, dropout_key=dropout_key,
      label_smoothing=optim.label_smoothing, schedule=schedule)
  batch = sharding.global_batch(workload_batch(w), mesh)
  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  params = sum(x.size for x in jax.tree.leaves(state.params))
  return OursStep(compiled, state, batch, params, compile_s)


def ours_factory(w: Workload, measure_peak: bool = True):
  import jax
  rss_import = harness.peak_rss_mib()
  ours = build_ours(w)
  start = time.perf_counter()
  metrics = ours.run()
  first_call_s = ours.compile_s + time.perf_counter() - start
  info = {"params": ours.params, "compile_s": ours.compile_s, "first_call_s": first_call_s,
          "loss": float(metrics["train_loss"]), "devices": jax.device_count(),
          "rss_import_mib": rss_import}
  if measure_peak:
    import matmul_ceiling
    info["matmul_peak"] = matmul_peak()
    info["matmul_bound_s"] = matmul_ceiling.measure(ours.compiled.as_text()).seconds
  return harness.Runner(info=info, step=ours.run)


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  """Best float32 FLOP/s of a jit-compiled n x n matmul on this device."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n**3 / best


# ----------------------------------------------------------------------------- PyTorch


def torch_model(w: Workload):
  """`nn.Transformer` with our architecture and dropout placement, as a training-mode module."""
  import torch
  from torch import nn
  m = w.model
  for field, value in (("pre_norm", False), ("share_embeddings", True), ("activation", "relu"),
                       ("scale_embeddings", True), ("logits_bias", False),
                       ("positional", "sinusoidal"), ("sinusoid_layout", "interleaved"),
                       ("decoder_start_is_pad", False)):
    assert m.get(field, value) == value, f"the torch peer has no {field}={m[field]!r}"
  D, rate, length = m["d_model"], m.get("dropout_rate", DROPOUT), w.length

  class TorchTransformer(nn.Module):
    """The paper's model from `nn.Transformer`: post-norm, tied scaled embeddings."""

    def __init__(self):
      super().__init__()
      self.embedding = nn.Embedding(w.vocab, D)
      nn.init.normal_(self.embedding.weight, std=D**-0.5)
      layer_args = dict(d_model=D, nhead=m["num_heads"], dim_feedforward=m["d_ff"],
                        dropout=rate, activation="relu", layer_norm_eps=1e-6, batch_first=True)
      encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_args),
                                      m["num_encoder_layers"], norm=None,
                                      enable_nested_tensor=False)
      decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_args),
                                      m["num_decoder_layers"], norm=None)
      self.transformer = nn.Transformer(d_model=D, nhead=m["num_heads"], batch_first=True,
                                        custom_encoder=encoder, custom_decoder=decoder)
      for module in self.modules():  # `dropout` also drops attention weights: ours' rate.
        if isinstance(module, nn.MultiheadAttention):
          module.dropout = m.get("attention_dropout_rate", 0.0)
      self.dropout = nn.Dropout(rate)
      position = torch.arange(4 * length, dtype=torch.float32)[:, None]
      inv_freq = torch.pow(10000.0, -torch.arange(0, D, 2, dtype=torch.float32) / D)
      pe = torch.stack([torch.sin(position * inv_freq), torch.cos(position * inv_freq)], -1)
      self.register_buffer("pe", pe.reshape(4 * length, D), persistent=False)

    def embed(self, ids):
      return self.dropout(self.embedding(ids) * math.sqrt(D) + self.pe[:ids.shape[1]])

    def forward(self, src, tgt_in):
      causal = torch.triu(torch.ones(tgt_in.shape[1], tgt_in.shape[1], dtype=torch.bool), 1)
      y = self.transformer(self.embed(src), self.embed(tgt_in), tgt_mask=causal,
                           src_key_padding_mask=src == 0, tgt_key_padding_mask=tgt_in == 0,
                           memory_key_padding_mask=src == 0, tgt_is_causal=True)
      return y @ self.embedding.weight.T  # Tied output projection.

  return TorchTransformer().train()


def torch_factory(w: Workload, threads: int, compile: bool = False):
  import torch
  import torch.nn.functional as F
  torch.set_num_threads(threads)
  rss_import = harness.peak_rss_mib()
  torch.manual_seed(0)
  model = torch_model(w)
  params = sum(p.numel() for p in model.parameters())
  o = w.optim
  adam = dict(lr=1e-4, betas=(o["b1"], o["b2"]), eps=o["eps"])
  opt = (torch.optim.AdamW(model.parameters(), weight_decay=o["weight_decay"], **adam)
         if o.get("weight_decay", 0.0) > 0 else torch.optim.Adam(model.parameters(), **adam))
  batch = workload_batch(w)  # Packed: the same ids, as plain rows padded at the end.
  src, tgt_in, tgt_out = (torch.from_numpy(batch[k]).long() for k in ("src", "tgt_in", "tgt_out"))
  smoothing = o.get("label_smoothing", LABEL_SMOOTHING)

  def loss_fn(src, tgt_in, tgt_out):
    logits = model(src, tgt_in)
    return F.cross_entropy(logits.reshape(-1, w.vocab), tgt_out.reshape(-1), ignore_index=0,
                           label_smoothing=smoothing)

  loss_step = torch.compile(loss_fn) if compile else loss_fn

  def run():
    opt.zero_grad(set_to_none=True)
    loss_step(src, tgt_in, tgt_out).backward()
    if o.get("grad_clip_norm", 0.0) > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip_norm"])
    opt.step()

  start = time.perf_counter()
  run()  # torch.compile compiles here.
  info = {"params": params, "threads": torch.get_num_threads(), "rss_import_mib": rss_import,
          "first_call_s": time.perf_counter() - start}
  if compile:
    info["compile_s"] = info["first_call_s"]
  return harness.Runner(info=info, step=run)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  harness.add_timing_args(p, unit="step", warmup=2, per_round=3, quick_per_round=2,
                          threads_help="torch intra-op threads.",
                          shapes_help="Comma-separated: recipe, base, small.",
                          shapes_default="recipe,base")
  p.add_argument("--sides", default=",".join(SIDES), help="Comma-separated, among "
                 f"{', '.join(SIDES)} (ours always runs: it measures the matmul peak).")
  p.add_argument("--batch", type=int, default=32, help="base / small: sentence pairs per step.")
  p.add_argument("--length", type=int, default=32,
                 help="base / small: source = target tokens per pair.")
  args = p.parse_args(argv)
  harness.finish_timing_args(p, args, WORKLOADS)
  unknown = set(args.sides.split(",")) - set(SIDES)
  if unknown:
    p.error(f"--sides: unknown {sorted(unknown)}; choose among {', '.join(SIDES)}.")
  return args


def build_sides(w: Workload, wanted: list[str], threads: int) -> tuple[list, dict]:
  """The sides of one workload, in worker processes; a side that fails to build is recorded."""
  specs = {"ours": dict(factory=ours_factory, w=w),
           "ours-2dev": dict(factory=ours_factory, w=w, measure_peak=False,
                             env=harness.host_devices_env(2)),
           "torch": dict(factory=torch_factory, w=w, threads=threads),
           "torch.compile": dict(factory=torch_factory, w=w, threads=threads, compile=True)}
  sides, failed = [], {}
  for name in ["ours"] + [s for s in SIDES if s in wanted and s != "ours"]:
    try:
      sides.append(harness.Side(name, **specs[name]))
    except RuntimeError as e:
      if name == "ours":
        raise
      failed[name] = str(e)
    else:
      info = sides[-1].info
      first = info.get("compile_s", info["first_call_s"])
      print(f"[{w.name}] {name}: {info['params']:,} params, first call {first:.1f} s",
            flush=True)
  return sides, failed


def report_rows(w: Workload, sides, failed: dict) -> tuple[list[list], str]:
  """Table rows of one workload, and its summary line (ratio, share of peak, targets)."""
  tokens = target_tokens(w)
  flops = model_flops_per_step(w.shape, w.vocab, w.rows, w.length)
  peak = sides[0].info["matmul_peak"]
  by_name = {s.name: s for s in sides if s.times}
  eager = by_name.get("torch")
  rows = []
  for s in sides:
    t, info, compile_s = s.median, s.info, s.info.get("compile_s")
    timed = [f"{tokens / t:,.0f}", f"{t * 1e3:,.0f}",
             f"{eager.median / t:.2f}x" if eager else "-", f"{flops / t / 1e9:,.1f}",
             f"{flops / t / peak:.0%}"] if s.times else ["-"] * 5
    rows.append([w.name, s.name + (" (failed)" if s.error else ""), *timed,
                 f"{compile_s:.1f}" if compile_s is not None else "-",
                 f"{s.rss_mib:,.0f} ({info['rss_import_mib']:,.0f})", len(s.times)])
    if s.error:
      failed[s.name] = s.error
  built = {s.name for s in sides}
  rows += [[w.name, f"{name} (failed)", *["-"] * 7, 0] for name in failed if name not in built]
  ours = [by_name[n] for n in ("ours", "ours-2dev") if n in by_name]
  best = min(ours, key=lambda s: s.median) if ours else None
  summary = f"{w.name}: matmul peak {peak / 1e9:,.1f} GFLOP/s"
  if best is not None:
    summary += f"; ours-best ({best.name}) {flops / best.median / peak:.0%} of the peak"
    if eager is not None:
      summary += f", {eager.median / best.median:.2f}x torch eager"
    if w.name in TARGETS:
      share, ratio = TARGETS[w.name]
      met = flops / best.median / peak >= share and eager and eager.median / best.median >= ratio
      summary += f" (target >= {share:.0%} and >= {ratio}x: {'met' if met else 'not met'})"
  bound = sides[0].info.get("matmul_bound_s")
  if bound:  # matmul_ceiling.py: the step's dots alone, each at its best; nothing can beat it.
    summary += (f"\n  matmul-only bound (the step's dots alone, each at its best, "
                f"matmul_ceiling.py): {bound * 1e3:,.0f} ms = at most {flops / bound / peak:.0%} "
                "of the peak")
    if eager is not None:
      summary += f", at most {eager.median / bound:.2f}x torch eager"
    if w.name in TARGETS and (flops / bound / peak < TARGETS[w.name][0]
                              or (eager and eager.median / bound < TARGETS[w.name][1])):
      summary += " (a target is above this bound: out of reach with XLA's CPU matmuls)"
  return rows, summary


def main(argv=None):
  args = parse_args(argv)
  harness.one_device_env()
  wanted = args.sides.split(",")
  rows, summaries, params, failures = [], [], [], []
  for name in args.shapes.split(","):
    w = make_workload(name, vocab=args.vocab_size, batch=args.batch, length=args.length)
    print(f"[{name}] building the sides ...", flush=True)
    sides, failed = build_sides(w, wanted, args.threads)
    try:
      counts = {s.name: s.info["params"] for s in sides}
      if len(set(counts.values())) > 1:
        print(f"WARNING: parameter counts differ: {counts}", flush=True)
      harness.interleave(sides, warmup=args.warmup, rounds=args.rounds,
                         per_round=args.per_round)
    finally:
      for side in sides:
        side.close()
    more_rows, summary = report_rows(w, sides, failed)
    rows += more_rows
    summaries.append(summary)
    failures += [f"{name} {side}: {error}" for side, error in failed.items()]
    params.append(f"{name} {w.rows}x{w.length}{' packed' if w.packed else ''}, vocab "
                  f"{w.vocab:,}, {target_tokens(w):,} target tokens, {counts['ours']:,} params")
  print()
  print(f"Training step ({'; '.join(params)}); {os.cpu_count()} CPU cores; {args.malloc} malloc "
        "in every side; medians of interleaved steps; GFLOP/s = model_flops_per_step / median step")
  print(harness.markdown_table(
      ["shape", "side", "target tok/s", "ms / step", "vs torch eager", "GFLOP/s",
       "of matmul peak", "compile s", "peak RSS MiB (import)", "steps"], rows))
  print()
  for line in summaries + failures:
    print(line)


if __name__ == "__main__":
  main()
