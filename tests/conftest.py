"""Test setup: 8 fake CPU devices so that multi-device paths run on a laptop.

tests/unit/ holds behaviour tests of the package's modules, in-process and quick;
tests/integration/ runs the commands (subprocesses, several processes, the recipe, the
benchmarks' smoke runs). Every test under tests/integration/ is marked `integration`, and unit
tests that compile several programs are marked `slow`, so the quick loop is
`python -m pytest -q -m "not integration and not slow"`.
"""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole session, shared with the train.py / translate.py
# subprocesses the tests start: the same tiny programs are compiled once, not once per process.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  import tempfile  # noqa: E402
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="transformer_jax_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

# Stored decoding programs (translate.py's executable cache) go to a temporary directory too.
_OWN_EXECUTABLES = "TRANSFORMER_JAX_EXECUTABLE_CACHE" not in os.environ
if _OWN_EXECUTABLES:
  import tempfile  # noqa: E402
  os.environ["TRANSFORMER_JAX_EXECUTABLE_CACHE"] = tempfile.mkdtemp(
      prefix="transformer_jax_executables_")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_MULTI30K = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"


@pytest.fixture(scope="session")
def multi30k_dir():
  """The shared Multi30k corpus; tests that need it skip when it is absent."""
  path = pathlib.Path(os.environ.get("MULTI30K_DIR", SHARED_MULTI30K))
  if not (path / "train.en.gz").exists():
    pytest.skip(f"Multi30k not found at {path} (set MULTI30K_DIR)")
  return path


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if "integration" in item.path.parts:
      item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  import shutil
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  if _OWN_EXECUTABLES:
    shutil.rmtree(os.environ["TRANSFORMER_JAX_EXECUTABLE_CACHE"], ignore_errors=True)
