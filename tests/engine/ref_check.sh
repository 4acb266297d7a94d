#!/usr/bin/env bash
# ref_check.sh MOERUN REFDIR PRESET DTYPE SHARDS BIAS_OFFSET ATTN PROMPT_IDS N_NEW
# Synthesize a model with `moerun synth`, run `moerun generate --logits-out`
# on it and compare every logits row and token with the independent numpy
# reference (tests/ref/check_generate.py, /usr/bin/python3 + numpy: a missing
# numpy FAILS this test, it never skips).
set -euo pipefail
moerun=$1 refdir=$2 preset=$3 dtype=$4 shards=$5 bias=$6 attn=$7 prompt=$8 n_new=$9
work=$(mktemp -d "${TMPDIR:-/tmp}/moerun-ref-XXXXXX")
trap 'rm -rf "$work"' EXIT
"$moerun" synth --out "$work/model" --preset "$preset" --dtype "$dtype" --shards "$shards" \
  --gate-bias-offset "$bias" --seed 11
case "$prompt" in
  long:*) # long:N = N pseudo-random ids (for prompts past original_max_position_embeddings)
    n=${prompt#long:}; prompt=$(/usr/bin/python3 -c "print(','.join(str((i*37+11)%256) for i in range($n)))") ;;
esac
/usr/bin/python3 "$refdir/check_generate.py" --moerun "$moerun" --model "$work/model" \
  --prompt-ids "$prompt" --max-new-tokens "$n_new" --attn "$attn" --tol 1e-3 "${@:10}"
