"""Synthetic translation tasks, generated in code: the offline default needs no download.

- "dates": an ISO date becomes English words, day first, so the output reorders the input
  (`2023-07-14` -> `fourteenth of july two thousand twenty three`); 1900-01-01 .. 2099-12-31.
- "numbers": an integer in digits becomes English words
  (`40512` -> `forty thousand five hundred twelve`); 0 .. 999,999.

Sources use 11 characters (digits and "-"), targets at most 64 distinct words and at most 9
words per sentence, so a small model learns them in minutes on a CPU. Items are drawn without
replacement by a seeded generator; `synthetic_splits` keeps eval disjoint from train.
"""

from __future__ import annotations

import datetime

import numpy as np

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINALS = ("_ first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
             "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth "
             "twentieth").split()
_MONTHS = ("_ january february march april may june july august september october november "
           "december").split()
_FIRST_DAY = datetime.date(1900, 1, 1)
_NUM_DAYS = (datetime.date(2099, 12, 31) - _FIRST_DAY).days + 1

TASKS = ("dates", "numbers")


def number_words(n: int) -> str:
  """English words of 0 <= n < 1,000,000, without "and": 115 -> "one hundred fifteen"."""
  if not 0 <= n < 1_000_000:
    raise ValueError(f"number_words covers 0..999999, got {n}.")
  if n < 20:
    return _ONES[n]
  if n < 100:
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
  if n < 1000:
    hundreds, rest = divmod(n, 100)
    return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
  thousands, rest = divmod(n, 1000)
  return f"{number_words(thousands)} thousand" + (f" {number_words(rest)}" if rest else "")


def ordinal_words(n: int) -> str:
  """1 -> "first", 23 -> "twenty third", 30 -> "thirtieth" (1 <= n <= 31)."""
  if n <= 20:
    return _ORDINALS[n]
  tens, ones = divmod(n, 10)
  if ones == 0:
    return _TENS[tens][:-1] + "ieth"
  return f"{_TENS[tens]} {_ORDINALS[ones]}"


def year_words(year: int) -> str:
  """1905 -> "nineteen oh five", 1900 -> "nineteen hundred", 2023 -> "two thousand twenty three"."""
  if year >= 2000:
    return number_words(year)
  century, rest = divmod(year, 100)
  if rest == 0:
    return f"{number_words(century)} hundred"
  if rest < 10:
    return f"{number_words(century)} oh {_ONES[rest]}"
  return f"{number_words(century)} {number_words(rest)}"


def _date_pair(index: int) -> tuple[str, str]:
  d = _FIRST_DAY + datetime.timedelta(days=int(index))
  return d.isoformat(), f"{ordinal_words(d.day)} of {_MONTHS[d.month]} {year_words(d.year)}"


def _number_pair(index: int) -> tuple[str, str]:
  return str(int(index)), number_words(int(index))


_GENERATORS = {"dates": (_date_pair, _NUM_DAYS), "numbers": (_number_pair, 1_000_000)}


def task_size(task: str) -> int:
  """How many distinct pairs `task` has."""
  return _GENERATORS[_check_task(task)][1]


def synthetic_pairs(task: str, num_pairs: int, seed: int, *,
                    exclude: np.ndarray | None = None) -> list[tuple[str, str]]:
  """`num_pairs` distinct (source, target) pairs of `task`, drawn by a generator seeded `seed`.

  Args:
    task: One of `TASKS`.
    num_pairs: How many pairs.
    seed: The same seed gives the same pairs, in the same order.
    exclude: Item indices (see `synthetic_indices`) that must not be drawn.
  """
  pair_fn, _ = _GENERATORS[_check_task(task)]
  return [pair_fn(i) for i in synthetic_indices(task, num_pairs, seed, exclude=exclude)]


def synthetic_indices(task: str, num_pairs: int, seed: int, *,
                      exclude: np.ndarray | None = None) -> np.ndarray:
  """The item indices `synthetic_pairs` draws (distinct, none in `exclude`)."""
  size = task_size(task)
  pool = np.arange(size) if exclude is None else np.setdiff1d(np.arange(size), exclude)
  if not 0 < num_pairs <= len(pool):
    raise ValueError(f"Synthetic task {task!r} has {len(pool)} distinct pairs available "
                     f"(of {size}); cannot draw {num_pairs}. Use a size in 1..{len(pool)}.")
  return np.random.default_rng(seed).choice(pool, num_pairs, replace=False)


def synthetic_splits(task: str, train_size: int, eval_size: int,
                     seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """Disjoint train and eval pairs: train drawn with `seed`, eval with `seed + 1` from the rest."""
  train = synthetic_indices(task, train_size, seed)
  pair_fn, _ = _GENERATORS[task]
  eval_ = synthetic_indices(task, eval_size, seed + 1, exclude=train)
  return [pair_fn(i) for i in train], [pair_fn(i) for i in eval_]


def _check_task(task: str) -> str:
  if task not in _GENERATORS:
    raise ValueError(f"Unknown synthetic task {task!r}; choose one of {TASKS} "
                     "(data.synthetic_task).")
  return task
