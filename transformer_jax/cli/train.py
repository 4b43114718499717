"""Train a Transformer: `python train.py [--config configs/NAME.py] [--workdir DIR] [--config.K=V]`.

With no arguments it trains the embedded offline demo (configs/default.py) in runs/default.
Rerunning the same command resumes from the latest checkpoint in the workdir. The config is
validated against `transformer_jax.experiment_config` before anything else happens: a bad key,
type or value prints one line and exits with code 2.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from absl import flags
from ml_collections import config_flags

from transformer_jax import workdir_layout as layout
from transformer_jax.cli import common

# The demo's file inside the package, so that an installed copy has a default without configs/.
DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_config.py")
# The demo's workdir keeps the name it had as configs/default.py: runs/default.
_DEMO_NAME = "default"
FLAGS = flags.FLAGS


def _unknown_key(error: Exception, argv: Sequence[str]) -> NoReturn:
  """One line for a --config.KEY override that names no setting (with a "did you mean")."""
  from transformer_jax import experiment_config
  key = re.split(r"\\n|\n", str(error).strip("\"'"))[0].strip("\\'\"")
  given = [a.split("=", 1)[0][len("--config."):] for a in argv[1:] if a.startswith("--config.")]
  path = next((g for g in given if g.split(".")[-1] == key), key)
  common.fail(f"--config.{path}: config.{path} is not a setting"
              f"{experiment_config.suggest(path)}.")


def _define_flags(argv: Sequence[str] | None) -> None:
  """Defines train's flags (at run time, so that importing this module defines nothing)."""
  try:  # config_flags already loads the file and applies the overrides in argv here.
    config_flags.DEFINE_config_file(
        "config", DEMO_CONFIG, "Experiment config file; override fields with --config.KEY=VALUE.",
        lock_config=True, sys_argv=None if argv is None else list(argv))
  except (AttributeError, KeyError) as e:
    _unknown_key(e, sys.argv if argv is None else argv)
  except Exception as e:  # pylint: disable=broad-except  # An unreadable config file.
    common.fail(f"--config: cannot load the config file: {type(e).__name__}: {e}")
  flags.DEFINE_string("workdir", None, "Checkpoints, tokenizer, metrics and plots go here "
                      "(default: runs/<config name>).")
  flags.DEFINE_string("coordinator_address", None,
                      "HOST:PORT of process 0, for multi-process runs.")
  flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
  flags.DEFINE_string("compile_for", None, "Compile the training step and beam search for this "
                      "TPU slice (v5e-8, v4-8, v5p-8, v6e-8, v5e-32, 2xv5e-8 for two slices) "
                      "from this host, print per-chip HBM fit, estimated step time, tokens/s, "
                      "MFU and collectives, and exit without training (needs the tpu extra).")
  flags.DEFINE_integer("tokens_per_chip", None, "With --compile_for: source + target tokens "
                       "per chip per step (default: the config's batch over the chips).")
  flags.DEFINE_bool("measure_input", False, "With --compile_for: also time this host's input "
                    "pipeline (the config's corpus, tokenized into --workdir as training would, "
                    "data.num_workers as on a TPU host) at one host's batch shape for "
                    "--measure_seconds, and say whether it keeps up with the estimated step.")
  flags.DEFINE_float("measure_seconds", 10.0, "With --measure_input: seconds to time.")
  flags.DEFINE_bool("allow_corpus_change", False, "Resume a workdir on another corpus than it "
                    "was trained on: fine-tune its weights (with its tokenizer) on the new data.")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with one line (exit 2) for a bad --config override."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _unknown_key(e, argv)
  except config_flags.config_flags.FlagOrderError as e:
    common.fail(f"{e}: put --config=FILE before the --config.KEY=VALUE overrides.")
  except flags.Error as e:
    common.fail(str(e).splitlines()[0].removeprefix("flag "))
  except Exception as e:  # pylint: disable=broad-except  # Raised by the config file itself.
    common.fail(f"--config: cannot load the config file: {type(e).__name__}: {e}")


def _experiment_config():
  """The validated `ExperimentConfig` of --config and its overrides (exit 2 on a bad one)."""
  from transformer_jax import experiment_config
  try:
    values = FLAGS.config.to_dict()
  except Exception as e:  # pylint: disable=broad-except  # config_flags defers load errors.
    cause = e.__cause__ or e
    detail = [line.strip() for line in str(cause).splitlines() if line.strip()]
    common.fail(f"--config: cannot load the config file: {detail[-1] if detail else cause!r}")
  with common.exit_on(experiment_config.ConfigError):
    return experiment_config.from_config_dict(values)


def _workdir() -> str:
  """--workdir, by default runs/<config name>; exit 2 if it names a file."""
  config_file = config_flags.get_config_filename(FLAGS["config"]) or DEMO_CONFIG
  config_name = (_DEMO_NAME if config_file == DEMO_CONFIG
                 else os.path.splitext(os.path.basename(config_file))[0])
  workdir = FLAGS.workdir or os.path.join("runs", config_name)
  with common.exit_on(ValueError):
    layout.check_local(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    common.fail(f"--workdir {workdir} is a file, not a directory; choose another path.")
  return workdir


def _train(config, workdir: str) -> dict:
  """Runs `train_lib.train_and_evaluate`: exit 2 if it refuses the workdir, 1 if it fails."""
  from transformer_jax import checkpoint, jit_cache, train_lib
  from transformer_jax import workdir as workdir_lib
  from transformer_jax.data.workers import DataWorkerError
  jit_cache.enable()  # A restart loads its compiled steps instead of compiling them again.
  try:
    return train_lib.train_and_evaluate(config, workdir,
                                        allow_corpus_change=FLAGS.allow_corpus_change)
  except (workdir_lib.WorkdirBusyError, workdir_lib.CorpusChangedError) as e:
    common.fail(str(e))
  except (ValueError, FileNotFoundError, train_lib.NonFiniteLossError,
          checkpoint.CheckpointSaveError, DataWorkerError) as e:
    common.fail(str(e), common.RUNTIME_ERROR)


def _compile_report(config) -> None:
  """--compile_for: the training step at the asked size and at half of it (for the largest
  size that fits), and beam search, compiled for the TPU slice; the report on stdout."""
  from transformer_jax import aot
  with common.exit_on(ValueError, RuntimeError):
    report = aot.compile_train(config, FLAGS.compile_for, tokens_per_chip=FLAGS.tokens_per_chip)
    half = aot.compile_train(config, FLAGS.compile_for,
                             tokens_per_chip=report.tokens_per_chip // 2)
    beam = aot.compile_beam(config, FLAGS.compile_for)
  print(aot.train_table([report, half]))
  if half.tokens_per_chip != report.tokens_per_chip:
    print(f"Largest tokens per chip that fits (HBM linear in tokens through the two rows): "
          f"{aot.largest_fitting_tokens(half, report):,}")
  else:  # One row per device: half the size rounds to the same batch.
    print("Largest tokens per chip that fits: not estimated (the half size rounds to the same "
          "rows per device; ask for more --tokens_per_chip).")
  print(aot.advice(report))
  print(f"Beam search, batch {beam.batch} x beam {beam.beam_size}, {beam.source_length} source "
        f"tokens, {beam.new_tokens} new: {beam.seconds:.3f} s, "
        f"{beam.tokens_per_second:,.0f} generated tokens/s on one chip "
        f"({beam.total_gib:.2f} of {beam.capacity_gib:.0f} GiB).")
  print("Optimistic estimates: the TPU compiler's (exec_time_optimization_effort -1), corrected "
        "for loops counted once, the attention kernel priced at its declared roofline (its "
        "share and a vector-unit bound in the table); see docs/tpu.md.")
  demand = aot.input_demand(report, config.data.seq_len)
  print(demand.describe())
  if FLAGS.measure_input:
    _measure_input(config, demand)


def _measure_input(config, demand) -> None:
  """--measure_input: this host's pipeline at one host's batch shape, against `demand`."""
  import dataclasses
  from transformer_jax import data as data_lib
  from transformer_jax.data import throughput
  workdir = _workdir()
  common.setup_logging(training=True)
  workers = config.data.workers_for("tpu")
  data = dataclasses.replace(config.data, batch_size=demand.rows_per_host)
  with common.exit_on(ValueError, FileNotFoundError, data_lib.DataWorkerError):
    bundle = data_lib.create_datasets(data, workdir, seed=config.seed, num_workers=workers)
    try:
      timing = throughput.measure(bundle.train_iter, FLAGS.measure_seconds)
    finally:
      bundle.close()
  print(demand.verdict(timing, workers))


def _check_compile_flags(config) -> None:
  """Exit 2 on --compile_for / --tokens_per_chip / --measure_input values that cannot work."""
  compile_only = ("--tokens_per_chip", FLAGS.tokens_per_chip is not None), (
      "--measure_input", FLAGS.measure_input)
  if FLAGS.compile_for is None:
    for flag, given in compile_only:
      if given:
        common.fail(f"{flag} applies only with --compile_for SLICE (e.g. --compile_for v5e-8); "
                    "without it train.py trains.")
    return
  if not FLAGS.compile_for.strip():
    common.fail("--compile_for is empty: give a TPU slice as Cloud names it, e.g. v5e-8, v4-8, "
                "v5p-8, v6e-8 or 2xv5e-8.")
  minimum = 4 * config.data.seq_len  # Two rows of a device at the asked size, one at half.
  if FLAGS.tokens_per_chip is not None and FLAGS.tokens_per_chip < minimum:
    common.fail(f"--tokens_per_chip {FLAGS.tokens_per_chip}: give at least {minimum} (two rows "
                f"of data.seq_len={config.data.seq_len} source + target tokens, so that the half "
                "size the report also compiles holds a row).")
  if FLAGS.measure_seconds <= 0:
    common.fail(f"--measure_seconds {FLAGS.measure_seconds}: give a positive time.")


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    common.fail(f"unexpected arguments {argv[1:]}; settings go as --config.KEY=VALUE.")
  config = _experiment_config()
  _check_compile_flags(config)
  if FLAGS.compile_for is not None:
    _compile_report(config)
    return
  workdir = _workdir()
  common.setup_logging(training=True)
  from transformer_jax import distributed
  with common.exit_on(ValueError):  # Incomplete or inconsistent multi-process settings.
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  final = _train(config, workdir)
  summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())
                      if isinstance(v, float) and k.startswith(("train_loss", "eval_")))
  print(f"Finished at step {final['step']} in {os.path.abspath(workdir)}: {summary}")
  for line in final.get("samples", []):
    print(line)


def main(argv: Sequence[str] | None = None) -> None:
  """The `transformer-jax-train` command; `argv` defaults to `sys.argv`."""
  _define_flags(argv)
  common.run(_main, sys.modules[__name__], argv, flags_parser=_parse_flags)


if __name__ == "__main__":
  main()
