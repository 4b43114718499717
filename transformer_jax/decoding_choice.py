"""Choosing decoding settings on a development set without chasing noise.

Each candidate (a checkpoint, beam size and length penalty) is compared with a *baseline*
setting by paired bootstrap resampling (Koehn 2004; sacreBLEU's implementation, as
`sacrebleu --paired-bs` runs it). The choice moves off the baseline only to a candidate whose
BLEU is higher with p below the significance level; among several such candidates, the one with
the highest BLEU. A difference that the development set cannot tell from chance keeps the
baseline, whose setting (e.g. length penalty 1.0) is the one that transfers to unseen text.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

DEFAULT_SAMPLES = 1000
DEFAULT_SEED = 12345  # sacreBLEU's own default (SACREBLEU_SEED).


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One system against the baseline on the development set.

  Attributes:
    name: The setting, e.g. "averaged beam 5 alpha 1.0".
    bleu: Corpus BLEU.
    ci: Half-width of the 95% bootstrap confidence interval of BLEU.
    length_ratio: Hypothesis length over reference length (BLEU's sys_len / ref_len).
    delta: BLEU minus the baseline's (0 for the baseline).
    p_value: Paired bootstrap p-value of the difference from the baseline (two-sided, as
      sacreBLEU computes it); None for the baseline itself; 1.0 for identical hypotheses.
  """
  name: str
  bleu: float
  ci: float
  length_ratio: float
  delta: float
  p_value: float | None

  def better_than_baseline(self, level: float) -> bool:
    return self.p_value is not None and self.delta > 0 and self.p_value < level


def compare(systems: Sequence[tuple[str, Sequence[str]]], references: Sequence[str], *,
            tokenize: str = "13a", lowercase: bool = False, samples: int = DEFAULT_SAMPLES,
            seed: int = DEFAULT_SEED) -> list[Comparison]:
  """Every system of `systems` ((name, hypotheses); the first is the baseline) against the
  first, by sacreBLEU's paired bootstrap with `samples` resamples (seeded)."""
  from sacrebleu.metrics import BLEU  # pylint: disable=g-import-not-at-top
  from sacrebleu.significance import PairedTest  # pylint: disable=g-import-not-at-top
  if len(systems) < 1:
    raise ValueError("compare needs at least the baseline system.")
  references = list(references)
  for name, hyps in systems:
    if len(hyps) != len(references):
      raise ValueError(f"{name}: {len(hyps)} hypotheses for {len(references)} references.")
  previous = os.environ.get("SACREBLEU_SEED")
  os.environ["SACREBLEU_SEED"] = str(seed)  # PairedTest reads its seed from the environment.
  try:
    metric = BLEU(tokenize=tokenize, lowercase=lowercase)
    test = PairedTest([(n, list(h)) for n, h in systems], {"BLEU": metric}, [references],
                      test_type="bs", n_samples=samples)
    _, results = test()
  finally:
    if previous is None:
      os.environ.pop("SACREBLEU_SEED", None)
    else:
      os.environ["SACREBLEU_SEED"] = previous
  scores = results["BLEU"]
  baseline_hyps = list(systems[0][1])
  out = []
  for i, ((name, hyps), result) in enumerate(zip(systems, scores)):
    score = BLEU(tokenize=tokenize, lowercase=lowercase).corpus_score(list(hyps), [references])
    p_value = None if i == 0 else (1.0 if list(hyps) == baseline_hyps else float(result.p_value))
    out.append(Comparison(name=name, bleu=float(result.score), ci=float(result.ci),
                          length_ratio=score.sys_len / max(score.ref_len, 1),
                          delta=float(result.score) - float(scores[0].score), p_value=p_value))
  return out


def choose(comparisons: Sequence[Comparison], level: float) -> tuple[int, str]:
  """(index of the chosen setting, one line saying why): the baseline (index 0) unless some
  candidate is better with p < `level`; then the best such candidate by BLEU."""
  if not 0 < level < 1:
    raise ValueError(f"The significance level must be in (0, 1), not {level}.")
  base = comparisons[0]
  winners = [i for i, c in enumerate(comparisons) if c.better_than_baseline(level)]
  if winners:
    best = max(winners, key=lambda i: comparisons[i].bleu)
    c = comparisons[best]
    return best, (f"changed to {c.name}: {c.delta:+.2f} BLEU over the baseline {base.name}, "
                  f"p = {c.p_value:.3f} < {level}.")
  others = comparisons[1:]
  if not others:
    return 0, f"kept the baseline {base.name}: nothing else was swept."
  closest = max(others, key=lambda c: c.bleu)
  return 0, (f"kept the baseline {base.name}: no setting is better with p < {level} (highest: "
             f"{closest.name}, {closest.delta:+.2f} BLEU, p = {closest.p_value:.3f}).")


def split_half_losses(systems: Sequence[tuple[str, Sequence[str]]], references: Sequence[str], *,
                      splits: int = 20, level: float = 0.05, tokenize: str = "13a",
                      lowercase: bool = False, samples: int = DEFAULT_SAMPLES,
                      seed: int = 0) -> dict[str, list]:
  """How well each rule's choice transfers: for `splits` random halvings of the development
  set, choose on one half (by best BLEU, and by `choose`) and score the choice on the other
  half. Returns, per rule ("best_bleu", "significant"), the held-out BLEU of its choice minus
  the baseline's (the first system's), one value per split, and under "RULE_choice" the name
  of the setting it chose."""
  from sacrebleu.metrics import BLEU  # pylint: disable=g-import-not-at-top
  n = len(references)
  rng = np.random.default_rng(seed)
  losses: dict[str, list] = {"best_bleu": [], "significant": [], "best_bleu_choice": [],
                             "significant_choice": []}
  bleu = lambda hyps, refs: BLEU(tokenize=tokenize, lowercase=lowercase).corpus_score(
      list(hyps), [list(refs)]).score
  for _ in range(splits):
    order = rng.permutation(n)
    tune, held = np.sort(order[:n // 2]), np.sort(order[n // 2:])
    pick = lambda idx, seq: [seq[i] for i in idx]
    tune_systems = [(name, pick(tune, hyps)) for name, hyps in systems]
    tune_refs = pick(tune, references)
    by_bleu = int(np.argmax([bleu(h, tune_refs) for _, h in tune_systems]))
    by_test, _ = choose(compare(tune_systems, tune_refs, tokenize=tokenize, lowercase=lowercase,
                                samples=samples), level)
    held_refs = pick(held, references)
    held_bleu = [bleu(pick(held, hyps), held_refs) for _, hyps in systems]
    losses["best_bleu"].append(held_bleu[by_bleu] - held_bleu[0])
    losses["significant"].append(held_bleu[by_test] - held_bleu[0])
    losses["best_bleu_choice"].append(systems[by_bleu][0])
    losses["significant_choice"].append(systems[by_test][0])
  return losses


def check_level(level: float, flag: str = "--significance") -> float:
  """`level` if it is a usable significance level; a one-line ValueError otherwise."""
  if not (isinstance(level, (int, float)) and math.isfinite(level) and 0 < level < 1):
    raise ValueError(f"{flag} {level}: give a significance level in (0, 1), e.g. 0.05.")
  return float(level)
