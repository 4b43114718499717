"""Decoding choices: keep the baseline unless a setting is significantly better."""

import numpy as np
import pytest

from transformer_jax import decoding_choice

WORDS = [f"w{i}" for i in range(200)]


def corpus(n=300, seed=0):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, rng.integers(8, 20))) for _ in range(n)]


def corrupt(lines, rate, seed):
  """Each word replaced by a wrong one with probability `rate`."""
  rng = np.random.default_rng(seed)
  return [" ".join(w if rng.random() > rate else "zz" for w in line.split()) for line in lines]


REFS = corpus()


def test_identical_settings_are_never_called_different():
  hyps = corrupt(REFS, 0.3, seed=1)
  out = decoding_choice.compare([("base", hyps), ("same", list(hyps))], REFS, samples=200)
  assert out[1].p_value == 1.0 and out[1].delta == 0.0
  index, reason = decoding_choice.choose(out, 0.05)
  assert index == 0 and reason.startswith("kept the baseline base")


def test_a_clearly_better_setting_is_chosen_and_noise_is_not():
  base = corrupt(REFS, 0.4, seed=1)
  better = corrupt(REFS, 0.1, seed=2)
  noise = list(base)
  noise[:2] = REFS[:2]  # Two sentences fixed out of 300: a small, chance-sized difference.
  out = decoding_choice.compare([("base", base), ("noise", noise), ("better", better)], REFS,
                                samples=300)
  assert out[0].p_value is None and out[0].delta == 0
  assert out[2].delta > 10 and out[2].p_value < 0.01 and out[2].better_than_baseline(0.05)
  assert 0 < out[1].delta < 1 and out[1].p_value > 0.05
  assert all(c.ci > 0 and 0.9 < c.length_ratio < 1.1 for c in out)
  index, reason = decoding_choice.choose(out, 0.05)
  assert index == 2 and reason.startswith("changed to better:")
  index, _ = decoding_choice.choose(out[:2], 0.05)  # Without the real improvement: kept.
  assert index == 0


def test_the_best_of_several_significant_settings_wins():
  out = [decoding_choice.Comparison("base", 20.0, 1.0, 1.0, 0.0, None),
         decoding_choice.Comparison("a", 24.0, 1.0, 1.0, 4.0, 0.001),
         decoding_choice.Comparison("b", 26.0, 1.0, 1.0, 6.0, 0.01),
         decoding_choice.Comparison("c", 30.0, 1.0, 1.0, 10.0, 0.2),  # Best BLEU, not significant.
         decoding_choice.Comparison("d", 15.0, 1.0, 1.0, -5.0, 0.001)]  # Significantly worse.
  assert decoding_choice.choose(out, 0.05)[0] == 2
  assert decoding_choice.choose(out, 0.005)[0] == 1


def test_split_halves_score_each_rule_on_the_unseen_half():
  base, better = corrupt(REFS, 0.4, seed=1), corrupt(REFS, 0.1, seed=2)
  same = decoding_choice.split_half_losses([("base", base), ("same", list(base))], REFS,
                                           splits=3, samples=100)
  assert same["best_bleu"] == same["significant"] == [0.0] * 3
  assert same["significant_choice"] == ["base"] * 3
  gain = decoding_choice.split_half_losses([("base", base), ("better", better)], REFS, splits=3,
                                           samples=100)
  assert all(g > 10 for g in gain["significant"]) and gain["significant"] == gain["best_bleu"]
  assert gain["significant_choice"] == ["better"] * 3


@pytest.mark.parametrize("level", [0, 1, 1.5, float("nan"), -0.1])
def test_bad_levels_are_refused(level):
  with pytest.raises(ValueError, match="significance level in"):
    decoding_choice.check_level(level)
