"""Beam-search decoding throughput: ours vs CTranslate2 (fp32) and Hugging Face `generate`.

  python benchmarks/decode_benchmark.py [--shapes base,small] [--rounds 5] [--per_round 2]
  python benchmarks/decode_benchmark.py --quick

Beam 4, a batch of 32 random sources of 32 tokens, exactly 32 generated tokens per sentence
(EOS forbidden before, and the limit, at 32). Ours: `transformer_jax.decoding.beam_search(model,
params, src, beam_size=4, min_len=32, max_len=32)`. Peers: a randomly initialized
`transformers.MarianMTModel` with the same shapes (post-norm, sinusoidal positions, tied and
scaled embeddings, ReLU), run by `generate(num_beams=4, min_new_tokens=32, max_new_tokens=32)`,
and the same model converted to CTranslate2 (`compute_type="float32"`), run by
`translate_batch(beam_size=4, min_decoding_length=32, max_decoding_length=32)`.

Each side runs in its own worker process; timed calls alternate between sides. Reported:
generated tokens/s (batch x 32 / median call time), ratios to CTranslate2, peak RSS, and our
compile time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from train_benchmark import SHAPES  # noqa: E402

BEAM = 4


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  harness.add_timing_args(p, unit="call", warmup=1, per_round=2, quick_per_round=1,
                          threads_help="Peers' intra-op threads.")
  p.add_argument("--sides", default="ours,ctranslate2,hf", help="Comma-separated sides to run.")
  p.add_argument("--batch", type=int, default=32, help="Sentences per call.")
  p.add_argument("--src_len", type=int, default=32, help="Source tokens per sentence.")
  p.add_argument("--new_tokens", type=int, default=32, help="Generated tokens per sentence.")
  args = p.parse_args(argv)
  harness.finish_timing_args(p, args, SHAPES)
  if "ctranslate2" in args.sides.split(",") and "hf" not in args.sides.split(","):
    p.error("--sides: the CTranslate2 model is converted by the hf side; keep hf.")
  return args


def random_sources(vocab: int, batch: int, length: int):
  """Source ids `[batch, length]` in [3, vocab - 1) (0-2 special; vocab - 1 is Marian's pad)."""
  import numpy as np
  return np.random.default_rng(0).integers(3, vocab - 1, (batch, length), dtype=np.int32)


# ----------------------------------------------------------------------------- ours


def ours_factory(shape, vocab, batch, src_len, new_tokens):
  import time
  import jax
  from transformer_jax import Transformer, TransformerConfig, beam_search

  rss_import = harness.peak_rss_mib()
  model = Transformer(TransformerConfig(vocab_size=vocab, dropout_rate=0.1, **shape))
  src = jax.numpy.asarray(random_sources(vocab, batch, src_len))
  params = model.init(jax.random.key(0), src[:1], src[:1, :4])["params"]
  decode = lambda: beam_search(model, params, src, beam_size=BEAM, min_len=new_tokens,
                               max_len=new_tokens)
  start = time.perf_counter()
  tokens, _ = jax.block_until_ready(decode())
  first_call_s = time.perf_counter() - start
  assert tokens.shape == (batch, BEAM, new_tokens), tokens.shape
  assert int((tokens[:, 0] != 0).sum()) == batch * new_tokens  # 32 real tokens per sentence.
  return harness.Runner(info={"first_call_s": first_call_s, "rss_import_mib": rss_import},
                        step=lambda: jax.block_until_ready(decode()))


# ----------------------------------------------------------------------------- peers


def _vocabulary(vocab: int) -> list[str]:
  """Marian-style: eos 2, unk 1, id 0 unused, pad last (the converter drops it)."""
  return ["<unused>", "<unk>", "</s>"] + [f"t{i}" for i in range(3, vocab - 1)] + ["<pad>"]


def hf_factory(shape, vocab, batch, src_len, new_tokens, threads, ct2_dir):
  import types
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
    _convert(model, vocab, ct2_dir, types.SimpleNamespace)
  src = torch.from_numpy(random_sources(vocab, batch, src_len)).long()
  src[:, -1] = 2  # Marian sources end with </s>.
  mask = torch.ones_like(src)

  def run():
    with torch.inference_mode():
      out = model.generate(input_ids=src, attention_mask=mask, num_beams=BEAM, do_sample=False,
                           min_new_tokens=new_tokens, max_new_tokens=new_tokens,
                           length_penalty=0.6, early_stopping=False)
    return out

  out = run()
  assert out.shape == (batch, new_tokens + 1), out.shape  # decoder start + new tokens.
  return harness.Runner(info={"params": params, "rss_import_mib": rss_import}, step=run)


def _convert(model, vocab, ct2_dir, namespace):
  """Saves the Marian model and converts it to CTranslate2 float32 in `ct2_dir`."""
  import ctranslate2

  hf_dir = ct2_dir + "-hf"
  model.save_pretrained(hf_dir)
  tokens = _vocabulary(vocab)
  tokenizer = namespace(get_vocab=lambda: {t: i for i, t in enumerate(tokens)},
                        eos_token="</s>", unk_token="<unk>")

  class Converter(ctranslate2.converters.TransformersConverter):
    def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
      return tokenizer  # The loader only needs the vocabulary and the special tokens.

  Converter(hf_dir).convert(ct2_dir, quantization="float32", force=True)


def ct2_factory(vocab, batch, src_len, new_tokens, threads, ct2_dir):
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


# ----------------------------------------------------------------------------- main


def main(argv=None):
  args = parse_args(argv)
  harness.one_device_env()
  wanted = args.sides.split(",")
  tokens = args.batch * args.new_tokens
  rows = []
  for name in args.shapes.split(","):
    shape = SHAPES[name]
    common = dict(vocab=args.vocab_size, batch=args.batch, src_len=args.src_len,
                  new_tokens=args.new_tokens)
    sides = []
    with tempfile.TemporaryDirectory() as tmp:
      ct2_dir = os.path.join(tmp, "ct2") if "ctranslate2" in wanted else ""
      print(f"[{name}] building the sides ...", flush=True)
      try:
        if "ours" in wanted:
          sides.append(harness.Side("ours", ours_factory, shape=shape, **common))
          print(f"[{name}] ours: first call (compile + run) "
                f"{sides[-1].info['first_call_s']:.1f} s", flush=True)
        if "hf" in wanted:
          sides.append(harness.Side("hf", hf_factory, shape=shape, threads=args.threads,
                                    ct2_dir=ct2_dir, **common))
          print(f"[{name}] Marian params {sides[-1].info['params']:,}", flush=True)
        if ct2_dir:
          sides.append(harness.Side("ctranslate2", ct2_factory, threads=args.threads,
                                    ct2_dir=ct2_dir, **common))
        harness.interleave(sides, warmup=args.warmup, rounds=args.rounds,
                           per_round=args.per_round)
      finally:
        for side in sides:
          side.close()
    by_name = {s.name: s for s in sides}
    ref = by_name.get("ctranslate2")
    for side in sides:
      rows.append([
          name, side.name, f"{tokens / side.median:,.0f}", f"{side.median:.2f}",
          f"{ref.median / side.median:.2f}x" if ref else "-",
          f"{side.rss_mib:,.0f} ({side.info['rss_import_mib']:,.0f})",
          f"{side.info['first_call_s']:.1f}" if "first_call_s" in side.info else "-",
          len(side.times)])
  print()
  print(f"Beam {BEAM} decoding, {args.batch} sources x {args.src_len} tokens, exactly "
        f"{args.new_tokens} new tokens each, vocab {args.vocab_size}, float32; "
        f"{os.cpu_count()} CPU cores; medians of interleaved calls")
  print(harness.markdown_table(
      ["shape", "side", "generated tok/s", "s / call", "vs CTranslate2",
       "peak RSS MiB (import)", "first call s", "calls"], rows))


if __name__ == "__main__":
  main()
