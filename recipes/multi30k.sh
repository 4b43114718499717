#!/usr/bin/env bash
# Multi30k end to end on a CPU: train, average the last 5 checkpoints, pick the length penalty on
# the validation set, translate test_2016_flickr with beam search, score with sacreBLEU, and print
# the wall time of each stage.
#
#   recipes/multi30k.sh [tok|raw] [en-de|de-en] [DATA_DIR] [WORKDIR]
#
#   tok (default): the official lowercased tokenized files (tok/*.lc.norm.tok.*), BLEU on that text
#                  (sacreBLEU tokenize=none), as published Multi30k results are scored.
#   raw:           the raw cased files, cased detokenized sacreBLEU (13a).
# Extra train.py flags can be passed through TRAIN_FLAGS, e.g. TRAIN_FLAGS="--config.seed=1".
# ALPHAS: the length penalties tried on val (default 1.0,1.3,1.6); the first (with the averaged
# checkpoint and BEAM) is the baseline, left only for a setting better on val with paired-bootstrap
# p < 0.05 (tune_decoding.py). BEAM: beam size (default 5).
# MALLOC: tcmalloc (default, when installed) or system.
# Writes WORKDIR/results.json, WORKDIR/test.hyp, WORKDIR/decode_tuning.json (+ val_hyps/),
# WORKDIR/decoding_rule.json (the split-half check of the tuning rule, on val) and
# WORKDIR/curves.png.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${1:-tok}
DIRECTION=${2:-en-de}
DATA=${3:-../shared/data/multi30k}
SRC=${DIRECTION%-*}
TGT=${DIRECTION#*-}
WORKDIR=${4:-runs/multi30k_${VARIANT}_${SRC}${TGT}}
BEAM=${BEAM:-5}
ALPHAS=${ALPHAS:-1.0,1.3,1.6}
# One XLA CPU device per core: data parallelism over 2 devices beats one 2-thread device by ~20%.
export XLA_FLAGS="--xla_force_host_platform_device_count=${CPU_DEVICES:-2} ${XLA_FLAGS:-}"
# tcmalloc, when installed (apt install libtcmalloc-minimal4), keeps XLA's per-step temporary
# buffers mapped instead of faulting them back in every step: 1.15-1.23x faster recipe steps
# (docs/performance.md). MALLOC=system keeps glibc's malloc.
if [[ "${MALLOC:-tcmalloc}" == tcmalloc ]]; then
  TCMALLOC=$(python -m benchmarks.harness tcmalloc)
  if [[ -n "$TCMALLOC" ]]; then
    export LD_PRELOAD="$TCMALLOC${LD_PRELOAD:+:$LD_PRELOAD}"
    echo "malloc: $TCMALLOC (MALLOC=system to use glibc's)" >&2
  else
    echo "malloc: glibc's (install libtcmalloc-minimal4 for ~1.2x faster steps)" >&2
  fi
fi

case "$VARIANT" in
  tok) DIR="$DATA/tok"; PATTERN='{split}.lc.norm.tok.{lang}'; SUFFIX=".lc.norm.tok"; TOKENIZE=none ;;
  raw) DIR="$DATA"; PATTERN='{split}.{lang}'; SUFFIX=""; TOKENIZE=13a ;;
  *) echo "unknown variant '$VARIANT': use tok or raw" >&2; exit 2 ;;
esac
TEST="$DIR/test_2016_flickr$SUFFIX"; VAL="$DIR/val$SUFFIX"
for f in "$TEST.$SRC.gz" "$TEST.$TGT.gz" "$VAL.$SRC.gz" "$VAL.$TGT.gz"; do
  [[ -f "$f" ]] || { echo "missing $f: pass the Multi30k directory as the third argument" >&2; exit 2; }
done
if [[ -e "$WORKDIR" ]]; then
  echo "$WORKDIR exists: remove it or pass another WORKDIR (the recipe times a fresh run)" >&2; exit 2
fi

start=$(date +%s)
python train.py --config configs/multi30k.py --workdir "$WORKDIR" \
  --config.data.data_dir="$DIR" --config.data.file_pattern="$PATTERN" \
  --config.data.source_lang="$SRC" --config.data.target_lang="$TGT" \
  --config.eval_bleu_tokenize="$TOKENIZE" ${TRAIN_FLAGS:-}
trained=$(date +%s)
python average_checkpoints.py --workdir "$WORKDIR" --num_last 5
# The length penalty is chosen on val (never on test), and only on a significant difference.
python tune_decoding.py --workdir "$WORKDIR" --checkpoints averaged --beam_sizes "$BEAM" \
  --alphas "$ALPHAS" --input "$VAL.$SRC.gz" --reference "$VAL.$TGT.gz" --bleu_tokenize "$TOKENIZE" \
  --hypotheses_dir "$WORKDIR/val_hyps"
ALPHA=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["chosen"]["alpha"])' \
  "$WORKDIR/decode_tuning.json")
python translate.py --workdir "$WORKDIR" --checkpoint averaged --beam_size "$BEAM" --alpha "$ALPHA" \
  --input "$TEST.$SRC.gz" --output "$WORKDIR/test.hyp" \
  --reference "$TEST.$TGT.gz" --bleu_tokenize "$TOKENIZE" 2>&1 | tee "$WORKDIR/test_score.txt"
done_at=$(date +%s)
# Does the rule transfer? 20 random halvings of val: choose on one half, score on the other.
python -m benchmarks.decoding_rule --hypotheses_dir "$WORKDIR/val_hyps" \
  --reference "$VAL.$TGT.gz" --bleu_tokenize "$TOKENIZE" --out "$WORKDIR/decoding_rule.json"

python - "$WORKDIR" "$VARIANT" "$DIRECTION" "$((trained - start))" "$((done_at - trained))" \
  "$DIR/train$SUFFIX.$TGT.gz" <<'PY'
import gzip, json, os, platform, re, statistics, sys
import sentencepiece as spm
workdir, variant, direction, train_s, decode_s, train_target = sys.argv[1:7]
train_s, decode_s = int(train_s), int(decode_s)
text = open(os.path.join(workdir, "test_score.txt")).read()
tuning = json.load(open(os.path.join(workdir, "decode_tuning.json")))
bleu = float(re.search(r"^BLEU\|.*? = *([0-9.]+)", text, re.M).group(1))
rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
train = [r for r in rows if "tokens_per_sec" in r]
steps = train[-1]["step"]
# Target tokens (ids + EOS) in one epoch, with the run's own tokenizer.
sp = spm.SentencePieceProcessor(model_file=os.path.join(workdir, "tokenizer.model"))
lines = gzip.open(train_target, "rt", encoding="utf-8").read().splitlines()
epoch_tokens = sum(len(ids) + 1 for ids in sp.encode(lines))
seen_tokens = sum(r["num_tokens"] for r in train) / len(train) * steps
result = {
    "variant": variant, "direction": direction, "test_bleu": bleu,
    "beam_size": tuning["chosen"]["beam_size"], "alpha": tuning["chosen"]["alpha"],
    "decoding_baseline": tuning["baseline"]["setting"], "decoding_chosen": tuning["chosen"]["setting"],
    "decoding_p_value": tuning["chosen"]["p_value"], "decoding_reason": tuning["reason"],
    "val_bleu_by_alpha": {r["alpha"]: round(r["bleu"], 2) for r in tuning["rows"]},
    "val_p_by_alpha": {r["alpha"]: r["p_value"] for r in tuning["rows"]},
    "train_seconds": train_s, "average_tune_translate_score_seconds": decode_s,
    "total_minutes": round((train_s + decode_s) / 60, 1), "steps": steps,
    "epochs": round(seen_tokens / epoch_tokens, 1),
    "seconds_per_epoch": round(train_s / (seen_tokens / epoch_tokens)),
    "median_target_tokens_per_sec": round(statistics.median(
        r["tokens_per_sec"] for r in (train[1:] or train))),
    "val_bleu_greedy": [(r["step"], round(r["eval_bleu"], 2)) for r in rows if "eval_bleu" in r],
    "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
}
json.dump(result, open(os.path.join(workdir, "results.json"), "w"), indent=1)
print(json.dumps(result, indent=1))
PY
