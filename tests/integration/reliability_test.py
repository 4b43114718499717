"""The commands' promises on bad input: outputs never overwrite inputs, readers never write, every
flag is checked before work starts, long input is bounded; one line, nothing changed."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")

# Imported before the command by a sitecustomize on PYTHONPATH: any write under READ_ONLY_ROOT
# fails as on a read-only mount (EROFS), which a root test process cannot otherwise make.
_READ_ONLY = '''
import errno, os, sys
_root = os.environ.get("READ_ONLY_ROOT")
_WRITES = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.unlink",
           "os.truncate", "shutil.move", "shutil.rmtree", "os.utime", "os.chmod"}
def _hook(event, args):
  if not _root or not args:
    return
  path = args[0]
  if event == "open":
    mode, flags = args[1], args[2]
    writing = (mode and any(c in str(mode) for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    if not writing:
      return
  elif event not in _WRITES:
    return
  if isinstance(path, (str, bytes, os.PathLike)):
    target = os.path.realpath(os.fsdecode(path))
    if target == _root or target.startswith(_root + os.sep):
      raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
if _root:
  sys.addaudithook(_hook)
'''


def _run(*args, stdin=None, env=None):
  full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **(env or {})}
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, input=stdin,
                        capture_output=True, text=True, timeout=300)


def _snapshot(root):
  """Every path under `root` with its size and modification time."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      st = os.lstat(path)
      out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
  return out


def _one_line_error(result, code=2):
  assert result.returncode == code, (result.returncode, result.stderr[-2000:])
  lines = [l for l in result.stderr.strip().splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  return lines[0]


@pytest.fixture
def dev(tmp_path):
  src, ref = tmp_path / "dev.src", tmp_path / "dev.ref"
  src.write_text("2019-03-04\n1999-12-31\n")
  ref.write_text("fourth of march\nthirty first of december\n")
  return src, ref


@pytest.mark.parametrize("command, flags", [
    ("translate.py", ["--output={src}"]),
    ("translate.py", ["--output={ref}", "--reference={ref}"]),
    ("translate.py", ["--attention_plot={src}"]),
    ("translate.py", ["--output={workdir}/tokenizer.model"]),
    ("translate.py", ["--output={out}", "--attention_plot={out}"]),
    ("tune_decoding.py", ["--output_json={src}", "--reference={ref}"]),
    ("tune_decoding.py", ["--output_json={ref}", "--reference={ref}"]),
    ("tune_decoding.py", ["--output_json={workdir}/metrics.jsonl", "--reference={ref}"]),
])
def test_an_output_never_overwrites_an_input(workdir, dev, tmp_path, command, flags):
  src, ref = dev
  before = {p: p.read_bytes() for p in (src, ref)}
  workdir_before = _snapshot(workdir)
  values = dict(src=src, ref=ref, workdir=workdir, out=tmp_path / "out.txt")
  result = _run(command, f"--workdir={workdir}", f"--input={src}",
                *[f.format(**values) for f in flags])
  line = _one_line_error(result)
  assert "would destroy the input" in line or "would overwrite the workdir's" in line or \
      "name the same file" in line, line
  assert {p: p.read_bytes() for p in (src, ref)} == before
  assert _snapshot(workdir) == workdir_before


def test_readers_change_nothing_and_read_a_read_only_workdir(workdir, dev, tmp_path):
  src, ref = dev
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  hook_dir = tmp_path / "hook"
  hook_dir.mkdir()
  (hook_dir / "sitecustomize.py").write_text(_READ_ONLY)
  env = {"READ_ONLY_ROOT": os.path.realpath(copy), "PYTHONPATH": f"{hook_dir}:{ROOT}"}
  before = _snapshot(copy)
  result = _run("translate.py", f"--workdir={copy}", f"--input={src}", "--beam_size=2", env=env)
  assert result.returncode == 0 and len(result.stdout.splitlines()) == 2, result.stderr[-2000:]
  result = _run("tune_decoding.py", f"--workdir={copy}", f"--input={src}",
                f"--reference={ref}", "--checkpoints=latest,average:2", "--beam_sizes=2",
                "--alphas=1.0", f"--output_json={tmp_path / 'tuning.json'}", env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert _snapshot(copy) == before
  # The hook does refuse writes there: a command that must write says so in one line.
  result = _run("tune_decoding.py", f"--workdir={copy}", f"--input={src}",
                f"--reference={ref}", "--beam_sizes=2", "--alphas=1.0", env=env)
  assert result.returncode != 0 and _snapshot(copy) == before


def test_a_corrupt_asked_checkpoint_names_the_readable_ones_and_moves_nothing(workdir, dev,
                                                                                tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  steps = sorted(int(d) for d in os.listdir(copy / "checkpoints") if d.isdigit())
  newest = copy / "checkpoints" / str(steps[-1])
  arrays = [p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 1000]
  big = max(arrays, key=lambda p: p.stat().st_size)
  big.write_bytes(big.read_bytes()[:100])
  before = _snapshot(copy)
  result = _run("translate.py", f"--workdir={copy}", f"--input={dev[0]}",
                f"--checkpoint={steps[-1]}")
  line = _one_line_error(result)
  assert f"Checkpoint {steps[-1]} of" in line and f"the other checkpoints are {steps[:-1]}" in line
  result = _run("translate.py", f"--workdir={copy}", f"--input={dev[0]}")  # latest: falls back.
  assert result.returncode == 0 and "unreadable" in result.stderr, result.stderr[-2000:]
  assert _snapshot(copy) == before


@pytest.mark.parametrize("flags, message", [
    (["--alpha=-1"], "--alpha -1.0: give a finite length penalty >= 0"),
    (["--engine=ctranslate2"], "--engine ctranslate2 reads --model DIR"),
    (["--alpha=nan"], "--alpha nan: give a finite length penalty >= 0"),
])
def test_translate_flags_are_checked_first(workdir, dev, flags, message):
  result = _run("translate.py", f"--workdir={workdir}", f"--input={dev[0]}", *flags)
  assert message in _one_line_error(result)


@pytest.mark.parametrize("flags, message", [
    (["--compile_for="], "--compile_for is empty"),
    (["--tokens_per_chip=4096"], "--tokens_per_chip applies only with --compile_for"),
    (["--measure_input"], "--measure_input applies only with --compile_for"),
    (["--compile_for=v5e-8", "--tokens_per_chip=0"], "--tokens_per_chip 0: give at least"),
    (["--config.data.batch_size=12"],
     "config.data.batch_size=12 is not a multiple of the 8 devices of the mesh"),
    (["--config.model.attention_impl=cudnn"],
     "config.model.attention_impl='cudnn' needs an NVIDIA GPU"),
    (["--config.data.num_workers=-3"], "config.data.num_workers=-3: must be in [0, 256]"),
])
def test_train_flags_are_checked_before_anything_is_written(tmp_path, flags, message):
  workdir = tmp_path / "run"
  result = _run("train.py", f"--config={TINY}", f"--workdir={workdir}", *flags,
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert result.returncode in (1, 2)
  assert message in _one_line_error(result, result.returncode)
  assert not workdir.exists()


def test_a_new_workdir_whose_setup_fails_is_removed(tmp_path):
  workdir = tmp_path / "run"
  result = _run("train.py", f"--config={TINY}", f"--workdir={workdir}",
                "--config.data.dataset=", f"--config.data.data_dir={tmp_path / 'no_corpus'}",
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert "no_corpus" in _one_line_error(result, result.returncode)
  assert not workdir.exists()


def test_a_runaway_line_is_bounded_and_the_rest_translates(workdir, tmp_path):
  src = tmp_path / "src.txt"
  src.write_text("2019-03-04\n" + "1" * 100_000 + "\n1999-12-31\n")
  result = _run("translate.py", f"--workdir={workdir}", f"--input={src}", "--beam_size=1")
  assert result.returncode == 0, result.stderr[-2000:]
  assert len(result.stdout.split("\n")) == 4  # Three lines and the final newline.
  assert "1 input line(s) exceed the model's max_len" in result.stderr
  assert "line 2:" in result.stderr


def test_the_read_only_hook_is_what_it_claims(tmp_path):
  """The simulated read-only mount refuses writes there and only there."""
  hook_dir = tmp_path / "hook"
  hook_dir.mkdir()
  (hook_dir / "sitecustomize.py").write_text(_READ_ONLY)
  root = tmp_path / "ro"
  root.mkdir()
  (root / "a.txt").write_text("x")
  code = textwrap.dedent(f"""
      import os
      print(open({str(root / 'a.txt')!r}).read())
      for act in (lambda: open({str(root / 'b.txt')!r}, 'w'), lambda: os.mkdir({str(root / 'd')!r}),
                  lambda: os.remove({str(root / 'a.txt')!r})):
        try:
          act(); print('wrote')
        except OSError as e:
          print(e.errno)
      open({str(tmp_path / 'elsewhere.txt')!r}, 'w').write('ok'); print('ok')
      """)
  result = _run("-c", code, env={"READ_ONLY_ROOT": os.path.realpath(root),
                                 "PYTHONPATH": str(hook_dir)})
  assert result.stdout.split() == ["x", "30", "30", "30", "ok"], result.stderr


def test_no_tpu_start_up_noise_on_a_machine_without_a_tpu(workdir, dev):
  """libtpu (installed by the test extra) prints alarming lines when JAX probes a missing TPU."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env["XLA_FLAGS"] = ""
  result = subprocess.run([sys.executable, "translate.py", f"--workdir={workdir}",
                           f"--input={dev[0]}", "--beam_size=1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  for noise in ("TPU_WORKER_HOSTNAMES", "Failed to find host bounds", "Source Location Trace"):
    assert noise not in result.stderr, result.stderr[-2000:]
