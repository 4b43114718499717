"""recipes/multi30k.sh end to end on the shared corpus, with a tiny model and 10 steps."""

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ("--config.num_train_steps=10 --config.checkpoint_every_steps=2 --config.eval_every_steps=10"
        " --config.eval_bleu_examples=32"
        " --config.log_every_steps=5 --config.model.d_model=32 --config.model.d_ff=64"
        " --config.model.num_heads=2 --config.model.num_encoder_layers=1"
        " --config.model.num_decoder_layers=1 --config.data.vocab_size=1000")


def _recipe(*args, **env):
  env = dict(os.environ, XLA_FLAGS="", TRAIN_FLAGS=TINY, BEAM="2", ALPHAS="1.0,0.6", **env)
  return subprocess.run(["bash", "recipes/multi30k.sh", *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def test_recipe_trains_averages_translates_and_scores(multi30k_dir, tmp_path):
  workdir = tmp_path / "run"
  result = _recipe("tok", "de-en", multi30k_dir, workdir)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "malloc: " in result.stderr  # `python -m benchmarks.harness tcmalloc` answered.
  results = json.loads((workdir / "results.json").read_text())
  assert results["direction"] == "de-en" and results["variant"] == "tok"
  assert 0.0 <= results["test_bleu"] <= 100.0 and results["train_seconds"] > 0
  assert "tok:none" in (workdir / "test_score.txt").read_text()
  assert len((workdir / "test.hyp").read_text().split("\n")) == 1001  # 1,000 lines + final \n.
  assert (workdir / "averaged").is_dir()
  # The length penalty was chosen on val, among ALPHAS (the first is the baseline), and used for
  # test; results.json records the baseline, the choice and its p-value.
  tuning = json.loads((workdir / "decode_tuning.json").read_text())
  assert [r["alpha"] for r in tuning["rows"]] == [1.0, 0.6]
  assert "val.lc.norm.tok.de" in tuning["input"] and tuning["rows"][0]["checkpoint"] == "averaged"
  assert results["decoding_baseline"] == tuning["baseline"]["setting"] == "averaged beam 2 alpha 1"
  assert results["alpha"] == tuning["chosen"]["alpha"]
  assert results["decoding_chosen"] == tuning["chosen"]["setting"]
  assert results["decoding_reason"] == tuning["reason"]
  # The split-half check of the rule ran on val's translations.
  rule = json.loads((workdir / "decoding_rule.json").read_text())
  assert len(rule["best_bleu"]) == len(rule["significant"]) == 20
  assert rule["baseline"] == "averaged_beam_2_alpha_1"
  # A second run refuses to overwrite the timed workdir; a bad variant is refused.
  again = _recipe("tok", "de-en", multi30k_dir, workdir)
  assert again.returncode == 2 and "exists" in again.stderr
  bad = _recipe("bpe", "en-de", multi30k_dir, tmp_path / "other")
  assert bad.returncode == 2 and "unknown variant" in bad.stderr
