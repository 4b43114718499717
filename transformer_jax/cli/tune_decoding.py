"""Choose decoding settings on a development set: `python tune_decoding.py --workdir W --input
val.src --reference val.tgt [--checkpoints average:5,latest] [--beam_sizes 5] [--alphas 0.6,1.0]`.

Translates the development set once per (checkpoint, beam size, length penalty alpha), prints
BLEU and chrF for each, and writes them with the best setting (by BLEU) to
WORKDIR/decode_tuning.json. Tune on validation data only; then decode the test set once with the
chosen setting through translate.py.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from absl import flags

from transformer_jax.cli import common

FLAGS = flags.FLAGS
# The decoding modules are imported where they are used, after the flags are parsed: --help and a
# flag error answer without loading them.


def _define_flags() -> None:
  """Defines tune_decoding's flags (at run time, so that importing this module defines nothing)."""
  flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
  flags.DEFINE_string("input", None, "Development-set sources (.gz is read compressed).",
                      required=True)
  flags.DEFINE_string("reference", None, "Development-set references, line-aligned with --input.",
                      required=True)
  flags.DEFINE_list("checkpoints", ["average:5"], "Checkpoints to compare: latest, a step, "
                    "average:N or averaged.")
  flags.DEFINE_list("beam_sizes", ["5"], "Beam sizes to compare (1 = greedy).")
  flags.DEFINE_list("alphas", ["0.6", "0.8", "1.0", "1.2", "1.4"], "Length penalties to compare.")
  flags.DEFINE_enum("beam_convention", "gnmt", ["gnmt", "huggingface"], "Beam search rules: the "
                    "paper's (GNMT length penalty) or transformers' generate() (len^alpha).")
  flags.DEFINE_string("bleu_tokenize", "13a", "sacreBLEU tokenizer; 'none' for tokenized text.")
  flags.DEFINE_bool("lowercase", False, "Case-insensitive BLEU/chrF.")
  flags.DEFINE_integer("batch_tokens", 4096, "Source tokens per decoding batch.")
  flags.DEFINE_string("output_json", None, "Where to write the table (default "
                      "WORKDIR/decode_tuning.json).")


def _numbers(name, values, kind):
  try:
    return [kind(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name}={','.join(values)}: expected a comma-separated list of "
                     f"{kind.__name__} values.") from None


def _settings() -> tuple[list[int], list[float], str]:
  """(beam sizes, alphas, output path) from the flags; a ValueError for any bad one."""
  from transformer_jax import inference
  from transformer_jax import workdir_layout as layout
  beam_sizes = _numbers("beam_sizes", FLAGS.beam_sizes, int)
  alphas = _numbers("alphas", FLAGS.alphas, float)
  if not FLAGS.checkpoints or not beam_sizes or not alphas:
    raise ValueError("--checkpoints, --beam_sizes and --alphas each need at least one value.")
  if min(beam_sizes) < 1:
    raise ValueError(f"--beam_sizes={','.join(FLAGS.beam_sizes)}: beam sizes must be positive "
                     "(1 = greedy).")
  if FLAGS.batch_tokens < 1:
    raise ValueError(f"--batch_tokens {FLAGS.batch_tokens}: use a positive token budget.")
  output_json = FLAGS.output_json or layout.path(FLAGS.workdir, layout.DECODE_TUNING_FILE)
  # Now, not after every setting has decoded.
  inference.check_writable(output_json, "--output_json")
  return beam_sizes, alphas, output_json


def _load():
  """(sources, references, model, tokenizer, [(params, description)] per checkpoint).

  Raises:
    ValueError, FileNotFoundError: an input is missing, empty or misaligned, or a checkpoint
      cannot be read.
  """
  from transformer_jax import inference
  from transformer_jax.data.corpus import read_lines
  sources = read_lines(FLAGS.input)
  references = read_lines(FLAGS.reference)
  if not any(line.strip() for line in sources):
    raise ValueError(f"--input {FLAGS.input} has no sentence to translate; give the "
                     "development set's sources.")
  if len(sources) != len(references):
    raise ValueError(f"{FLAGS.reference} has {len(references)} lines but {FLAGS.input} has "
                     f"{len(sources)}: they must be line-aligned.")
  # Every checkpoint of a workdir shares its model and tokenizer: load those once. All
  # checkpoints load before decoding starts, so a bad one fails at once.
  model, params, tokenizer, what = inference.load_translator(FLAGS.workdir, FLAGS.checkpoints[0])
  loaded = [(params, what)]
  for checkpoint in FLAGS.checkpoints[1:]:
    params, _, what = inference.load_params(FLAGS.workdir, checkpoint)
    loaded.append((params, what))
  return sources, references, model, tokenizer, loaded


def _sweep(model, tokenizer, loaded, sources, references, beam_sizes, alphas) -> list[dict]:
  """Decodes and scores every setting, printing a table row for each; returns the rows."""
  from transformer_jax import evaluation
  rows = []
  print(f"{'checkpoint':<16}{'beam':>5}{'alpha':>7}{'BLEU':>8}{'chrF':>8}{'seconds':>9}")
  for checkpoint, (params, what) in zip(FLAGS.checkpoints, loaded):
    for beam_size in beam_sizes:
      # Greedy search has no length penalty: one row stands for every alpha.
      for alpha in alphas if beam_size > 1 else alphas[:1]:
        start = time.perf_counter()
        _, scores = evaluation.translate_and_score(
            model, params, tokenizer, sources, references, tokenize=FLAGS.bleu_tokenize,
            lowercase=FLAGS.lowercase, beam_size=beam_size, alpha=alpha,
            batch_tokens=FLAGS.batch_tokens, beam_convention=FLAGS.beam_convention)
        row = {"checkpoint": checkpoint, "checkpoint_steps": what, "beam_size": beam_size,
               "alpha": alpha, "bleu": scores["bleu"].score, "chrf": scores["chrf"].score,
               "seconds": round(time.perf_counter() - start, 1),
               "signature": scores["bleu"].signature}
        rows.append(row)
        print(f"{checkpoint:<16}{beam_size:>5}{alpha:>7.2f}{row['bleu']:>8.2f}"
              f"{row['chrf']:>8.2f}{row['seconds']:>9.1f}", flush=True)
  return rows


def _main(argv: list[str]) -> None:
  del argv
  common.setup_logging()
  from transformer_jax import executable_cache
  # A second call loads the compiled search, skipping its tracing and compiling.
  executable_cache.enable()
  with common.exit_on(FileNotFoundError, ValueError):
    beam_sizes, alphas, output_json = _settings()
    sources, references, model, tokenizer, loaded = _load()
  rows = _sweep(model, tokenizer, loaded, sources, references, beam_sizes, alphas)
  best = max(rows, key=lambda r: r["bleu"])
  convention = ("" if FLAGS.beam_convention == "gnmt"
                else f" --beam_convention {FLAGS.beam_convention}")
  print(f"best: --checkpoint {best['checkpoint']} --beam_size {best['beam_size']} "
        f"--alpha {best['alpha']}{convention} ({best['bleu']:.2f} BLEU on {FLAGS.input}; "
        f"{best['signature']})")
  with open(output_json, "w") as f:
    json.dump({"input": FLAGS.input, "reference": FLAGS.reference,
               "beam_convention": FLAGS.beam_convention, "rows": rows, "best": best},
              f, indent=1)
  print(f"Written to {output_json}.")


def main(argv: Sequence[str] | None = None) -> None:
  """The `transformer-jax-tune-decoding` command; `argv` defaults to `sys.argv`."""
  _define_flags()
  common.run(_main, sys.modules[__name__], argv)


if __name__ == "__main__":
  main()
