"""The peers beside our model: PyTorch training, Hugging Face and CTranslate2 decoding.

Training: the paper's model from `torch.nn.Transformer` (post-norm, no final norms, tied and
sqrt(d)-scaled embeddings, sinusoidal positions, dropout where ours has it, attention dropout
at ours' rate; the same parameter count), label-smoothed cross-entropy, Adam (AdamW when the
optimizer has weight decay) and clipping as ours. One step builder serves both uses:

- `train_factory`, a harness side of train_benchmark.py: float32 on the CPU, eager or
  `torch.compile` (inductor; the optimizer step stays eager), key-padding masks (packed rows
  arrive as plain rows padded at the end: `nn.Transformer` has no segment masks).
- the accelerator check's child process, `python -m benchmarks.peers SPEC.json OUT.json`:
  forward and loss under `torch.autocast(bfloat16)` (float32 parameters), attention through
  `scaled_dot_product_attention` with no padding mask (the batches have none; the decoder's
  causal mask becomes SDPA's `is_causal`, flash attention where it applies), fused Adam on CUDA.
  For each shape the ladder of rows is tried largest first; the first that runs without running
  out of memory is timed (median of synchronized steps). OUT.json is rewritten after each shape;
  it says `skipped` when torch or its device is missing.

Decoding: `hf_factory` (a random `transformers.MarianMTModel` of our shape, `generate`) and
`ct2_factory` (the same model converted to CTranslate2 float32), sides of decode_benchmark.py.

torch, transformers and ctranslate2 are optional and imported where they are used: the tools
name these factories without them, a side whose library is missing is recorded as failed, and
no process of a peer imports jax or the package (this module needs numpy and the harness only).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import time
import types

import numpy as np

from benchmarks import batches, harness

BEAM = 4
# Architecture options ours has and the torch model does not: the values it is built with.
_TORCH_ARCHITECTURE = (("pre_norm", False), ("share_embeddings", True), ("activation", "relu"),
                       ("scale_embeddings", True), ("logits_bias", False),
                       ("positional", "sinusoidal"), ("sinusoid_layout", "interleaved"),
                       ("decoder_start_is_pad", False))


# ----------------------------------------------------------------------------- training


def torch_model(model: dict, vocab: int, max_len: int, *, padding_masks: bool):
  """`nn.Transformer` with our architecture and dropout placement, as a training-mode module.

  Args:
    model: `TransformerConfig` fields (at least the shape and `dropout_rate`).
    vocab: Vocabulary size.
    max_len: Longest sequence (the positional table).
    padding_masks: Mask padding (id 0) as keys; without, attention sees no mask but the causal
      one, which keeps SDPA's fused kernels (the batches must then have no padding).
  """
  import torch
  from torch import nn
  for field, value in _TORCH_ARCHITECTURE:
    assert model.get(field, value) == value, f"the torch peer has no {field}={model[field]!r}"
  D, rate = model["d_model"], model["dropout_rate"]

  class TorchTransformer(nn.Module):
    """The paper's model from `nn.Transformer`: post-norm, tied scaled embeddings."""

    def __init__(self):
      super().__init__()
      self.embedding = nn.Embedding(vocab, D)
      nn.init.normal_(self.embedding.weight, std=D**-0.5)
      layer = dict(d_model=D, nhead=model["num_heads"], dim_feedforward=model["d_ff"],
                   dropout=rate, activation="relu", layer_norm_eps=1e-6, batch_first=True)
      encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer),
                                      model["num_encoder_layers"], norm=None,
                                      enable_nested_tensor=False)
      decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer),
                                      model["num_decoder_layers"], norm=None)
      self.transformer = nn.Transformer(d_model=D, nhead=model["num_heads"], batch_first=True,
                                        custom_encoder=encoder, custom_decoder=decoder)
      for module in self.modules():  # `dropout` also drops attention weights: ours' rate.
        if isinstance(module, nn.MultiheadAttention):
          module.dropout = model.get("attention_dropout_rate", 0.0)
      self.dropout = nn.Dropout(rate)
      position = torch.arange(max_len, dtype=torch.float32)[:, None]
      inv_freq = torch.pow(10000.0, -torch.arange(0, D, 2, dtype=torch.float32) / D)
      pe = torch.stack([torch.sin(position * inv_freq), torch.cos(position * inv_freq)], -1)
      self.register_buffer("pe", pe.reshape(max_len, D), persistent=False)

    def embed(self, ids):
      return self.dropout(self.embedding(ids) * math.sqrt(D) + self.pe[:ids.shape[1]])

    def forward(self, src, tgt_in):
      length = tgt_in.shape[1]
      causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=src.device), 1)
      masks = (dict(src_key_padding_mask=src == 0, tgt_key_padding_mask=tgt_in == 0,
                    memory_key_padding_mask=src == 0) if padding_masks else {})
      y = self.transformer(self.embed(src), self.embed(tgt_in), tgt_mask=causal,
                           tgt_is_causal=True, **masks)
      return y @ self.embedding.weight.T  # Tied output projection.

  return TorchTransformer().train()


def train_step(model: dict, vocab: int, batch: dict[str, np.ndarray], optim: dict, *,
               device: str = "cpu", bf16: bool = False, padding_masks: bool = True,
               compile: bool = False):
  """A fresh model and optimizer, and `step()` training it on `batch`; returns (step, params).

  Args:
    model: `TransformerConfig` fields (the shape, dropout rates).
    vocab: Vocabulary size.
    batch: `src`, `tgt_in`, `tgt_out` int arrays `[rows, length]` (0 is padding).
    optim: `OptimConfig` fields: b1, b2, eps, weight_decay, grad_clip_norm, label_smoothing.
    device: "cpu" or "cuda".
    bf16: Forward and loss under `torch.autocast(bfloat16)` (float32 parameters).
    padding_masks: Pass key-padding masks (see `torch_model`).
    compile: Run the model and loss under `torch.compile`.
  """
  import torch
  import torch.nn.functional as F
  torch.manual_seed(0)
  net = torch_model(model, vocab, batch["src"].shape[1] + 1, padding_masks=padding_masks)
  net = net.to(device)
  adam = dict(lr=1e-4, betas=(optim["b1"], optim["b2"]), eps=optim["eps"],
              **({"fused": True} if device == "cuda" else {}))
  opt = (torch.optim.AdamW(net.parameters(), weight_decay=optim["weight_decay"], **adam)
         if optim.get("weight_decay", 0.0) > 0 else torch.optim.Adam(net.parameters(), **adam))
  src, tgt_in, tgt_out = (torch.from_numpy(batch[k]).long().to(device)
                          for k in ("src", "tgt_in", "tgt_out"))
  autocast = ((lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)) if bf16
              else contextlib.nullcontext)

  def loss_fn(src, tgt_in, tgt_out):
    with autocast():
      logits = net(src, tgt_in)
    return F.cross_entropy(logits.float().reshape(-1, vocab), tgt_out.reshape(-1),
                           ignore_index=0, label_smoothing=optim["label_smoothing"])

  loss_step = torch.compile(loss_fn) if compile else loss_fn

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_step(src, tgt_in, tgt_out)
    loss.backward()
    if optim.get("grad_clip_norm", 0.0) > 0:
      torch.nn.utils.clip_grad_norm_(net.parameters(), optim["grad_clip_norm"])
    opt.step()
    return loss

  return step, sum(p.numel() for p in net.parameters())


def train_factory(model: dict, vocab: int, batch: dict[str, np.ndarray], optim: dict,
                  threads: int, compile: bool = False) -> harness.Runner:
  """The PyTorch side of train_benchmark.py on the CPU; `compile`: under `torch.compile`."""
  import torch
  torch.set_num_threads(threads)
  rss_import = harness.peak_rss_mib()
  step, params = train_step(model, vocab, batch, optim, compile=compile)
  start = time.perf_counter()
  step()  # torch.compile compiles here.
  info = {"params": params, "threads": torch.get_num_threads(), "rss_import_mib": rss_import,
          "first_call_s": time.perf_counter() - start}
  if compile:
    info["compile_s"] = info["first_call_s"]
  return harness.Runner(info=info, step=step)


def _timed(torch, device: str, step, n: int) -> tuple[list[float], float]:
  times = []
  for _ in range(n):
    start = time.perf_counter()
    loss = step()
    if device == "cuda":
      torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
  return times, float(loss.detach())


def _is_oom(error: BaseException) -> bool:
  return "out of memory" in str(error).lower() or type(error).__name__ == "OutOfMemoryError"


def measure(torch, spec: dict, name: str, deadline: float) -> dict:
  """The accelerator check's shape `name`: the largest rung of its ladder that fits, timed."""
  device, length, attempts = spec["device"], spec["seq_len"], []
  for rows in spec["ladders"][name]:
    if time.monotonic() > deadline:
      attempts.append({"rows": rows, "skipped": "time budget"})
      break
    step = oom = None
    try:
      step, params = train_step(spec["shapes"][name], spec["vocab_size"],
                                batches.random_batch(spec["vocab_size"], rows, length),
                                spec["optim"], device=device, bf16=True, padding_masks=False)
      _timed(torch, device, step, 1 + spec["warmup_steps"])
      times, loss = _timed(torch, device, step, spec["timed_steps"])
    except Exception as e:
      if not _is_oom(e):
        raise
      oom = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    if oom is not None:  # Out of the except block, whose traceback holds the model's tensors.
      attempts.append({"rows": rows, "error": oom})
      step = None  # Free it all, then go down the ladder.
      gc.collect()
      if device == "cuda":
        torch.cuda.empty_cache()
      continue
    t, tokens = statistics.median(times), rows * length
    return {"rows": rows, "seq_len": length, "params": params, "step_s_median": t,
            "step_s": times, "tokens_per_s": 2 * tokens / t, "target_tokens_per_s": tokens / t,
            "loss": loss, "attempts": attempts}
  return {"error": f"no rung of {spec['ladders'][name]} ran: {attempts}", "attempts": attempts}


def main(spec_path: str, out_path: str) -> None:
  """The accelerator check's PyTorch peer: SPEC.json in, OUT.json out (see the docstring)."""
  with open(spec_path) as f:
    spec = json.load(f)
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


# ----------------------------------------------------------------------------- decoding


def random_sources(vocab: int, batch: int, length: int) -> np.ndarray:
  """Source ids `[batch, length]` in [3, vocab - 1) (0-2 special; vocab - 1 is Marian's pad)."""
  return batches.random_batch(vocab - 1, batch, length)["src"]


def _vocabulary(vocab: int) -> list[str]:
  """Marian-style: eos 2, unk 1, id 0 unused, pad last (the converter drops it)."""
  return ["<unused>", "<unk>", "</s>"] + [f"t{i}" for i in range(3, vocab - 1)] + ["<pad>"]


def hf_factory(shape: dict, vocab: int, batch: int, src_len: int, new_tokens: int,
               threads: int, ct2_dir: str) -> harness.Runner:
  """Hugging Face `generate` with beam 4 on a random Marian model of `shape`; saves it converted
  to CTranslate2 in `ct2_dir` when given."""
  import torch
  import transformers
  torch.set_num_threads(threads)
  rss_import = harness.peak_rss_mib()
  torch.manual_seed(0)
  config = transformers.MarianConfig(
      vocab_size=vocab, d_model=shape["d_model"], encoder_layers=shape["num_encoder_layers"],
      decoder_layers=shape["num_decoder_layers"], encoder_attention_heads=shape["num_heads"],
      decoder_attention_heads=shape["num_heads"], encoder_ffn_dim=shape["d_ff"],
      decoder_ffn_dim=shape["d_ff"], activation_function="relu", max_position_embeddings=512,
      scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
      pad_token_id=vocab - 1, eos_token_id=2, decoder_start_token_id=vocab - 1,
      forced_eos_token_id=None, dropout=0.1)
  model = transformers.MarianMTModel(config).eval()
  params = sum(p.numel() for p in model.parameters())
  if ct2_dir:
    _convert(model, vocab, ct2_dir)
  src = torch.from_numpy(random_sources(vocab, batch, src_len)).long()
  src[:, -1] = 2  # Marian sources end with </s>.
  mask = torch.ones_like(src)

  def run():
    with torch.inference_mode():
      return model.generate(input_ids=src, attention_mask=mask, num_beams=BEAM, do_sample=False,
                            min_new_tokens=new_tokens, max_new_tokens=new_tokens,
                            length_penalty=0.6, early_stopping=False)

  out = run()
  assert out.shape == (batch, new_tokens + 1), out.shape  # decoder start + new tokens.
  return harness.Runner(info={"params": params, "rss_import_mib": rss_import}, step=run)


def _convert(model, vocab: int, ct2_dir: str) -> None:
  """Saves the Marian model and converts it to CTranslate2 float32 in `ct2_dir`."""
  import ctranslate2
  hf_dir = ct2_dir + "-hf"
  model.save_pretrained(hf_dir)
  tokens = _vocabulary(vocab)
  tokenizer = types.SimpleNamespace(get_vocab=lambda: {t: i for i, t in enumerate(tokens)},
                                    eos_token="</s>", unk_token="<unk>")

  class Converter(ctranslate2.converters.TransformersConverter):
    def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
      return tokenizer  # The loader only needs the vocabulary and the special tokens.

  Converter(hf_dir).convert(ct2_dir, quantization="float32", force=True)


def ct2_factory(vocab: int, batch: int, src_len: int, new_tokens: int, threads: int,
                ct2_dir: str) -> harness.Runner:
  """CTranslate2 `translate_batch` with beam 4, float32, on the model `hf_factory` converted."""
  import ctranslate2
  rss_import = harness.peak_rss_mib()
  translator = ctranslate2.Translator(ct2_dir, device="cpu", compute_type="float32",
                                      intra_threads=threads, inter_threads=1)
  tokens = _vocabulary(vocab)
  src = [[tokens[i] for i in row[:-1]] + ["</s>"]
         for row in random_sources(vocab, batch, src_len).tolist()]

  def run():
    return translator.translate_batch(src, beam_size=BEAM, min_decoding_length=new_tokens,
                                      max_decoding_length=new_tokens, length_penalty=0.6,
                                      max_batch_size=0)

  out = run()
  lengths = {len(r.hypotheses[0]) for r in out}
  assert lengths == {new_tokens}, lengths
  return harness.Runner(info={"rss_import_mib": rss_import}, step=run)


if __name__ == "__main__":
  _cli = argparse.ArgumentParser(description="The accelerator check's PyTorch peer (see the "
                                 "module docstring); accelerator_speed.torch_peer runs it.")
  _cli.add_argument("spec", help="SPEC.json: device, shapes, ladders, optimizer, deadline.")
  _cli.add_argument("out", help="OUT.json, rewritten after each shape.")
  _args = _cli.parse_args()
  main(_args.spec, _args.out)
