"""The command line package: console entry points, the shared error exits, the packaged demo."""

import importlib
import importlib.util
import logging
import os
import subprocess
import sys
import tomllib

import pytest
from absl import flags

from transformer_jax.cli import common, demo_config
from transformer_jax.cli import train as train_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMANDS = ["train", "translate", "tune_decoding", "average_checkpoints", "import_marian", "export"]


def _scripts() -> dict[str, str]:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]["scripts"]


def _run(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)


def test_every_console_script_names_a_callable_main_that_the_root_script_calls_too():
  scripts = _scripts()
  assert sorted(scripts) == sorted("transformer-jax-" + c.replace("_", "-") for c in COMMANDS)
  for script, target in scripts.items():
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr)), script
    command = module_name.rsplit(".", 1)[1]
    assert module_name == f"transformer_jax.cli.{command}" and command in COMMANDS, target
    with open(os.path.join(ROOT, f"{command}.py")) as f:
      root_script = f.read()
    assert f"from transformer_jax.cli import {command}" in root_script
    assert f"{command}.{attr}()" in root_script


def test_importing_the_commands_defines_no_flag():
  # Each command defines its flags when it runs: all of them can be imported in one process
  # (several define --workdir), as the entry point test above does.
  for command in COMMANDS:
    module = importlib.import_module(f"transformer_jax.cli.{command}")
    assert not flags.FLAGS.get_flags_for_module(module.__name__), command


@pytest.mark.parametrize("code", [common.USAGE_ERROR, common.RUNTIME_ERROR])
def test_fail_prints_one_error_line_and_exits_with_the_code(capsys, code):
  with pytest.raises(SystemExit) as exit_info:
    common.fail("--workdir runs/x is a file, not a directory.", code)
  assert exit_info.value.code == code
  out, err = capsys.readouterr()
  assert out == "" and err == "error: --workdir runs/x is a file, not a directory.\n"


def test_exit_on_turns_only_the_listed_errors_into_a_one_line_exit(capsys):
  assert (common.USAGE_ERROR, common.RUNTIME_ERROR) == (2, 1)
  with pytest.raises(SystemExit) as exit_info:
    with common.exit_on(FileNotFoundError, ValueError):
      raise FileNotFoundError("/no/such/file does not exist.")
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "error: /no/such/file does not exist.\n"
  with pytest.raises(SystemExit) as exit_info:
    with common.exit_on(FloatingPointError, code=common.RUNTIME_ERROR):
      raise FloatingPointError("loss is nan at step 9")
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == "error: loss is nan at step 9\n"
  with pytest.raises(KeyError):  # Not listed: a bug, whose traceback is wanted.
    with common.exit_on(ValueError):
      raise KeyError("x")
  with common.exit_on(ValueError):
    result = 42
  assert result == 42 and capsys.readouterr().err == ""


def test_setup_logging_shows_training_progress_and_hides_library_notices():
  names = ["", "absl", "jax"]
  before = [logging.getLogger(n).level for n in names]
  try:
    common.setup_logging()
    assert logging.getLogger("absl").level == logging.ERROR
    assert logging.getLogger("jax").level == logging.WARNING
    common.setup_logging(training=True)
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("absl").level == logging.CRITICAL
  finally:
    for name, level in zip(names, before):
      logging.getLogger(name).setLevel(level)


def test_the_demo_config_is_defined_once_in_the_package():
  spec = importlib.util.spec_from_file_location("default", os.path.join(ROOT, "configs",
                                                                        "default.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.get_config is demo_config.get_config
  assert train_cli.DEMO_CONFIG == os.path.abspath(demo_config.__file__)


def test_the_installed_train_command_runs_the_demo_by_default_outside_the_repository(tmp_path):
  # Away from the checkout (no configs/ in sight): the packaged demo is loaded and validated,
  # and its default workdir, runs/default, is checked (a file here, so nothing trains).
  (tmp_path / "runs").mkdir()
  (tmp_path / "runs" / "default").write_text("not a workdir")
  result = _run("-c", "from transformer_jax.cli import train; train.main()", cwd=tmp_path)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr == ("error: --workdir runs/default is a file, not a directory; choose "
                           "another path.\n")
  result = _run("-c", "from transformer_jax.cli import train; train.main()",
                "--config.optim.warmup_step=3", cwd=tmp_path)
  assert result.returncode == 2 and "(did you mean optim.warmup_steps?)" in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_the_commands_documentation_and_flags_however_it_is_started(command):
  module = importlib.import_module(f"transformer_jax.cli.{command}")
  result = _run("-m", module.__name__, "--help")
  assert module.__doc__.splitlines()[0] in result.stdout, result.stdout + result.stderr
  assert "--workdir" in result.stdout
