"""Does a decoding choice made on a development set hold on text it was not made on?

  python -m benchmarks.decoding_rule --hypotheses_dir W/val_hyps --reference val.de
      [--baseline averaged_beam_5_alpha_1.txt] [--splits 20] [--significance 0.05]
      [--bleu_tokenize none]

Reads the translations that `tune_decoding.py --hypotheses_dir` wrote (one file per setting),
splits the development set into random halves `--splits` times, chooses a setting on one half
by the old rule (highest BLEU) and by tune_decoding's rule (the baseline unless a setting is
better with paired-bootstrap p < --significance), and scores each choice on the other half. It
prints, per rule, the mean held-out BLEU of its choice minus the baseline's (the loss or gain of
moving off the baseline) and how often the rule moved. No test set is involved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from transformer_jax import decoding_choice
from transformer_jax.data.corpus import read_lines


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--hypotheses_dir", required=True)
  p.add_argument("--reference", required=True)
  p.add_argument("--baseline", default="", help="The baseline's file name (default: the "
                 "baseline of the decode_tuning.json beside the directory, else the first file).")
  p.add_argument("--splits", type=int, default=20)
  p.add_argument("--significance", type=float, default=0.05)
  p.add_argument("--bootstrap_samples", type=int, default=1000)
  p.add_argument("--bleu_tokenize", default="13a")
  p.add_argument("--out", default="", help="Also write the per-split values here (JSON).")
  return p.parse_args(argv)


def _baseline_file(args, files: list[str]) -> str:
  if args.baseline:
    return args.baseline
  tuning = os.path.join(os.path.dirname(os.path.normpath(args.hypotheses_dir)),
                        "decode_tuning.json")
  if os.path.exists(tuning):
    path = json.load(open(tuning, encoding="utf-8"))["baseline"].get("hypotheses", "")
    if os.path.basename(path) in files:
      return os.path.basename(path)
  return files[0]


def main(argv=None):
  args = parse_args(argv)
  decoding_choice.check_level(args.significance)
  files = sorted(f for f in os.listdir(args.hypotheses_dir) if f.endswith(".txt"))
  baseline = _baseline_file(args, files)
  if baseline not in files:
    raise SystemExit(f"error: --baseline {baseline} is not in {args.hypotheses_dir}.")
  order = [baseline] + [f for f in files if f != baseline]
  systems = [(f[:-4], read_lines(os.path.join(args.hypotheses_dir, f))) for f in order]
  references = read_lines(args.reference)
  losses = decoding_choice.split_half_losses(
      systems, references, splits=args.splits, level=args.significance,
      tokenize=args.bleu_tokenize, samples=args.bootstrap_samples)
  print(f"{len(references)} sentences, {args.splits} random halvings; baseline {systems[0][0]}; "
        f"candidates: {', '.join(name for name, _ in systems[1:])}")
  print(f"{'rule':<34}{'held-out BLEU vs baseline':>28}{'moved off':>11}")
  for rule, label in (("best_bleu", "highest BLEU (old)"),
                      ("significant", f"significant at p < {args.significance} (new)")):
    values = losses[rule]
    moved = sum(name != systems[0][0] for name in losses[f"{rule}_choice"])
    print(f"{label:<34}{statistics.mean(values):>+15.3f} ± {statistics.stdev(values):.3f} (sd)"
          f"{moved:>7}/{len(values)}")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"baseline": systems[0][0], "systems": [n for n, _ in systems], **losses}, f,
                indent=1)


if __name__ == "__main__":
  main()
