#!/usr/bin/env bash
# cli_synth_inspect.sh MOERUN — `moerun synth` writes loadable models for every
# preset/dtype, deterministically; `moerun inspect` summarizes good models and
# fails with a message naming the problem on bad ones.
set -uo pipefail
moerun=$1
work=$(mktemp -d "${TMPDIR:-/tmp}/moerun-cli-XXXXXX")
trap 'rm -rf "$work"' EXIT
failures=0

fail() { echo "FAIL $*"; failures=$((failures+1)); }

# expect_ok NAME PATTERN ARGS... : exit 0 and PATTERN (grep -E) in stdout+stderr
expect_ok() {
  local name=$1 pattern=$2; shift 2
  local out rc
  out=$("$moerun" "$@" 2>&1); rc=$?
  if [ $rc -ne 0 ]; then fail "$name: exit $rc: $out"
  elif ! grep -Eq -- "$pattern" <<<"$out"; then fail "$name: output lacks /$pattern/: $out"
  else echo "ok   $name"; fi
}

# expect_fail NAME RC PATTERN ARGS... : exit RC (or any non-zero for '*') and PATTERN in stderr
expect_fail() {
  local name=$1 want=$2 pattern=$3; shift 3
  local err rc
  err=$("$moerun" "$@" 2>&1 >/dev/null); rc=$?
  if [ $rc -eq 0 ]; then fail "$name: exit 0"
  elif [ "$want" != '*' ] && [ $rc -ne "$want" ]; then fail "$name: exit $rc, want $want: $err"
  elif ! grep -Eq -- "$pattern" <<<"$err"; then fail "$name: message lacks /$pattern/: $err"
  else echo "ok   $name: $(tail -n1 <<<"$err")"; fi
}

# --- synth + inspect on every preset --------------------------------------
expect_ok synth_tiny_fp8_sharded "wrote $work/fp8: .* bytes" \
  synth --out "$work/fp8" --preset tiny --dtype fp8 --shards 2 --seed 3
[ -f "$work/fp8/model.safetensors.index.json" ] && [ -f "$work/fp8/model-00002-of-00002.safetensors" ] \
  || fail "synth_tiny_fp8_sharded: shard files missing"
expect_ok inspect_fp8_summary 'F8_E4M3 +[0-9]+ +[0-9]+' inspect --model "$work/fp8"
expect_ok inspect_fp8_quant 'quantization +fp8 e4m3, block 128x128' inspect --model "$work/fp8"
expect_ok inspect_fp8_yarn 'yarn +enabled: factor 4, original 64' inspect --model "$work/fp8"
expect_ok inspect_fp8_load 'loaded +[0-9]+ fp32 bytes' inspect --model "$work/fp8" --load

expect_ok synth_tiny_f32 'bytes' synth --out "$work/f32" --preset tiny --seed 3
# tiny: embed + dense layer (12) + 2 MoE layers (62 each) + norm + lm_head = 139 tensors
expect_ok inspect_tiny_tensor_count '^tensors +139 ' inspect --model "$work/f32"
expect_ok inspect_tiny_params 'parameters +[0-9]+ \([0-9]+ in routed experts' inspect --model "$work/f32"
expect_ok inspect_tiny_kv_per_token 'kv per token +0.5 KB fp32, 0.2 KB with --kv-dtype bf16 \(3 layers x 40 latent' inspect --model "$work/f32"
expect_ok inspect_tiny_serving_memory 'serving memory +weights 0.00437 GB fp32, 0.00227 GB with --precision bf16' inspect --model "$work/f32"

expect_ok synth_tiny_v2 'bytes' synth --out "$work/v2" --preset tiny-v2 --dtype bf16
expect_ok inspect_tiny_v2 'q_lora_rank 0 \(direct q_proj\)' inspect --model "$work/v2" --load
expect_ok synth_tiny_lite 'bytes' synth --out "$work/lite" --preset tiny-lite --dtype fp8
expect_ok inspect_tiny_lite 'yarn +none' inspect --model "$work/lite" --load

# --- determinism ------------------------------------------------------------
"$moerun" synth --out "$work/again" --preset tiny --seed 3 2>/dev/null
cmp -s "$work/f32/model.safetensors" "$work/again/model.safetensors" \
  && cmp -s "$work/f32/config.json" "$work/again/config.json" \
  && echo "ok   synth_same_seed_same_bytes" || fail "synth_same_seed_same_bytes"
"$moerun" synth --out "$work/other" --preset tiny --seed 4 2>/dev/null
cmp -s "$work/f32/model.safetensors" "$work/other/model.safetensors" \
  && fail "synth_other_seed_other_bytes" || echo "ok   synth_other_seed_other_bytes"

# --- synth usage errors -----------------------------------------------------
expect_fail synth_unknown_preset 1 'preset "nope"' synth --out "$work/x" --preset nope
expect_fail synth_bad_dtype 2 'dtype f64' synth --out "$work/x" --dtype f64
expect_fail synth_no_out 2 'out DIR is required' synth --preset tiny
expect_fail synth_too_many_shards 1 'shards 9' synth --out "$work/x" --shards 9
expect_fail synth_bad_seed 2 'seed' synth --out "$work/x" --seed -1
expect_fail synth_unknown_option 2 'frob' synth --out "$work/x" --frob 1

# --- inspect on bad models --------------------------------------------------
expect_fail inspect_no_model 2 'model DIR is required' inspect
expect_fail inspect_missing_dir 1 "$work/nope" inspect --model "$work/nope"

cp -r "$work/fp8" "$work/noshard"; rm "$work/noshard/model-00002-of-00002.safetensors"
expect_fail inspect_missing_shard 1 'model-00002-of-00002.safetensors' inspect --model "$work/noshard"

cp -r "$work/f32" "$work/gelu"
sed 's/"silu"/"gelu"/' "$work/f32/config.json" > "$work/gelu/config.json"
expect_fail inspect_hidden_act_gelu 1 'hidden_act' inspect --model "$work/gelu"

cp -r "$work/f32" "$work/nokey"
grep -v '"kv_lora_rank"' "$work/f32/config.json" > "$work/nokey/config.json"
expect_fail inspect_missing_key 1 'missing key kv_lora_rank' inspect --model "$work/nokey"

cp -r "$work/f32" "$work/wrongtype"
sed 's/"hidden_size": 160/"hidden_size": "160"/' "$work/f32/config.json" > "$work/wrongtype/config.json"
expect_fail inspect_wrong_type 1 'hidden_size must be an integer' inspect --model "$work/wrongtype"

cp -r "$work/f32" "$work/layers"   # config wants 4 layers, file has 3
sed 's/"num_hidden_layers": 3/"num_hidden_layers": 4/' "$work/f32/config.json" > "$work/layers/config.json"
expect_fail inspect_missing_layer 1 'missing tensor model.layers.3.input_layernorm.weight' inspect --model "$work/layers"

cp -r "$work/f32" "$work/fewer"    # config wants 2 layers: layer 2 is then an ignored MTP-like layer
sed 's/"num_hidden_layers": 3/"num_hidden_layers": 2/' "$work/f32/config.json" > "$work/fewer/config.json"
expect_ok inspect_extra_layers_ignored 'tensors +139 \(62 in layers >= num_hidden_layers' inspect --model "$work/fewer"

cp -r "$work/f32" "$work/shape"    # wider model than the tensors
sed 's/"vocab_size": 256/"vocab_size": 512/' "$work/f32/config.json" > "$work/shape/config.json"
expect_fail inspect_shape_mismatch 1 'model.embed_tokens.weight has shape \[256, 160\], expected \[512, 160\]' inspect --model "$work/shape"

cp -r "$work/f32" "$work/trunc"
size=$(stat -c %s "$work/f32/model.safetensors")
head -c $((size / 2)) "$work/f32/model.safetensors" > "$work/trunc/model.safetensors"
expect_fail inspect_truncated 1 'model.safetensors: tensor .*out of range' inspect --model "$work/trunc"

if [ $failures -ne 0 ]; then echo "$failures failure(s)"; exit 1; fi
echo "all passed"
