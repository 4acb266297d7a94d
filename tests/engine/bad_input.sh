#!/usr/bin/env bash
# bad_input.sh MOERUN — every bad input to `moerun generate` ends with a
# non-zero exit and a message that names the problem.
set -uo pipefail
moerun=$1
work=$(mktemp -d "${TMPDIR:-/tmp}/moerun-bad-XXXXXX")
trap 'rm -rf "$work"' EXIT
failures=0

# expect_fail NAME PATTERN ARGS... : non-zero exit and PATTERN (grep -E) in stderr
expect_fail() {
  local name=$1 pattern=$2; shift 2
  local err rc
  err=$("$moerun" "$@" 2>&1 >/dev/null); rc=$?
  if [ $rc -eq 0 ]; then
    echo "FAIL $name: exit 0"; failures=$((failures+1))
  elif ! grep -Eq -- "$pattern" <<<"$err"; then
    echo "FAIL $name: message does not match /$pattern/: $err"; failures=$((failures+1))
  else
    echo "ok   $name: $(tail -n1 <<<"$err")"
  fi
}

long=$(seq -s, 1 300 | sed 's/[0-9]\+/5/g')   # 300 tokens > max_position_embeddings 256

expect_fail token_id_ge_vocab        'out of range.*vocab_size'   generate --prompt-ids 1,2,256 --max-new-tokens 2
expect_fail prompt_too_long          'max_position_embeddings'    generate --prompt-ids "$long" --max-new-tokens 1
expect_fail max_new_tokens_zero      'max-new-tokens'             generate --prompt-ids 1 --max-new-tokens 0
expect_fail missing_prompt           'prompt-ids is required'     generate --max-new-tokens 3
expect_fail garbage_ids              'prompt-ids: bad token id'   generate --prompt-ids 1,x,3 --max-new-tokens 3
expect_fail negative_id              'prompt-ids: bad token id'   generate --prompt-ids 1,-4 --max-new-tokens 3
expect_fail unknown_flag             "unknown flag '--frobnicate'" generate --prompt-ids 1 --max-new-tokens 3 --frobnicate 1
expect_fail bad_attn                 'attn: expected absorb or naive' generate --prompt-ids 1 --max-new-tokens 3 --attn flash
expect_fail bad_precision            "precision: expected fp32 or bf16, got 'fp16'" generate --prompt-ids 1 --max-new-tokens 3 --precision fp16
expect_fail bad_kv_dtype             "kv-dtype: expected fp32 or bf16, got 'fp8'" generate --prompt-ids 1 --max-new-tokens 3 --kv-dtype fp8
expect_fail bad_backend              "backend: expected cpu, cuda or devsim, got 'tpu'" generate --prompt-ids 1 --max-new-tokens 3 --backend tpu
# a GPU (devsim with 4 MiB) too small for the fp32 weights: the sizes and the way out, before
# anything is allocated
MOERUN_DEVSIM_MEMORY_MB=4 expect_fail weights_do_not_fit 'the fp32 weights need 4.17 MiB, 4.00 MiB free of 4.00 MiB \(--precision bf16 halves' generate --prompt-ids 1 --max-new-tokens 3 --backend devsim
expect_fail negative_temperature     'temperature'                generate --prompt-ids 1 --max-new-tokens 3 --temperature -1
expect_fail top_p_zero               'top-p'                      generate --prompt-ids 1 --max-new-tokens 3 --top-p 0
expect_fail unknown_command          "unknown command 'frob'"     frob
expect_fail missing_model_dir        "$work/nope"                 generate --model "$work/nope" --prompt-ids 1 --max-new-tokens 1

"$moerun" synth --out "$work/m" --preset tiny --dtype bf16 >/dev/null 2>&1 || { echo "FAIL synth"; exit 1; }
cp -r "$work/m" "$work/garbled"; echo '{"hidden_size": 160,' > "$work/garbled/config.json"
expect_fail garbled_config           'config.json'                generate --model "$work/garbled" --prompt-ids 1 --max-new-tokens 1
cp -r "$work/m" "$work/wrongtype"
sed 's/"hidden_size": *160/"hidden_size": "160"/' "$work/m/config.json" > "$work/wrongtype/config.json"
expect_fail config_wrong_type        'hidden_size'                generate --model "$work/wrongtype" --prompt-ids 1 --max-new-tokens 1
cp -r "$work/m" "$work/gelu"
sed 's/"silu"/"gelu"/' "$work/m/config.json" > "$work/gelu/config.json"
expect_fail config_hidden_act_gelu   'hidden_act'                 generate --model "$work/gelu" --prompt-ids 1 --max-new-tokens 1
cp -r "$work/m" "$work/trunc"
size=$(stat -c %s "$work/m/model.safetensors")
head -c $((size / 2)) "$work/m/model.safetensors" > "$work/trunc/model.safetensors"
expect_fail truncated_safetensors    'model.safetensors'          generate --model "$work/trunc" --prompt-ids 1 --max-new-tokens 1
cp -r "$work/m" "$work/hugehdr"
/usr/bin/python3 - "$work/hugehdr/model.safetensors" <<'PY'
import struct, sys
p = sys.argv[1]
data = bytearray(open(p, 'rb').read())
data[0:8] = struct.pack('<Q', len(data) * 4)   # header length larger than the file
open(p, 'wb').write(data)
PY
expect_fail header_longer_than_file  'header'                     generate --model "$work/hugehdr" --prompt-ids 1 --max-new-tokens 1

if [ $failures -ne 0 ]; then echo "$failures bad-input case(s) failed"; exit 1; fi
echo "all bad-input cases rejected with a message"
