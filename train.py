"""Train a Transformer: `python train.py [--config configs/NAME.py] [--workdir DIR] [--config.KEY=V]`.

With no arguments it trains the embedded offline demo (configs/default.py) in runs/default.
Rerunning the same command resumes from the latest checkpoint in the workdir.
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))



def _unknown_key(error, argv):
  """A one-line error (exit 2) for a --config.KEY override naming no field of the config."""
  key = str(error).strip("\"'")
  given = [a for a in argv[1:] if a.startswith("--config.") and key in a]
  print(f"error: {given[0] if given else key}: the config has no key {key!r}. Check the "
        "spelling against the config file (every field is listed there with a comment).",
        file=sys.stderr)
  sys.exit(2)


try:  # config_flags already applies the overrides in sys.argv here.
  config_flags.DEFINE_config_file(
      "config", os.path.join(_HERE, "configs", "default.py"),
      "Experiment config file; override fields with --config.KEY=VALUE.", lock_config=True)
except (AttributeError, KeyError) as e:
  _unknown_key(e, sys.argv)
flags.DEFINE_string("workdir", None, "Checkpoints, tokenizer, metrics and plots go here "
                    "(default: runs/<config name>).")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
FLAGS = flags.FLAGS


def _initialize_distributed():
  """jax.distributed from the flags, or auto-detected on Cloud TPU / SLURM clusters."""
  import jax
  explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
  if any(v is not None for v in explicit):
    if not all(v is not None for v in explicit):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go together.")
    if not 0 <= FLAGS.process_id < FLAGS.num_processes:
      raise app.UsageError(f"--process_id={FLAGS.process_id} is outside "
                           f"[0, --num_processes={FLAGS.num_processes}).")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif (os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1):
    jax.distributed.initialize()  # Cluster auto-detection.


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]} (use --config.KEY=VALUE).")
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter.
  _initialize_distributed()
  from transformer_jax import train_lib

  config = FLAGS.config
  config_name = os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
  workdir = FLAGS.workdir or os.path.join("runs", config_name)
  try:
    final = train_lib.train_and_evaluate(config, workdir)
  except (ValueError, FileNotFoundError, train_lib.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())
                      if isinstance(v, float) and k.startswith(("train_loss", "eval_")))
  print(f"Finished at step {final['step']} in {os.path.abspath(workdir)}: {summary}")
  for line in final.get("samples", []):
    print(line)


def _parse_flags(argv):
  """absl flag parsing, with a one-line error for a config key that does not exist."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _unknown_key(e, argv)
  except config_flags.config_flags.FlagOrderError as e:
    print(f"error: {e}: put --config=FILE before the --config.KEY=VALUE overrides.",
          file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
