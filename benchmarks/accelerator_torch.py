"""The PyTorch peer of `benchmarks/accelerator.py`, run in its own process.

  python benchmarks/accelerator_torch.py SPEC.json OUT.json

The paper's model from `torch.nn.Transformer` (post-norm, tied and sqrt(d)-scaled embeddings,
sinusoidal positions, dropout, no final norms), the same parameters as ours; one training step
is forward and loss under `torch.autocast(bfloat16)` (float32 parameters), label-smoothed
cross-entropy in float32, backward, Adam(0.9, 0.98, 1e-9) (fused on CUDA). Attention goes
through `scaled_dot_product_attention`: the batches have no padding, so no key-padding mask is
passed and the decoder's causal mask becomes SDPA's `is_causal` (flash attention where it
applies). Eager mode, no `torch.compile`. For each shape, the ladder of rows is tried largest
first; the first that runs without running out of memory is timed (median of synchronized
steps). OUT.json is rewritten after each shape; it says `skipped` when torch or its device is
missing.
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import sys
import time


def _model(torch, shape: dict, vocab: int, max_len: int):
  from torch import nn

  D, H, F = shape["d_model"], shape["num_heads"], shape["d_ff"]
  drop = shape["dropout_rate"]

  class TorchTransformer(nn.Module):
    """Post-norm encoder-decoder with one embedding for source, target and output."""

    def __init__(self):
      super().__init__()
      self.embedding = nn.Embedding(vocab, D)
      nn.init.normal_(self.embedding.weight, std=D**-0.5)
      layer = dict(d_model=D, nhead=H, dim_feedforward=F, dropout=drop, activation="relu",
                   layer_norm_eps=1e-6, batch_first=True)
      encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer),
                                      shape["num_encoder_layers"], norm=None,
                                      enable_nested_tensor=False)
      decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer),
                                      shape["num_decoder_layers"], norm=None)
      self.transformer = nn.Transformer(d_model=D, nhead=H, batch_first=True,
                                        custom_encoder=encoder, custom_decoder=decoder)
      self.dropout = nn.Dropout(drop)
      position = torch.arange(max_len, dtype=torch.float32)[:, None]
      inv_freq = torch.pow(10000.0, -torch.arange(0, D, 2, dtype=torch.float32) / D)
      pe = torch.stack([torch.sin(position * inv_freq), torch.cos(position * inv_freq)], -1)
      self.register_buffer("pe", pe.reshape(max_len, D), persistent=False)

    def embed(self, ids):
      return self.dropout(self.embedding(ids) * math.sqrt(D) + self.pe[:ids.shape[1]])

    def forward(self, src, tgt_in):
      length = tgt_in.shape[1]
      causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=src.device), 1)
      y = self.transformer(self.embed(src), self.embed(tgt_in), tgt_mask=causal,
                           tgt_is_causal=True)
      return y @ self.embedding.weight.T

  return TorchTransformer()


def _trainer(torch, spec: dict, shape: dict, rows: int):
  """A fresh model, optimizer and batch; returns (step function, parameter count)."""
  import torch.nn.functional as F

  device, vocab, length = spec["device"], spec["vocab_size"], spec["seq_len"]
  torch.manual_seed(0)
  model = _model(torch, shape, vocab, length + 1).to(device).train()
  opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9,
                         **({"fused": True} if device == "cuda" else {}))
  gen = torch.Generator().manual_seed(0)
  src = torch.randint(3, vocab, (rows, length), generator=gen).to(device)
  tgt = torch.randint(3, vocab, (rows, length + 1), generator=gen)
  tgt[:, 0] = 1
  tgt_in, tgt_out = tgt[:, :-1].to(device), tgt[:, 1:].to(device)

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
      logits = model(src, tgt_in)
    loss = F.cross_entropy(logits.float().reshape(-1, vocab), tgt_out.reshape(-1),
                           label_smoothing=spec["label_smoothing"])
    loss.backward()
    opt.step()
    return loss

  return step, sum(p.numel() for p in model.parameters())


def _timed(torch, spec, step, n):
  times = []
  for _ in range(n):
    start = time.perf_counter()
    loss = step()
    if spec["device"] == "cuda":
      torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
  return times, float(loss.detach())


def _is_oom(error: BaseException) -> bool:
  return "out of memory" in str(error).lower() or type(error).__name__ == "OutOfMemoryError"


def measure(torch, spec: dict, name: str, deadline: float) -> dict:
  """The largest rung of the shape's ladder that fits, timed."""
  shape, attempts = spec["shapes"][name], []
  for rows in spec["ladders"][name]:
    if time.monotonic() > deadline:
      attempts.append({"rows": rows, "skipped": "time budget"})
      break
    step = None
    try:
      step, params = _trainer(torch, spec, shape, rows)
      _timed(torch, spec, step, 1 + spec["warmup_steps"])
      times, loss = _timed(torch, spec, step, spec["timed_steps"])
    except Exception as e:
      if not _is_oom(e):
        raise
      attempts.append({"rows": rows, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
    if attempts and attempts[-1]["rows"] == rows:  # Out of memory: free it all, go down.
      step = None
      gc.collect()
      if spec["device"] == "cuda":
        torch.cuda.empty_cache()
      continue
    t, tokens = statistics.median(times), rows * spec["seq_len"]
    return {"rows": rows, "seq_len": spec["seq_len"], "params": params, "step_s_median": t,
            "step_s": times, "tokens_per_s": 2 * tokens / t, "target_tokens_per_s": tokens / t,
            "loss": loss, "attempts": attempts}
  return {"error": f"no rung of {spec['ladders'][name]} ran: {attempts}", "attempts": attempts}


def main(spec_path: str, out_path: str) -> None:
  spec = json.load(open(spec_path))
  deadline = time.monotonic() + spec["deadline_s"]
  result: dict = {"shapes": {}}

  def write():
    with open(out_path, "w") as f:
      json.dump(result, f, indent=1)

  try:
    import torch
  except Exception as e:
    result["skipped"] = f"torch does not import: {type(e).__name__}: {e}"
    return write()
  result.update(torch=torch.__version__, device=spec["device"], autocast="bfloat16",
                attention="scaled_dot_product_attention", mode="eager")
  if spec["device"] == "cpu":
    torch.set_num_threads(1)  # The smoke run's tiny shapes: threads would only contend.
  if spec["device"] == "cuda":
    if not torch.cuda.is_available():
      result["skipped"] = f"torch {torch.__version__} sees no CUDA device"
      return write()
    result["device_name"] = torch.cuda.get_device_name(0)
  for name in spec["shapes"]:
    print(f"[torch] {name} ...", flush=True)
    try:
      result["shapes"][name] = measure(torch, spec, name, deadline)
    except Exception as e:
      result["shapes"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    write()
    print(f"[torch] {name}: {json.dumps(result['shapes'][name])[:200]}", flush=True)
  write()


if __name__ == "__main__":
  main(*sys.argv[1:3])
