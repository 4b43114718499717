"""Training metrics: metrics.jsonl, TensorBoard event files and a PNG of the curves."""

from __future__ import annotations

import json
import logging
import math
import os

from transformer_jax import workdir_layout as layout

log = logging.getLogger(__name__)


class MetricsWriter:
  """Appends one JSON object per logged step to `WORKDIR/metrics.jsonl`, mirrored to TensorBoard.

  Only process 0 writes; other processes get a writer that does nothing.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = layout.path(workdir, layout.METRICS_FILE)
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(layout.path(workdir, layout.TENSORBOARD_DIR))
      except Exception as e:  # TensorBoard is a convenience: never fail training for it.
        log.warning("TensorBoard logging disabled: %s", e)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def truncate_after(self, step: int) -> None:
    """Drops records past `step` (a resumed run rewrites them)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    records = read_metrics(self.path)
    with open(self.path, "w") as f:
      for r in records:
        if r["step"] <= step:
          f.write(json.dumps(r) + "\n")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _jsonable(v):
  try:
    v = float(v)
  except (TypeError, ValueError):
    return v
  return v if math.isfinite(v) else str(v)


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str, png_path: str) -> str | None:
  """Training/eval loss, learning rate and BLEU against step, as one PNG."""
  if not os.path.exists(metrics_path):
    return None
  # matplotlib's Agg canvas without pyplot: no global backend or figure state to touch.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  records = read_metrics(metrics_path)
  series = lambda key: [(r["step"], r[key]) for r in records
                        if isinstance(r.get(key), (int, float))]
  panels = [("loss", ["train_loss", "eval_loss"]), ("learning rate", ["learning_rate"]),
            ("BLEU", ["eval_bleu"])]
  panels = [(t, [k for k in keys if series(k)]) for t, keys in panels]
  panels = [(t, keys) for t, keys in panels if keys]
  if not panels:
    return None
  fig = Figure(figsize=(5 * len(panels), 3.6))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(panels), squeeze=False)
  for ax, (title, keys) in zip(axes[0], panels):
    for key in keys:
      xs, ys = zip(*series(key))
      ax.plot(xs, ys, marker="o" if key.startswith("eval") else None, markersize=3, label=key)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(png_path, dpi=110)
  return png_path
