"""Beam-search decoding throughput: ours vs CTranslate2 (fp32) and Hugging Face `generate`.

  python -m benchmarks.decode_benchmark [--shapes base,small] [--rounds 5] [--per_round 2]
  python -m benchmarks.decode_benchmark --quick

Beam 4, a batch of 32 random sources of 32 tokens, exactly 32 generated tokens per sentence
(EOS forbidden before, and the limit, at 32). Ours: `transformer_jax.decoding.beam_search(model,
params, src, beam_size=4, min_len=32, max_len=32)`. Peers (`peers.py`): a randomly initialized
`transformers.MarianMTModel` with the same shapes (post-norm, sinusoidal positions, tied and
scaled embeddings, ReLU), run by `generate(num_beams=4, min_new_tokens=32, max_new_tokens=32)`,
and the same model converted to CTranslate2 (`compute_type="float32"`), run by
`translate_batch(beam_size=4, min_decoding_length=32, max_decoding_length=32)`. Sides
`ours-ct2-float32` and `ours-ct2-int8`: our side's model exported with `export_ct2` (as
`export.py --to ctranslate2` does) and run by CTranslate2 the same way. Shapes: `base`
(`TransformerConfig.base`), `small` (the Multi30k recipe's model), `tiny`
(`TransformerConfig.tiny`, for smoke runs).

Each side runs in its own worker process; timed calls alternate between sides. Reported:
generated tokens/s (batch x 32 / median call time), ratios to CTranslate2, peak RSS, and our
compile time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax

from benchmarks import harness, peers, workload
from transformer_jax import Transformer, TransformerConfig, beam_search

SHAPES = ("base", "small", "tiny")


def parse_args(argv=None):
  """The command line, checked (unknown names are refused)."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  harness.add_timing_args(p, unit="call", warmup=1, per_round=2, quick_per_round=1,
                          threads_help="Peers' intra-op threads.",
                          shapes_help=f"Comma-separated: {', '.join(SHAPES)}.",
                          shapes_default="base,small")
  p.add_argument("--sides", default="ours,ctranslate2,hf",
                 help="Comma-separated sides to run; also ours-ct2-float32 and ours-ct2-int8 "
                 "(our model exported by export.py's code, run by CTranslate2).")
  p.add_argument("--batch", type=int, default=32, help="Sentences per call.")
  p.add_argument("--src_len", type=int, default=32, help="Source tokens per sentence.")
  p.add_argument("--new_tokens", type=int, default=32, help="Generated tokens per sentence.")
  args = p.parse_args(argv)
  harness.finish_timing_args(p, args, SHAPES)
  if "ctranslate2" in args.sides.split(",") and "hf" not in args.sides.split(","):
    p.error("--sides: the CTranslate2 model is converted by the hf side; keep hf.")
  return args


def ours_factory(shape: dict, vocab: int, batch: int, src_len: int,
                 new_tokens: int) -> harness.Runner:
  """Our side: beam search with random parameters of `shape` on `peers.random_sources`."""
  rss_import = harness.peak_rss_mib()
  model = Transformer(TransformerConfig(vocab_size=vocab, **shape))
  src = jax.numpy.asarray(peers.random_sources(vocab, batch, src_len))
  params = model.init(jax.random.key(0), src[:1], src[:1, :4])["params"]
  decode = lambda: beam_search(model, params, src, beam_size=peers.BEAM, min_len=new_tokens,
                               max_len=new_tokens)
  start = time.perf_counter()
  tokens, _ = jax.block_until_ready(decode())
  first_call_s = time.perf_counter() - start
  assert tokens.shape == (batch, peers.BEAM, new_tokens), tokens.shape
  assert int((tokens[:, 0] != 0).sum()) == batch * new_tokens  # new_tokens real per sentence.
  return harness.Runner(info={"first_call_s": first_call_s, "rss_import_mib": rss_import},
                        step=lambda: jax.block_until_ready(decode()))


def ours_ct2_factory(shape: dict, vocab: int, batch: int, src_len: int, new_tokens: int,
                     threads: int, quantization: str) -> harness.Runner:
  """Our side's model (the same parameters) exported by `export_ct2` and run by CTranslate2."""
  import ctranslate2  # pylint: disable=import-outside-toplevel
  from transformer_jax import export_ct2  # pylint: disable=import-outside-toplevel
  rss_import = harness.peak_rss_mib()
  model = Transformer(TransformerConfig(vocab_size=vocab, **shape))
  src_ids = peers.random_sources(vocab, batch, src_len)
  params = model.init(jax.random.key(0), src_ids[:1], src_ids[:1, :4])["params"]
  pieces = [f"t{i}" for i in range(vocab)]
  scratch = tempfile.TemporaryDirectory(prefix="ours-ct2-")  # Removed when the worker ends.
  directory = os.path.join(scratch.name, "model")
  export_ct2.save(directory, params, model.config, pieces, quantization=quantization)
  translator = ctranslate2.Translator(directory, device="cpu", intra_threads=threads,
                                      inter_threads=1)
  src = [[pieces[i] for i in row] for row in src_ids.tolist()]

  def run(keep=scratch):  # pylint: disable=unused-argument  # Holds the directory.
    return translator.translate_batch(src, beam_size=peers.BEAM, min_decoding_length=new_tokens,
                                      max_decoding_length=new_tokens, length_penalty=0.6,
                                      max_batch_size=0)

  lengths = {len(r.hypotheses[0]) for r in run()}
  assert lengths == {new_tokens}, lengths
  return harness.Runner(info={"rss_import_mib": rss_import}, step=run)


def build_sides(name: str, wanted: list[str], ct2_dir: str, args) -> list[harness.Side]:
  """The chosen sides of the shape `name`, in worker processes (`ct2_dir`: hf converts to it)."""
  shape = workload.model_shape(name)
  common = dict(vocab=args.vocab_size, batch=args.batch, src_len=args.src_len,
                new_tokens=args.new_tokens)
  sides = []
  try:
    if "ours" in wanted:
      sides.append(harness.Side("ours", ours_factory, shape=shape, **common))
      print(f"[{name}] ours: first call (compile + run) {sides[-1].info['first_call_s']:.1f} s",
            flush=True)
    if "hf" in wanted:
      sides.append(harness.Side("hf", peers.hf_factory, shape=shape, threads=args.threads,
                                ct2_dir=ct2_dir, **common))
      print(f"[{name}] Marian params {sides[-1].info['params']:,}", flush=True)
    if ct2_dir:
      sides.append(harness.Side("ctranslate2", peers.ct2_factory, threads=args.threads,
                                ct2_dir=ct2_dir, **common))
    for quantization in ("float32", "int8"):
      if f"ours-ct2-{quantization}" in wanted:
        sides.append(harness.Side(f"ours-ct2-{quantization}", ours_ct2_factory, shape=shape,
                                  threads=args.threads, quantization=quantization, **common))
  except BaseException:
    for side in sides:
      side.close()
    raise
  return sides


def main(argv=None):
  """Runs the command (see the module docstring)."""
  args = parse_args(argv)
  workload.use_cpu()
  wanted = args.sides.split(",")
  tokens = args.batch * args.new_tokens
  rows = []
  for name in args.shapes.split(","):
    with tempfile.TemporaryDirectory() as tmp:
      ct2_dir = os.path.join(tmp, "ct2") if "ctranslate2" in wanted else ""
      print(f"[{name}] building the sides ...", flush=True)
      sides = build_sides(name, wanted, ct2_dir, args)
      try:
        harness.interleave(sides, warmup=args.warmup, rounds=args.rounds,
                           per_round=args.per_round)
      finally:
        for side in sides:
          side.close()
    ref = {s.name: s for s in sides}.get("ctranslate2")
    for side in sides:
      rows.append([
          name, side.name, f"{tokens / side.median:,.0f}", f"{side.median:.2f}",
          f"{ref.median / side.median:.2f}x" if ref else "-",
          f"{side.rss_mib:,.0f} ({side.info['rss_import_mib']:,.0f})",
          f"{side.info['first_call_s']:.1f}" if "first_call_s" in side.info else "-",
          len(side.times)])
  print()
  print(f"Beam {peers.BEAM} decoding, {args.batch} sources x {args.src_len} tokens, exactly "
        f"{args.new_tokens} new tokens each, vocab {args.vocab_size}, float32; "
        f"{os.cpu_count()} CPU cores; medians of interleaved calls")
  print(harness.markdown_table(
      ["shape", "side", "generated tok/s", "s / call", "vs CTranslate2",
       "peak RSS MiB (import)", "first call s", "calls"], rows))


if __name__ == "__main__":
  main()
