"""Choose decoding settings on a development set: `python tune_decoding.py --workdir W --input
val.src --reference val.tgt [--checkpoints average:5,latest] [--beam_sizes 5] [--alphas 1.0,0.6]
[--baseline averaged,5,1.0] [--significance 0.05]`.

Translates the development set once per (checkpoint, beam size, length penalty alpha) and
compares each setting with a baseline (the first of each list, or --baseline) by paired bootstrap
resampling (sacreBLEU's). It keeps the baseline unless a setting is better with p <
--significance, then takes the best such setting: a difference the development set cannot tell
from chance does not change the decoding. Prints BLEU with its 95% confidence interval, the
length ratio and the p-value of every setting, and one line saying why it kept or changed the
baseline; writes the same to WORKDIR/decode_tuning.json. Tune on validation data only; then
decode the test set once with the chosen setting through translate.py.
"""

from __future__ import annotations

import json
import os
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
  flags.DEFINE_list("alphas", ["1.0", "0.6", "0.8", "1.2", "1.4"], "Length penalties to compare.")
  flags.DEFINE_string("baseline", None, "CHECKPOINT,BEAM,ALPHA: the setting kept unless another "
                      "is significantly better (default: the first of --checkpoints, "
                      "--beam_sizes and --alphas); it must be among them.")
  flags.DEFINE_float("significance", 0.05, "Leave the baseline only for a setting better with a "
                     "paired-bootstrap p-value below this.")
  flags.DEFINE_integer("bootstrap_samples", 1000, "Paired bootstrap resamples (sacreBLEU's).")
  flags.DEFINE_string("hypotheses_dir", None, "Also write each setting's translations here, one "
                      "file per setting (for analyses such as benchmarks.decoding_rule).")
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


def _settings() -> tuple[list[int], list[float], str, tuple[str, int, float]]:
  """(beam sizes, alphas, output path, baseline) from the flags; a ValueError for any bad one."""
  from transformer_jax import decoding_choice
  from transformer_jax import inference
  from transformer_jax import workdir_layout as layout
  beam_sizes = _numbers("beam_sizes", FLAGS.beam_sizes, int)
  alphas = _numbers("alphas", FLAGS.alphas, float)
  if not FLAGS.checkpoints or not beam_sizes or not alphas:
    raise ValueError("--checkpoints, --beam_sizes and --alphas each need at least one value.")
  for alpha in alphas:
    common.check_alpha(alpha, f"--alphas={','.join(FLAGS.alphas)}:")
  if min(beam_sizes) < 1:
    raise ValueError(f"--beam_sizes={','.join(FLAGS.beam_sizes)}: beam sizes must be positive "
                     "(1 = greedy).")
  if FLAGS.batch_tokens < 1:
    raise ValueError(f"--batch_tokens {FLAGS.batch_tokens}: use a positive token budget.")
  decoding_choice.check_level(FLAGS.significance)
  if FLAGS.bootstrap_samples < 100:
    raise ValueError(f"--bootstrap_samples {FLAGS.bootstrap_samples}: use at least 100 "
                     "resamples (sacreBLEU's default is 1000).")
  baseline = _baseline(beam_sizes, alphas)
  output_json = FLAGS.output_json or layout.path(FLAGS.workdir, layout.DECODE_TUNING_FILE)
  common.check_outputs({"--output_json": output_json, "--hypotheses_dir": FLAGS.hypotheses_dir},
                       {"--input": FLAGS.input, "--reference": FLAGS.reference},
                       workdir=FLAGS.workdir)
  # Now, not after every setting has decoded.
  inference.check_writable(output_json, "--output_json")
  return beam_sizes, alphas, output_json, baseline


def _baseline(beam_sizes: list[int], alphas: list[float]) -> tuple[str, int, float]:
  """--baseline as (checkpoint, beam size, alpha), checked against the swept lists."""
  if FLAGS.baseline is None:
    return FLAGS.checkpoints[0], beam_sizes[0], alphas[0]
  parts = [p.strip() for p in FLAGS.baseline.split(",")]
  try:
    checkpoint, beam_size, alpha = parts[0], int(parts[1]), float(parts[2])
    if len(parts) != 3:
      raise ValueError
  except (ValueError, IndexError):
    raise ValueError(f"--baseline {FLAGS.baseline}: give CHECKPOINT,BEAM,ALPHA, e.g. "
                     "averaged,5,1.0.") from None
  if (checkpoint not in FLAGS.checkpoints or beam_size not in beam_sizes
      or (beam_size > 1 and alpha not in alphas)):
    raise ValueError(f"--baseline {FLAGS.baseline} is not among the settings swept "
                     f"(--checkpoints {','.join(FLAGS.checkpoints)}, --beam_sizes "
                     f"{','.join(map(str, beam_sizes))}, --alphas {','.join(map(str, alphas))}); "
                     "add it to those lists or choose one of them.")
  return checkpoint, beam_size, alpha if beam_size > 1 else alphas[0]


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


def _name(checkpoint: str, beam_size: int, alpha: float) -> str:
  return (f"{checkpoint} greedy" if beam_size == 1
          else f"{checkpoint} beam {beam_size} alpha {alpha:g}")


def _sweep(model, tokenizer, loaded, sources, references, beam_sizes,
           alphas) -> tuple[list[dict], list[list[str]]]:
  """Decodes and scores every setting, printing a progress line for each; returns the rows
  and each row's hypotheses."""
  from transformer_jax import evaluation
  rows, hypotheses = [], []
  for checkpoint, (params, what) in zip(FLAGS.checkpoints, loaded):
    for beam_size in beam_sizes:
      # Greedy search has no length penalty: one row stands for every alpha.
      for alpha in alphas if beam_size > 1 else alphas[:1]:
        start = time.perf_counter()
        hyps, scores = evaluation.translate_and_score(
            model, params, tokenizer, sources, references, tokenize=FLAGS.bleu_tokenize,
            lowercase=FLAGS.lowercase, beam_size=beam_size, alpha=alpha,
            batch_tokens=FLAGS.batch_tokens, beam_convention=FLAGS.beam_convention)
        row = {"setting": _name(checkpoint, beam_size, alpha), "checkpoint": checkpoint,
               "checkpoint_steps": what, "beam_size": beam_size, "alpha": alpha,
               "bleu": scores["bleu"].score, "chrf": scores["chrf"].score,
               "seconds": round(time.perf_counter() - start, 1),
               "signature": scores["bleu"].signature}
        rows.append(row)
        hypotheses.append(hyps)
        print(f"decoded {row['setting']}: BLEU {row['bleu']:.2f} ({row['seconds']:.1f} s)",
              flush=True)
  return rows, hypotheses


def _compare(rows: list[dict], hypotheses: list[list[str]], references: list[str],
             baseline: tuple[str, int, float]) -> tuple[dict, str]:
  """Adds CI, length ratio, delta and p-value to every row; returns (chosen row, reason)."""
  from transformer_jax import decoding_choice
  base = next(i for i, r in enumerate(rows) if r["setting"] == _name(*baseline))
  order = [base] + [i for i in range(len(rows)) if i != base]
  comparisons = decoding_choice.compare(
      [(rows[i]["setting"], hypotheses[i]) for i in order], references,
      tokenize=FLAGS.bleu_tokenize, lowercase=FLAGS.lowercase, samples=FLAGS.bootstrap_samples)
  for i, c in zip(order, comparisons):
    rows[i].update(bleu_ci95=round(c.ci, 3), length_ratio=round(c.length_ratio, 4),
                   delta=round(c.delta, 3), p_value=c.p_value, baseline=i == base)
  chosen, reason = decoding_choice.choose(comparisons, FLAGS.significance)
  return rows[order[chosen]], reason


def _print_table(rows: list[dict]) -> None:
  print(f"{'setting':<34}{'BLEU':>7}{'95% CI':>9}{'len ratio':>10}{'vs base':>9}{'p':>7}"
        f"{'chrF':>7}")
  for r in rows:
    p = "base" if r["baseline"] else f"{r['p_value']:.3f}"
    print(f"{r['setting']:<34}{r['bleu']:>7.2f}{'±' + format(r['bleu_ci95'], '.2f'):>9}"
          f"{r['length_ratio']:>10.3f}{r['delta']:>+9.2f}{p:>7}{r['chrf']:>7.2f}")


def _write_hypotheses(rows: list[dict], hypotheses: list[list[str]]) -> None:
  os.makedirs(FLAGS.hypotheses_dir, exist_ok=True)
  for row, hyps in zip(rows, hypotheses):
    path = os.path.join(FLAGS.hypotheses_dir, row["setting"].replace(" ", "_") + ".txt")
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(h + "\n" for h in hyps)
    row["hypotheses"] = path


def _main(argv: list[str]) -> None:
  del argv
  common.setup_logging()
  from transformer_jax import executable_cache
  # A second call loads the compiled search, skipping its tracing and compiling.
  executable_cache.enable()
  with common.exit_on(FileNotFoundError, ValueError):
    beam_sizes, alphas, output_json, baseline = _settings()
    sources, references, model, tokenizer, loaded = _load()
  rows, hypotheses = _sweep(model, tokenizer, loaded, sources, references, beam_sizes, alphas)
  chosen, reason = _compare(rows, hypotheses, references, baseline)
  _print_table(rows)
  if FLAGS.hypotheses_dir:
    _write_hypotheses(rows, hypotheses)
  convention = ("" if FLAGS.beam_convention == "gnmt"
                else f" --beam_convention {FLAGS.beam_convention}")
  print(f"{reason}\nchosen: --checkpoint {chosen['checkpoint']} --beam_size "
        f"{chosen['beam_size']} --alpha {chosen['alpha']}{convention} ({chosen['bleu']:.2f} BLEU "
        f"on {FLAGS.input}; {chosen['signature']})")
  with open(output_json, "w") as f:
    json.dump({"input": FLAGS.input, "reference": FLAGS.reference,
               "beam_convention": FLAGS.beam_convention, "significance": FLAGS.significance,
               "bootstrap_samples": FLAGS.bootstrap_samples, "rows": rows,
               "baseline": next(r for r in rows if r["baseline"]), "chosen": chosen,
               "reason": reason}, f, indent=1)
  print(f"Written to {output_json}.")


def main(argv: Sequence[str] | None = None) -> None:
  """The `transformer-jax-tune-decoding` command; `argv` defaults to `sys.argv`."""
  _define_flags()
  common.run(_main, sys.modules[__name__], argv)


if __name__ == "__main__":
  main()
