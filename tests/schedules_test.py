"""Learning-rate schedules: the paper's, rsqrt and cosine, in paper step numbering."""

import numpy as np
import pytest

from transformer_jax import schedules


def test_paper_schedule_values():
  f = schedules.paper_schedule(d_model=512, warmup_steps=4000)
  assert float(f(0)) == 0.0
  np.testing.assert_allclose(f(1), 512**-0.5 * 4000**-1.5, rtol=1e-6)
  peak = 512**-0.5 * 4000**-0.5
  np.testing.assert_allclose(f(4000), peak, rtol=1e-6)  # End of warmup: the maximum.
  np.testing.assert_allclose(f(8000), peak / np.sqrt(2), rtol=1e-6)  # Inverse square root decay.
  assert f(2000) < f(4000) > f(4001)


def test_rsqrt_and_cosine_schedule_values():
  f = schedules.rsqrt_schedule(peak=1e-3, warmup_steps=100)
  np.testing.assert_allclose([f(0), f(1), f(50), f(100), f(400)],
                             [0.0, 1e-5, 5e-4, 1e-3, 5e-4], rtol=1e-6)
  g = schedules.cosine_schedule(peak=1e-3, warmup_steps=100, total_steps=1100)
  np.testing.assert_allclose([g(0), g(50), g(100), g(600), g(1100)],
                             [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
  assert float(schedules.optimizer_schedule(f)(0)) == pytest.approx(1e-5)  # Update 1 = step 1.
  with pytest.raises(ValueError, match="schedule"):
    schedules.create_schedule("linear", d_model=8, warmup_steps=1, peak_learning_rate=1.0,
                              total_steps=10)
