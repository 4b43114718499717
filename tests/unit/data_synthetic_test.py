"""The synthetic tasks: deterministic, disjoint splits, short sentences, the number words."""

import numpy as np
import pytest

from transformer_jax.data import synthetic


def test_synthetic_tasks_are_deterministic_disjoint_and_short():
  for task in synthetic.TASKS:
    a = synthetic.synthetic_pairs(task, 300, seed=3)
    assert a == synthetic.synthetic_pairs(task, 300, seed=3)
    assert a != synthetic.synthetic_pairs(task, 300, seed=4)
    assert len(set(a)) == 300
    assert max(len(t.split()) for _, t in a) <= 12
    train, eval_ = synthetic.synthetic_splits(task, 2000, 300, seed=0)
    assert len(train) == 2000 and len(eval_) == 300
    assert not {s for s, _ in train} & {s for s, _ in eval_}
  last = synthetic.synthetic_pairs("dates", 1, 0,
                                   exclude=np.arange(synthetic.task_size("dates") - 1))
  assert last == [("2099-12-31", "thirty first of december two thousand ninety nine")]
  assert synthetic.number_words(115_019) == "one hundred fifteen thousand nineteen"
  assert synthetic.year_words(1905) == "nineteen oh five"
  with pytest.raises(ValueError, match="dates"):
    synthetic.synthetic_pairs("poems", 10, 0)
  with pytest.raises(ValueError, match="73049"):
    synthetic.synthetic_pairs("dates", 10**6, 0)
