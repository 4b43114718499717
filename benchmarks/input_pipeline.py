"""What an accelerator would wait for: the training input pipeline at WMT scale, beside what
each TPU slice and GPU consumes.

  python -m benchmarks.input_pipeline [--pairs 1000000,4500000] [--workers 0,1,2]
      [--shapes 192x128,1024x64,2048x128] [--seconds 8] [--work DIR] [--out results.json]

1. Writes a synthetic parallel corpus with WMT14-like lengths (once per size, in --work):
   source sentences of round(lognormal(ln 26 - 0.18, 0.6)) words (mean ~26, clipped to
   [1, 250]), targets of round(source x lognormal(0, 0.15)) words, words drawn Zipf-like
   (p ~ 1 / (rank + 10)) from 1,000 per language, so that each word is one BPE piece of the
   tokenizer (37,000 pieces requested, WMT14's) trained on a sample of up to 100k pairs. Files
   train.en / train.de, read by the loading code
   training uses (`data.bundle.load_split`, `tokenize_split`, `filter_pairs`).
2. Tokenizes it (timed on the first run: pairs/s).
3. For each corpus size, batch shape (rows x seq_len, one host's batch) and worker count, in a
   fresh process: `make_train_iterator` batches for --seconds after the first; real tokens/s
   (source + target tokens of the pairs), slots/s (rows x seq_len x 2: what a step consumes,
   padding included), density, peak RSS (VmHWM) and private memory (RssAnon) of the main
   process and of each worker.
4. Prints what each slice / GPU consumes per host in slots/s (quoted from docs/tpu.md, compiler
   estimates, and docs/performance.md, an H200 measurement) and how many workers it needs at
   this machine's per-core speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import harness

WORDS_PER_LANGUAGE = 1000
VOCAB_SIZE = 37000  # WMT14 en-de's shared vocabulary, as configs/wmt14_*.py use.
MAX_WORDS = 250

# What one host's chips consume, in slots/s (rows x seq_len x 2 per step / step seconds): the
# step-only figures this project publishes, quoted with their source. TPU figures are the TPU
# compiler's estimates for Transformer-base (big where named) at 64k tokens per chip, rows of
# 128 (docs/tpu.md, "With the attention kernel"); `train.py --compile_for SLICE` derives them
# anew. The H200 figure is measured (docs/performance.md, `python -m benchmarks.accelerator`).
DEMAND = (
    # (name, the slice (None: one GPU), slots/s per chip, source); a slice's host batch is its
    # chips per host (transformer_jax.topology) x TOKENS_PER_CHIP in rows of TPU_SEQ_LEN.
    ("H200, base", None, 1_314_626, "docs/performance.md, measured 2026-12-04"),
    ("v5e-8, base", "v5e-8", 549_246, "docs/tpu.md, compiler estimate"),
    ("v5p-8, base", "v5p-8", 1_380_727, "docs/tpu.md, compiler estimate"),
    ("v6e-8, base", "v6e-8", 1_281_868, "docs/tpu.md, compiler estimate"),
    ("v5p-8, big", "v5p-8", 497_163, "docs/tpu.md, compiler estimate"),
    ("v6e-8, big", "v6e-8", 737_243, "docs/tpu.md, compiler estimate"),
)
TOKENS_PER_CHIP, TPU_SEQ_LEN = 65_536, 128  # docs/tpu.md's figures: 64k tokens/chip, rows of 128.
GPU_SHAPE = "1024x64"  # The accelerator check's batch (benchmarks/accelerator_checks.py).


def _host(slice_name: str | None) -> tuple[str, int]:
  """(host batch shape, chips per host) of a DEMAND row."""
  if slice_name is None:
    return GPU_SHAPE, 1
  from transformer_jax import topology  # pylint: disable=g-import-not-at-top
  chips = topology.parse(slice_name).chips_per_host
  return f"{chips * TOKENS_PER_CHIP // (2 * TPU_SEQ_LEN)}x{TPU_SEQ_LEN}", chips


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--pairs", default="1000000,4500000", help="Corpus sizes (comma-separated).")
  p.add_argument("--workers", default="0,1,2", help="Worker counts to time.")
  p.add_argument("--shapes", default="192x128,1024x64,2048x128",
                 help="Host batch shapes ROWSxSEQ_LEN (192x128: configs/wmt14_base.py).")
  p.add_argument("--seconds", type=float, default=8.0, help="Timed seconds per measurement.")
  p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "transformer_jax_input"),
                 help="Corpora, tokenizer and token caches (kept between runs).")
  p.add_argument("--out", default="", help="Also write the results here as JSON.")
  p.add_argument("--measure", default="", help=argparse.SUPPRESS)  # One measurement (internal).
  return p.parse_args(argv)


# ----------------------------------------------------------------------------- the corpus


def _vocabulary(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """1,000 distinct lowercase words, each followed by a space: (bytes, offsets)."""
  words: set[str] = set()
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  while len(words) < WORDS_PER_LANGUAGE:
    words.add("".join(rng.choice(letters, rng.integers(3, 10))))
  encoded = [w.encode() + b" " for w in sorted(words)]
  offsets = np.r_[0, np.cumsum([len(w) for w in encoded])]
  return np.frombuffer(b"".join(encoded), np.uint8), offsets


def _lines(word_ids: np.ndarray, counts: np.ndarray, vocab: tuple[np.ndarray, np.ndarray]) -> bytes:
  """Sentences of `counts` words each (ids flat) as newline-terminated text."""
  buf, offsets = vocab
  lengths = np.diff(offsets)[word_ids]
  ends = np.cumsum(lengths)
  index = np.repeat(offsets[word_ids] - (ends - lengths), lengths) + np.arange(ends[-1])
  text = buf[index]
  text[ends[np.cumsum(counts) - 1] - 1] = ord("\n")  # Each sentence's last space.
  return text.tobytes()


def write_corpus(directory: str, pairs: int, seed: int = 0) -> None:
  """train.{en,de} with `pairs` WMT-like pairs and val.{en,de} with 1,000 (module docstring)."""
  words = np.random.default_rng(0)  # The same words for every corpus and the tokenizer sample.
  vocab = {"en": _vocabulary(words), "de": _vocabulary(words)}
  rng = np.random.default_rng(seed)
  zipf = 1.0 / (np.arange(WORDS_PER_LANGUAGE) + 10.0)
  zipf /= zipf.sum()
  os.makedirs(directory, exist_ok=True)
  for split, n in (("train", pairs), ("val", 1000)):
    files = {lang: open(os.path.join(directory, f"{split}.{lang}.tmp"), "wb") for lang in vocab}
    for start in range(0, n, 100_000):
      m = min(100_000, n - start)
      src = np.clip(np.round(rng.lognormal(math.log(26) - 0.18, 0.6, m)), 1, MAX_WORDS)
      tgt = np.clip(np.round(src * rng.lognormal(0.0, 0.15, m)), 1, MAX_WORDS)
      for lang, counts in (("en", src.astype(np.int64)), ("de", tgt.astype(np.int64))):
        ids = rng.choice(WORDS_PER_LANGUAGE, int(counts.sum()), p=zipf)
        files[lang].write(_lines(ids, counts, vocab[lang]))
    for lang, f in files.items():
      f.close()
      os.replace(f.name, os.path.join(directory, f"{split}.{lang}"))


def prepare(work: str, pairs: int) -> dict:
  """The corpus, tokenizer and token cache for `pairs` (made once); tokenizing pairs/s."""
  from transformer_jax.data import Tokenizer, bundle, tokenize_split  # pylint: disable=g-import-not-at-top
  from transformer_jax.experiment_config import DataConfig  # pylint: disable=g-import-not-at-top
  corpus = os.path.join(work, f"corpus-{pairs}")
  if not os.path.exists(os.path.join(corpus, "val.de")):
    t = time.perf_counter()
    write_corpus(corpus, pairs)
    print(f"wrote {corpus} ({pairs:,} pairs) in {time.perf_counter() - t:.0f} s", flush=True)
  tok_path = os.path.join(work, "tokenizer.model")
  if not os.path.exists(tok_path):  # One tokenizer for every size, so lengths compare.
    sample = os.path.join(work, "tokenizer-sample")
    write_corpus(sample, min(100_000, pairs), seed=1)
    texts = [line for lang in ("en", "de")
             for line in open(os.path.join(sample, f"train.{lang}"), encoding="utf-8")]
    Tokenizer.train(texts, VOCAB_SIZE, tok_path)
  tok = Tokenizer.load(tok_path)
  config = DataConfig(dataset="", data_dir=corpus, eval_split="val", vocab_size=VOCAB_SIZE)
  t = time.perf_counter()
  split = bundle.load_split(config, "train")
  read_seconds = time.perf_counter() - t
  cache = os.path.join(work, f"cache-{pairs}")
  cached = os.path.isdir(cache) and bool(os.listdir(cache))
  t = time.perf_counter()
  tokens = tokenize_split(split, tok, cache, "train")
  seconds = time.perf_counter() - t
  info = {"pairs": pairs, "read_seconds": read_seconds, "cache": cache, "tokenizer": tok_path,
          "mean_src_tokens": float(tokens.src_lengths.mean()),
          "mean_tgt_tokens": float(tokens.tgt_lengths.mean())}
  if not cached:
    info.update(tokenize_seconds=seconds, tokenize_pairs_per_s=pairs / seconds)
  return info


# ----------------------------------------------------------------------------- one measurement


def _proc_status(pid: int | str = "self") -> dict[str, float]:
  """Memory of a process in MiB (Linux): VmHWM (peak RSS, counting every page of the
  memory-mapped token cache it touched, which all processes share), RssAnon (its private
  memory) and Pss (its proportional share: shared pages divided among their users)."""
  out = {}
  for name, keys in (("status", ("VmHWM", "RssAnon", "VmRSS")), ("smaps_rollup", ("Pss",))):
    try:
      with open(f"/proc/{pid}/{name}", encoding="ascii") as f:
        for line in f:
          key, _, value = line.partition(":")
          if key in keys:
            out[key] = int(value.split()[0]) / 1024.0
    except OSError:
      pass
  return out


def measure(spec: dict) -> dict:
  """Batches of one shape and worker count, timed (runs in its own process)."""
  from transformer_jax.data import Tokenizer, filter_pairs, make_train_iterator, throughput  # pylint: disable=g-import-not-at-top
  from transformer_jax.data.token_cache import TokenizedSplit  # pylint: disable=g-import-not-at-top
  tok = Tokenizer.load(spec["tokenizer"])
  prefix = [os.path.join(spec["cache"], f[:-len(".src_values.npy")])
            for f in os.listdir(spec["cache"]) if f.endswith(".src_values.npy")][0]
  tokens = TokenizedSplit.load(prefix)
  keep = filter_pairs(tokens, spec["seq_len"], "train")
  it = make_train_iterator(tokens, keep, bos_id=tok.bos_id, eos_id=tok.eos_id,
                           batch_size=spec["rows"], seq_len=spec["seq_len"],
                           num_workers=spec["workers"])
  timing = throughput.measure(it, spec["seconds"])
  worker_mem = [_proc_status(pid) for pid in it.worker_pids()]
  it.close()
  return {**spec, **timing, "main": _proc_status(), "workers_memory": worker_mem}


def run_measure(spec: dict) -> dict:
  """`measure(spec)` in a fresh process, so its peak memory is its own."""
  env = dict(os.environ, PYTHONPATH=harness.ROOT)
  out = subprocess.run([sys.executable, "-m", "benchmarks.input_pipeline", "--measure",
                        json.dumps(spec)], capture_output=True, text=True, env=env, check=False,
                       cwd=harness.ROOT)
  if out.returncode:
    raise RuntimeError(f"measurement {spec} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the report


def _memory(m: dict[str, float]) -> str:
  return f"{m['VmHWM']:.0f} / {m['RssAnon']:.0f} / {m.get('Pss', float('nan')):.0f}"


def workers_needed(demand: float, rates: dict[int, float]) -> str:
  """How many workers cover `demand`: the fewest measured, else an estimate from the best
  measured per-worker rate (labelled as such)."""
  for n in sorted(rates):
    if rates[n] >= demand:
      return (f"{n} workers (measured {rates[n] / 1e6:.2f}M slots/s, "
              f"{rates[n] / demand:.1f}x the demand)")
  per_worker = max(rate / n for n, rate in rates.items() if n)
  return (f"{math.ceil(demand / per_worker)} workers (an estimate: {per_worker / 1e6:.2f}M "
          "slots/s per worker measured here, linear in workers)")


def report(results: list[dict], prepared: list[dict]) -> str:
  lines = ["", "Corpora (synthetic, WMT14-like lengths; see the module docstring):"]
  for p in prepared:
    tok = (f"; tokenized at {p['tokenize_pairs_per_s']:,.0f} pairs/s"
           if "tokenize_pairs_per_s" in p else "; token ids from the cache")
    lines.append(f"  {p['pairs']:>9,} pairs: mean {p['mean_src_tokens']:.1f} source / "
                 f"{p['mean_tgt_tokens']:.1f} target tokens{tok}")
  lines += ["", harness.markdown_table(
      ["pairs", "rows x len", "workers", "real tokens/s", "slots/s", "density",
       "main peak / private / PSS MiB", "each worker: peak / private / PSS MiB"],
      [[f"{r['pairs']:,}", f"{r['rows']}x{r['seq_len']}", r["workers"],
        f"{r['tokens_per_s']:,.0f}", f"{r['slots_per_s']:,.0f}", f"{r['density']:.1%}",
        _memory(r["main"]), ", ".join(map(_memory, r["workers_memory"])) or "-"]
       for r in results])]
  largest = max(r["pairs"] for r in results)
  lines += ["", f"Demand per host (slots/s: rows x seq_len x 2 per step time) against this "
            f"machine's pipeline ({largest:,} pairs, {os.cpu_count()} cores):"]
  for name, slice_name, per_chip, source in DEMAND:
    shape, chips = _host(slice_name)
    rates = {r["workers"]: r["slots_per_s"] for r in results
             if r["pairs"] == largest and f"{r['rows']}x{r['seq_len']}" == shape}
    if not rates:
      continue
    demand = chips * per_chip
    lines.append(f"  {name}: {demand:,.0f} slots/s ({chips} x {per_chip:,}; {source}) at "
                 f"{shape}:\n    {name.split(',')[0]} needs {workers_needed(demand, rates)} on its "
                 "host")
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(argv)
  if args.measure:
    print(json.dumps(measure(json.loads(args.measure))))
    return
  os.makedirs(args.work, exist_ok=True)
  sizes = [int(x) for x in args.pairs.split(",")]
  shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
  counts = [int(x) for x in args.workers.split(",")]
  prepared, results = [], []
  for pairs in sizes:
    info = prepare(args.work, pairs)
    prepared.append(info)
    for rows, seq_len in shapes:
      for workers in counts:
        r = run_measure({"pairs": pairs, "cache": info["cache"], "tokenizer": info["tokenizer"],
                         "rows": rows, "seq_len": seq_len, "workers": workers,
                         "seconds": args.seconds})
        results.append(r)
        print(f"{pairs:,} pairs, {rows}x{seq_len}, {workers} workers: "
              f"{r['tokens_per_s']:,.0f} real tokens/s, {r['slots_per_s']:,.0f} slots/s, "
              f"density {r['density']:.1%}", flush=True)
  print(report(results, prepared))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"prepared": prepared, "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
