"""Train a Transformer: `python train.py [--config configs/NAME.py] [--workdir DIR] [--config.K=V]`.

With no arguments it trains the embedded offline demo (configs/default.py) in runs/default.
Rerunning the same command resumes from the latest checkpoint in the workdir. The config is
validated against `transformer_jax.experiment_config` before anything else happens: a bad key,
type or value prints one line and exits with code 2.
"""

import logging
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_CONFIG = os.path.join(_HERE, "configs", "default.py")


def _usage_error(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _unknown_key(error: Exception, argv: list[str]):
  """One line for a --config.KEY override that names no setting (with a "did you mean")."""
  from transformer_jax import experiment_config
  key = re.split(r"\\n|\n", str(error).strip("\"'"))[0].strip("\\'\"")
  given = [a.split("=", 1)[0][len("--config."):] for a in argv[1:] if a.startswith("--config.")]
  path = next((g for g in given if g.split(".")[-1] == key), key)
  _usage_error(f"--config.{path}: config.{path} is not a setting"
               f"{experiment_config.suggest(path)}.")


try:  # config_flags already loads the file and applies the overrides in sys.argv here.
  config_flags.DEFINE_config_file(
      "config", _DEFAULT_CONFIG,
      "Experiment config file; override fields with --config.KEY=VALUE.", lock_config=True)
except (AttributeError, KeyError) as e:
  _unknown_key(e, sys.argv)
except Exception as e:  # pylint: disable=broad-except  # An unreadable config file.
  _usage_error(f"--config: cannot load the config file: {type(e).__name__}: {e}")
flags.DEFINE_string("workdir", None, "Checkpoints, tokenizer, metrics and plots go here "
                    "(default: runs/<config name>).")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.DEFINE_bool("allow_corpus_change", False, "Resume a workdir on another corpus than it was "
                  "trained on: fine-tune its weights (with its tokenizer) on the new data.")
FLAGS = flags.FLAGS


def _initialize_distributed():
  """jax.distributed from the flags, or auto-detected on Cloud TPU / SLURM clusters."""
  import jax
  explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
  if any(v is not None for v in explicit):
    if not all(v is not None for v in explicit):
      _usage_error("--coordinator_address, --num_processes and --process_id go together.")
    if not 0 <= FLAGS.process_id < FLAGS.num_processes:
      _usage_error(f"--process_id={FLAGS.process_id} is outside "
                   f"[0, --num_processes={FLAGS.num_processes}).")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif (os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1):
    jax.distributed.initialize()  # Cluster auto-detection.


def _experiment_config():
  """The validated `ExperimentConfig` of --config and its overrides (exit 2 on a bad one)."""
  from transformer_jax import experiment_config
  try:
    values = FLAGS.config.to_dict()
  except Exception as e:  # pylint: disable=broad-except  # config_flags defers load errors.
    cause = e.__cause__ or e
    detail = [line.strip() for line in str(cause).splitlines() if line.strip()]
    _usage_error(f"--config: cannot load the config file: {detail[-1] if detail else cause!r}")
  try:
    return experiment_config.from_config_dict(values)
  except experiment_config.ConfigError as e:
    _usage_error(str(e))


def main(argv):
  if len(argv) > 1:
    _usage_error(f"unexpected arguments {argv[1:]}; settings go as --config.KEY=VALUE.")
  config = _experiment_config()
  config_file = config_flags.get_config_filename(FLAGS["config"]) or _DEFAULT_CONFIG
  config_name = os.path.splitext(os.path.basename(config_file))[0]
  workdir = FLAGS.workdir or os.path.join("runs", config_name)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    _usage_error(f"--workdir {workdir} is a file, not a directory; choose another path.")
  logging.getLogger().setLevel(logging.INFO)
  # Orbax logs through absl: its per-save chatter, and tracebacks of failed saves that surface
  # here as one CheckpointSaveError line.
  logging.getLogger("absl").setLevel(logging.CRITICAL)
  _initialize_distributed()
  from transformer_jax import checkpoint, jit_cache, train_lib
  jit_cache.enable()  # A restart loads its compiled steps instead of compiling them again.
  from transformer_jax import workdir as workdir_lib

  try:
    final = train_lib.train_and_evaluate(config, workdir,
                                         allow_corpus_change=FLAGS.allow_corpus_change)
  except (workdir_lib.WorkdirBusyError, workdir_lib.CorpusChangedError) as e:
    _usage_error(str(e))
  except (ValueError, FileNotFoundError, train_lib.NonFiniteLossError,
          checkpoint.CheckpointSaveError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())
                      if isinstance(v, float) and k.startswith(("train_loss", "eval_")))
  print(f"Finished at step {final['step']} in {os.path.abspath(workdir)}: {summary}")
  for line in final.get("samples", []):
    print(line)


def _parse_flags(argv):
  """absl flag parsing, with one line (exit 2) for a bad --config override."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _unknown_key(e, argv)
  except config_flags.config_flags.FlagOrderError as e:
    _usage_error(f"{e}: put --config=FILE before the --config.KEY=VALUE overrides.")
  except flags.Error as e:
    _usage_error(str(e).splitlines()[0].removeprefix("flag "))
  except Exception as e:  # pylint: disable=broad-except  # Raised by the config file itself.
    _usage_error(f"--config: cannot load the config file: {type(e).__name__}: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
