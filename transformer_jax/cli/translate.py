"""Translate with a trained workdir: `python translate.py --workdir W [--input F] [--reference R]`.

Reads W/tokenizer.model and a checkpoint (`--checkpoint latest | STEP | average:N | averaged`),
translates one sentence per line (stdin by default) with beam search, writes the translations in
input order (stdout by default), and with `--reference` prints sacreBLEU and chrF.

`--engine ctranslate2 --model DIR` serves a model exported with `export.py --to ctranslate2`
instead, with the same input and output handling (its beam search divides by length^alpha:
`--beam_convention huggingface`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from transformer_jax.cli import common

FLAGS = flags.FLAGS
# The decoding modules are imported where they are used, after the flags are parsed: --help and a
# flag error answer without loading them.


def _define_flags() -> None:
  """Defines translate's flags (at run time, so that importing this module defines nothing)."""
  flags.DEFINE_string("workdir", None, "Training workdir (tokenizer.model and checkpoints/).")
  flags.DEFINE_enum("engine", "jax", ["jax", "ctranslate2"], "jax: this package's decoding of "
                    "--workdir; ctranslate2: a model exported by export.py, --model DIR.")
  flags.DEFINE_string("model", None, "With --engine ctranslate2: the exported directory.")
  flags.DEFINE_string("compute_type", "default", "With --engine ctranslate2: CTranslate2's "
                      "compute type (default: the model's quantization; int8, float32, ...).")
  flags.DEFINE_string("checkpoint", "latest", "latest, a step number, average:N (mean of the last "
                      "N checkpoints), or averaged (the newest one written by "
                      "average_checkpoints.py).")
  flags.DEFINE_string("input", "-", "Source sentences, one per line ('-' = stdin; .gz is read "
                      "compressed).")
  flags.DEFINE_string("output", "-", "Where to write the translations ('-' = stdout).")
  flags.DEFINE_integer("beam_size", 4, "Beam size (1 = greedy).")
  flags.DEFINE_float("alpha", 0.6, "Length penalty exponent: ((5 + len) / 6)^alpha, or len^alpha "
                     "with --beam_convention huggingface.")
  flags.DEFINE_enum("beam_convention", "gnmt", ["gnmt", "huggingface"], "Beam search rules: the "
                    "paper's (GNMT length penalty), or transformers' generate() (to reproduce "
                    "Hugging Face's output, e.g. of an imported OPUS-MT model, with --alpha 1.0).")
  flags.DEFINE_integer("batch_tokens", 4096, "Source tokens per decoding batch.")
  flags.DEFINE_string("reference", None, "Reference translations: print BLEU and chrF.")
  flags.DEFINE_string("bleu_tokenize", "13a", "sacreBLEU tokenizer; 'none' for already tokenized "
                      "text (the paper-style tokenized BLEU, e.g. Multi30k's tok/ files).")
  flags.DEFINE_bool("lowercase", False, "Case-insensitive BLEU/chrF.")
  flags.DEFINE_string("attention_plot", None, "Also write a PNG of the encoder-decoder attention "
                      "of the first non-empty input line and its translation.")
  flags.DEFINE_integer("attention_layer", -1, "Decoder layer to plot (-1 = last).")
  flags.DEFINE_integer("attention_head", -1, "Head to plot (-1 = mean over heads).")


def _check_flags() -> None:
  """A ValueError (or FileNotFoundError) for a flag that cannot work, before anything loads."""
  from transformer_jax import inference
  if FLAGS.beam_size < 1:
    raise ValueError(f"--beam_size {FLAGS.beam_size}: use a positive beam size (1 = greedy).")
  if FLAGS.batch_tokens < 1:
    raise ValueError(f"--batch_tokens {FLAGS.batch_tokens}: use a positive token budget.")
  common.check_alpha(FLAGS.alpha)
  _check_engine()
  outputs = {"--output": FLAGS.output, "--attention_plot": FLAGS.attention_plot}
  common.check_outputs(outputs, {"--input": FLAGS.input, "--reference": FLAGS.reference},
                       workdir=FLAGS.workdir)
  for flag, path in outputs.items():
    if path and path != "-":
      inference.check_writable(path, flag)


def _check_engine() -> None:
  """The flags each engine needs, and none it cannot honour."""
  if FLAGS.engine == "jax":
    if not FLAGS.workdir:
      raise ValueError("--workdir is required (or --engine ctranslate2 --model DIR).")
    if FLAGS.model:
      raise ValueError("--model is for --engine ctranslate2; the jax engine reads --workdir.")
    return
  if not FLAGS.model or FLAGS.workdir:
    raise ValueError("--engine ctranslate2 reads --model DIR (written by export.py --to "
                     "ctranslate2), not --workdir.")
  if FLAGS.attention_plot:
    raise ValueError("--attention_plot needs the jax engine (--workdir).")
  if FLAGS.beam_size > 1 and FLAGS.alpha > 0 and FLAGS.beam_convention != "huggingface":
    raise ValueError("CTranslate2 divides scores by length^alpha (transformers' rule), not "
                     "GNMT's penalty: add --beam_convention huggingface (e.g. --alpha 1.0), or "
                     "--alpha 0.")


def _load_engine():
  """(translate(lines) -> hypotheses, description, the jax model's pieces or None)."""
  from transformer_jax import evaluation, inference
  if FLAGS.engine == "ctranslate2":
    from transformer_jax.ct2_translator import CTranslate2Translator
    translator = CTranslate2Translator(FLAGS.model, compute_type=FLAGS.compute_type)
    run = lambda lines: translator.translate(lines, beam_size=FLAGS.beam_size, alpha=FLAGS.alpha,
                                             batch_tokens=FLAGS.batch_tokens, progress=True)
    return run, f"CTranslate2 model {FLAGS.model}", None
  model, params, tokenizer, what = inference.load_translator(FLAGS.workdir, FLAGS.checkpoint)
  # Each sentence may grow to its own source length + 50 tokens, as in the paper.
  run = lambda lines: evaluation.translate(
      model, params, tokenizer, lines, beam_size=FLAGS.beam_size, alpha=FLAGS.alpha,
      batch_tokens=FLAGS.batch_tokens, beam_convention=FLAGS.beam_convention, progress=True)
  return run, f"{what} of {FLAGS.workdir}", (model, params, tokenizer)


def _plot_attention(model, params, tokenizer, lines: list[str], hypotheses: list[str]) -> None:
  """--attention_plot: the first non-empty line's cross-attention over its translation."""
  from transformer_jax import plotting
  first = next((i for i, line in enumerate(lines) if line.strip()), None)
  if first is None:
    return
  src_ids = tokenizer.encode(lines[first]) + [tokenizer.eos_id]
  tgt_ids = tokenizer.encode(hypotheses[first], target=True) + [tokenizer.eos_id]
  pieces = lambda ids: [tokenizer.id_to_piece(i) for i in ids]
  plotting.plot_cross_attention(
      model, params, src_ids, tgt_ids, FLAGS.attention_plot, src_labels=pieces(src_ids),
      tgt_labels=pieces(tgt_ids), layer=FLAGS.attention_layer,
      head=None if FLAGS.attention_head < 0 else FLAGS.attention_head)
  print(f"Attention map written to {FLAGS.attention_plot}.", file=sys.stderr)


def _main(argv: list[str]) -> None:
  del argv
  common.setup_logging()
  from transformer_jax import evaluation, executable_cache
  # A second call loads the compiled search, skipping its tracing and compiling.
  executable_cache.enable()
  from transformer_jax.data.corpus import read_lines

  # Every input is checked before anything is decoded or written.
  with common.exit_on(FileNotFoundError, ValueError):
    _check_flags()
    run, what, jax_model = _load_engine()
    lines = read_lines(FLAGS.input)
    references = read_lines(FLAGS.reference) if FLAGS.reference else None
  if references is not None and len(references) != len(lines):
    common.fail(f"{FLAGS.reference} has {len(references)} lines but the input has {len(lines)}: "
                "they must be line-aligned.")
  print(f"Translating {len(lines)} lines with the {what}.", file=sys.stderr)
  hypotheses = run(lines)
  text = "".join(h + "\n" for h in hypotheses)
  if FLAGS.output == "-":
    sys.stdout.write(text)
  else:
    with open(FLAGS.output, "w", encoding="utf-8") as f:
      f.write(text)
  if references is not None:
    scores = evaluation.corpus_scores(hypotheses, references, tokenize=FLAGS.bleu_tokenize,
                                      lowercase=FLAGS.lowercase)
    for score in scores.values():
      print(score.details, file=sys.stderr)
  if FLAGS.attention_plot:
    _plot_attention(*jax_model, lines, hypotheses)


def main(argv: Sequence[str] | None = None) -> None:
  """The `transformer-jax-translate` command; `argv` defaults to `sys.argv`."""
  _define_flags()
  common.run(_main, sys.modules[__name__], argv)


if __name__ == "__main__":
  main()
