"""Training-step throughput: our jit-compiled step vs PyTorch `nn.Transformer` eager, same shapes.

  python benchmarks/train_benchmark.py [--shapes base,small] [--rounds 5] [--per_round 3]
  python benchmarks/train_benchmark.py --quick

One optimizer step = forward, label-smoothed (0.1) cross-entropy, backward, Adam(0.9, 0.98, 1e-9),
dropout 0.1, on `batch` pairs of `length` source and `length` target tokens (no padding). Ours is
`transformer_jax.train_lib.train_step` under `jax.jit(..., donate_argnums=0)` on one CPU device;
the peer is `torch.nn.Transformer` (post-norm, no final norms, tied and sqrt(d)-scaled
embeddings, sinusoidal positions), so both have exactly the same parameters (checked).

Each side runs in its own worker process (peak RSS is per side; it includes the library import,
shown apart), and timed blocks alternate between them. Reported: target tokens/s (median step),
the ratio, peak RSS, our first-call compile time, and our achieved FLOP/s (analytic matmul FLOPs
of forward + backward) against a measured float32 matmul peak.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SHAPES = {
    "base": dict(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6,
                 num_decoder_layers=6),
    "small": dict(d_model=128, num_heads=4, d_ff=512, num_encoder_layers=4,
                  num_decoder_layers=4),
}
LABEL_SMOOTHING = 0.1
DROPOUT = 0.1


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  harness.add_timing_args(p, unit="step", warmup=2, per_round=3, quick_per_round=2,
                          threads_help="torch intra-op threads.")
  p.add_argument("--batch", type=int, default=32, help="Sentence pairs per step.")
  p.add_argument("--length", type=int, default=32, help="Source = target tokens per pair.")
  args = p.parse_args(argv)
  harness.finish_timing_args(p, args, SHAPES)
  return args


def model_flops_per_step(shape: dict, vocab: int, batch: int, length: int) -> float:
  """Matmul FLOPs of one training step (forward x 3: backward is about twice the forward)."""
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


# ----------------------------------------------------------------------------- ours


def ours_factory(shape, vocab, batch, length):
  import functools
  import time
  import jax
  import jax.numpy as jnp
  import optax
  from transformer_jax import Transformer, TransformerConfig, train_lib

  assert jax.device_count() == 1, jax.devices()
  rss_import = harness.peak_rss_mib()
  cfg = TransformerConfig(vocab_size=vocab, dropout_rate=DROPOUT, **shape)
  model = Transformer(cfg)
  tx = optax.adam(1e-4, b1=0.9, b2=0.98, eps=1e-9)
  # Initialized under jit as train.py does: eager init keeps ~200 MiB more resident at base.
  state = jax.jit(functools.partial(train_lib.init_state, model=model, tx=tx))(jax.random.key(0))
  params = sum(x.size for x in jax.tree.leaves(state.params))
  src, tgt_in, tgt_out = random_batch(vocab, batch, length)
  data = {"src": jnp.asarray(src), "tgt_in": jnp.asarray(tgt_in), "tgt_out": jnp.asarray(tgt_out)}
  step = jax.jit(functools.partial(train_lib.train_step, model=model,
                                   dropout_key=jax.random.key(1), label_smoothing=LABEL_SMOOTHING,
                                   schedule=optax.constant_schedule(1e-4)), donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, data).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  state, metrics = compiled(state, data)
  jax.block_until_ready((state, metrics))
  first_call_s = compile_s + time.perf_counter() - start
  holder = [state]

  def run():
    holder[0], m = compiled(holder[0], data)
    jax.block_until_ready((holder[0], m))

  return harness.Runner(info={"params": params, "compile_s": compile_s,
                              "first_call_s": first_call_s, "loss": float(metrics["train_loss"]),
                              "matmul_peak": matmul_peak(), "rss_import_mib": rss_import},
                       step=run)


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  """Best float32 FLOP/s of a jit-compiled n x n matmul on this device."""
  import time
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


def torch_factory(shape, vocab, batch, length, threads):
  import torch
  from torch import nn
  import torch.nn.functional as F

  torch.set_num_threads(threads)
  rss_import = harness.peak_rss_mib()
  torch.manual_seed(0)
  D, H, FF = shape["d_model"], shape["num_heads"], shape["d_ff"]

  class TorchTransformer(nn.Module):
    """The paper's model from `nn.Transformer`: post-norm, tied scaled embeddings."""

    def __init__(self):
      super().__init__()
      self.embedding = nn.Embedding(vocab, D)
      nn.init.normal_(self.embedding.weight, std=D**-0.5)
      layer_args = dict(d_model=D, nhead=H, dim_feedforward=FF, dropout=DROPOUT,
                        activation="relu", layer_norm_eps=1e-6, batch_first=True)
      encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_args),
                                      shape["num_encoder_layers"], norm=None,
                                      enable_nested_tensor=False)
      decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_args),
                                      shape["num_decoder_layers"], norm=None)
      self.transformer = nn.Transformer(d_model=D, nhead=H, dim_feedforward=FF, dropout=DROPOUT,
                                        batch_first=True, custom_encoder=encoder,
                                        custom_decoder=decoder)
      self.dropout = nn.Dropout(DROPOUT)
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

  model = TorchTransformer().train()
  params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
  src, tgt_in, tgt_out = (torch.from_numpy(a).long() for a in random_batch(vocab, batch, length))

  def run():
    opt.zero_grad(set_to_none=True)
    logits = model(src, tgt_in)
    loss = F.cross_entropy(logits.reshape(-1, vocab), tgt_out.reshape(-1), ignore_index=0,
                           label_smoothing=LABEL_SMOOTHING)
    loss.backward()
    opt.step()

  return harness.Runner(info={"params": params, "threads": torch.get_num_threads(),
                              "rss_import_mib": rss_import}, step=run)


# ----------------------------------------------------------------------------- main


def main(argv=None):
  args = parse_args(argv)
  harness.one_device_env()
  tokens = args.batch * args.length
  rows = []
  for name in args.shapes.split(","):
    shape = SHAPES[name]
    common = dict(shape=shape, vocab=args.vocab_size, batch=args.batch, length=args.length)
    print(f"[{name}] building both sides ...", flush=True)
    ours = harness.Side("ours", ours_factory, **common)
    peer = harness.Side("torch", torch_factory, threads=args.threads, **common)
    try:
      if ours.info["params"] != peer.info["params"]:
        print(f"WARNING: parameter counts differ: ours {ours.info['params']:,}, torch "
              f"{peer.info['params']:,}", flush=True)
      print(f"[{name}] params ours {ours.info['params']:,} torch {peer.info['params']:,}; "
            f"our compile {ours.info['compile_s']:.1f} s; timing ...", flush=True)
      harness.interleave([ours, peer], warmup=args.warmup, rounds=args.rounds,
                         per_round=args.per_round)
    finally:
      ours.close()
      peer.close()
    flops = model_flops_per_step(shape, args.vocab_size, args.batch, args.length)
    achieved = flops / ours.median
    rows.append([
        name, f"{ours.info['params']:,} / {peer.info['params']:,}",
        f"{tokens / ours.median:,.0f}", f"{tokens / peer.median:,.0f}",
        f"{peer.median / ours.median:.2f}x",
        f"{ours.rss_mib:,.0f} ({ours.info['rss_import_mib']:,.0f})",
        f"{peer.rss_mib:,.0f} ({peer.info['rss_import_mib']:,.0f})",
        f"{ours.info['compile_s']:.1f} / {ours.info['first_call_s']:.1f}",
        f"{achieved / 1e9:,.1f} / {ours.info['matmul_peak'] / 1e9:,.1f} "
        f"({achieved / ours.info['matmul_peak']:.0%})",
        f"{len(ours.times)}"])
  print()
  print(f"Training step, {args.batch} pairs x {args.length} tokens, vocab {args.vocab_size}, "
        f"dropout {DROPOUT}, label smoothing {LABEL_SMOOTHING}, Adam; {os.cpu_count()} CPU cores; "
        "medians of interleaved steps")
  print(harness.markdown_table(
      ["shape", "params ours / torch", "ours tok/s", "torch tok/s", "ours / torch",
       "ours peak RSS MiB (import)", "torch peak RSS MiB (import)",
       "our compile / first call s", "our GFLOP/s / matmul peak (MFU)", "steps/side"], rows))


if __name__ == "__main__":
  main()
