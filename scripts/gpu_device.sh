#!/usr/bin/env bash
# GPU checks on a lent NVIDIA machine (the `device` tool), in one call.
#
#   bash scripts/gpu_device.sh build   # here: build a stripped CUDA-enabled ingot into .gpu-bin/,
#                                      # and fetch the Vulkan loader packages into .gl/ (both git-ignored)
#   device run: command "bash scripts/gpu_device.sh run", carry [".gpu-bin", ".gl"]
#                                      # there: the standard golden suite on gpu:cuda and on
#                                      # gpu:wgpu (NVIDIA's Vulkan driver), then `ingot bench ops` on
#                                      # gpu:cuda against PyTorch ceilings measured in the same call;
#                                      # reports land in $OUT (GPU_SKIP_CHECK=1 / GPU_SKIP_BENCH=1 skip a part;
#                                      # GPU_BENCH_FILTER=a,b limits the bench cases)
#
# Models on the GPU. A call carries at most 64 MiB, so `build` also cuts the models named in
# GPU_MODELS (default: SmolLM2 and Gemma 3) into 56 MiB pieces, one git-ignored folder each
# (.gm1, .gm2, ...), and the machine keeps what earlier calls brought while it stays warm:
#   device run: command "true", carry [".gm-engine"]   # the engine's tests (see build)
#   device run: command "true", carry [".gmN"]   # once per piece folder but the last
#   device run: command "bash scripts/gpu_device.sh models", carry [".gmLAST"]
#                                      # there: reassemble and verify (sha256) the models, check
#                                      # their logits on gpu:cuda against exact math
#                                      # (crates/model/tests/gpu_forward.rs), run the engine's
#                                      # tests on gpu:cuda (crates/engine/tests/engine_smollm2.rs), a greedy chat
#                                      # reply; with MODELS_CPU_BENCH=1 `ingot bench` pp512/tg128 on the
#                                      # machine's CPU (its default path, AVX-512 on the lent Xeons, and AVX2)
#   device run: command "bash scripts/gpu_device.sh synth", carry [".gpu-bin"]
#                                      # there, after `models` on the same warm machine: `ingot synth`
#                                      # llama3-8b files (random weights, SmolLM2's tokenizer) in
#                                      # q4_k_m, q8_0 and bf16 under /tmp, made there (16 GB for bf16:
#                                      # nothing that large travels); prints their sizes. SYNTH_LIKE=FILE
#                                      # another tokenizer file, SYNTH_SHAPE / SYNTH_TYPES other shapes / types
#   device run: command "bash scripts/gpu_device.sh speed", carry [".gpu-bin", ".peer"]
#                                      # there, after `models`: llama.cpp's llama-bench (built there from
#                                      # .peer: mkdir -p .peer && cp ../shared/peers/* .peer/) and `ingot bench`
#                                      # on the same files, side by side into $OUT/speed.md (see below);
#                                      # SPEED_PEER=0 skips llama-bench, SPEED_REPS=N repetitions
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
build)
  cargo build --release --locked -p ingot-cli --features cuda
  mkdir -p .gpu-bin
  strip -o .gpu-bin/ingot target/release/ingot
  # The GPU model test (logits against exact math) with the same features as the binary.
  cargo test --release --locked -p ingot-model --features cuda,wgpu --no-run
  t=$(ls -t target/release/deps/gpu_forward-* | grep -v '\.d$' | head -1)
  strip -o .gpu-bin/gpu_forward "$t"
  # The engine's tests (continuous batching, preemption, prefix sharing) on the GPU model, in
  # a folder of its own (.gpu-bin with it would pass the 64 MiB a call carries).
  cargo test --release --locked -p ingot-engine --features ingot-model/cuda,ingot-model/wgpu --no-run
  t=$(ls -t target/release/deps/engine_smollm2-* | grep -v '\.d$' | head -1)
  mkdir -p .gm-engine
  strip -o .gm-engine/engine_smollm2 "$t"
  ls -la .gpu-bin/
  models=${INGOT_MODELS:-$HOME/.cache/ingot/models}
  rm -rf .gm[0-9]*
  : > .gpu-bin/models.sha256
  i=1
  for m in ${GPU_MODELS:-SmolLM2-135M-Instruct.Q4_1.gguf gemma-3-270m-q4_k_m.gguf}; do
    grep " $m\$" ../shared/models.sha256 >> .gpu-bin/models.sha256
    tmp=$(mktemp -d)
    split -b 56M -d -a 2 "$models/$m" "$tmp/$m.part"
    for piece in "$tmp"/*; do mkdir -p ".gm$i"; mv "$piece" ".gm$i/"; i=$((i + 1)); done
    rm -rf "$tmp"
  done
  ls -d .gm[0-9]* | tr '\n' ' '; echo
  if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086
    apt-get $o update >/dev/null
    # shellcheck disable=SC2086
    (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  fi
  ;;
run)
  out=${OUT:-/tmp/ingot-gpu-out}
  mkdir -p "$out"
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
  ingot=.gpu-bin/ingot
  suite=$(mktemp -d)
  $ingot golden gen --suite standard --out "$suite" 2>&1 | tail -1
  status=0
  if [ "${GPU_SKIP_CHECK:-0}" != 1 ]; then
    for be in gpu:cuda gpu:wgpu; do
      name=${be/:/_}
      $ingot golden check "$suite" --backend "$be" --json > "$out/check_$name.json" 2> "$out/check_$name.err" || status=1
      $ingot golden check "$suite" --backend "$be" > "$out/check_$name.txt" 2>&1 || true
      tail -3 "$out/check_$name.txt"
    done
    # The shared-memory paths that lavapipe runs, here too.
    INGOT_GPU_NO_PLANE=1 $ingot golden check "$suite" --backend gpu:cuda > "$out/check_gpu_cuda_noplane.txt" 2>&1 || status=1
    tail -3 "$out/check_gpu_cuda_noplane.txt"
    # The CubeCL gemm kernels (tiled, cmma) that cuBLASLt replaces for f16/bf16 on CUDA.
    INGOT_NO_CUBLASLT=1 $ingot golden check "$suite" --backend gpu:cuda > "$out/check_gpu_cuda_nocublaslt.txt" 2>&1 || status=1
    tail -1 "$out/check_gpu_cuda_nocublaslt.txt"
  fi
  if [ "${GPU_SKIP_BENCH:-0}" != 1 ]; then
    python3 scripts/torch_ceilings.py --dtype bf16 > "$out/ceilings.json" 2> "$out/ceilings.err" || status=1
    filter=()
    [ -n "${GPU_BENCH_FILTER:-}" ] && filter=(--filter "$GPU_BENCH_FILTER")
    $ingot bench ops --backend gpu:cuda --ceilings "$out/ceilings.json" "${filter[@]}" --json-out "$out/bench_ops.json" \
      > "$out/bench_ops.md" 2> "$out/bench_ops.err" || status=1
    cat "$out/bench_ops.md"
    echo "CubeCL's own gemm (INGOT_NO_CUBLASLT=1):"
    INGOT_NO_CUBLASLT=1 $ingot bench ops --backend gpu:cuda --ceilings "$out/ceilings.json" --filter "gemm " \
      > "$out/bench_ops_cubecl_gemm.md" 2>> "$out/bench_ops.err" || status=1
    cat "$out/bench_ops_cubecl_gemm.md"
  fi
  exit $status
  ;;
models)
  out=${OUT:-/tmp/ingot-gpu-out}
  mkdir -p "$out"
  dir=/tmp/ingot-models
  mkdir -p "$dir"
  status=0
  while read -r sum m; do
    cat .gm[0-9]*/"$m".part* > "$dir/$m" 2>/dev/null || true
    if echo "$sum  $dir/$m" | sha256sum -c --status; then echo "$m: assembled"; else echo "$m: incomplete (stage every .gmN first)"; rm -f "$dir/$m"; status=1; fi
  done < .gpu-bin/models.sha256
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
  INGOT_MODELS=$dir INGOT_TEST_GPU=gpu:cuda INGOT_REQUIRE_GPU=1 .gpu-bin/gpu_forward --nocapture --test-threads 1 2>&1 \
    | grep -v '^error: XDG' | tee "$out/gpu_forward.txt" || status=1
  # Again with decode steps replayed as CUDA graphs (opt-in), token by token against exact math.
  INGOT_CUDA_GRAPHS=1 INGOT_MODELS=$dir INGOT_TEST_GPU=gpu:cuda INGOT_REQUIRE_GPU=1 .gpu-bin/gpu_forward --nocapture --test-threads 1 2>&1 \
    | grep -v '^error: XDG' | tee "$out/gpu_forward_graphs.txt" || status=1
  INGOT_MODELS=$dir INGOT_TEST_BACKEND=gpu:cuda INGOT_REQUIRE_MODELS=1 .gm-engine/engine_smollm2 --test-threads 1 2>&1 \
    | grep -v '^error: XDG' | tee "$out/engine_gpu.txt" || status=1
  INGOT_CUDA_GRAPHS=1 INGOT_MODELS=$dir INGOT_TEST_BACKEND=gpu:cuda INGOT_REQUIRE_MODELS=1 .gm-engine/engine_smollm2 --test-threads 1 2>&1 \
    | grep -v '^error: XDG' | tee "$out/engine_gpu_graphs.txt" || status=1
  for m in "$dir"/*.gguf; do
    .gpu-bin/ingot run --model "$m" --backend gpu:cuda --temperature 0 --max-tokens 48 --chat "Name three colours." 2>&1 | tee -a "$out/run.txt"
    # GPU speed against llama.cpp: `speed`. The host CPU's paths, when asked.
    [ "${MODELS_CPU_BENCH:-0}" = 1 ] || continue
    for be in cpu; do
      .gpu-bin/ingot bench --model "$m" --backend "$be" -p 512 -n 128 -r 3 2>&1 | tee -a "$out/bench_models.md" || status=1
    done
    # The host CPU's AVX-512 path (the default there) against its AVX2 path.
    echo "INGOT_CPU_ISA=avx2:" | tee -a "$out/bench_models.md"
    INGOT_CPU_ISA=avx2 .gpu-bin/ingot bench --model "$m" --backend cpu -p 512 -n 128 -r 3 2>&1 | tee -a "$out/bench_models.md" || status=1
  done
  exit $status
  ;;
synth)
  like=${SYNTH_LIKE:-/tmp/ingot-models/SmolLM2-135M-Instruct.Q4_1.gguf}
  if [ ! -f "$like" ]; then
    echo "synth: $like missing (run models first on this machine, or set SYNTH_LIKE)" >&2
    exit 1
  fi
  shape=${SYNTH_SHAPE:-llama3-8b}
  status=0
  for t in ${SYNTH_TYPES:-q4_k_m q8_0 bf16}; do
    .gpu-bin/ingot synth --like "$like" --shape "$shape" --type "$t" --out "/tmp/$shape-$t.gguf" || status=1
  done
  ls -la /tmp/"$shape"-*.gguf || status=1
  df -h /tmp
  exit $status
  ;;
speed)
  # Both engines on the same files in one call: llama.cpp's llama-bench (built here from
  # ../shared/peers, staged as .peer: see build-llama-cuda.sh's header) and `ingot bench`,
  # pp512 and tg128, SPEED_REPS repetitions (default 5), medians; the side-by-side table
  # goes to $OUT/speed.md. Files: the real models that `models` assembled in
  # /tmp/ingot-models, and synthetic ones made here by `ingot synth` with SmolLM2's
  # tokenizer, one per SPEED_SYNTH entry SHAPE:TYPE (default: the three real shapes in
  # Q4_K_M, which random weights make as fast to run as the real ones).
  # Each file also with decode steps replayed as CUDA graphs (INGOT_CUDA_GRAPHS=1), the last column.
  # INGOT_PROFILE_OPS=1 and =sync op profiles of SmolLM2's decode, and =sync of its pp512,
  # land in $OUT/profile_*.txt.
  out=${OUT:-/tmp/ingot-gpu-out}
  mkdir -p "$out"
  # SPEED_PEER=0: no llama-bench (when the device time left cannot pay its ~6 min build):
  # ingot alone, without and with CUDA graphs; the llama.cpp column stays empty.
  peer=${SPEED_PEER:-1}
  if [ "$peer" = 1 ] && [ ! -x .peer/bin/llama-bench ]; then
    bash .peer/build-llama-cuda.sh > "$out/peer_build.txt" 2>&1 || { tail -20 "$out/peer_build.txt"; exit 1; }
  fi
  export LD_LIBRARY_PATH="$PWD/.peer/bin:${LD_LIBRARY_PATH:-}"
  reps=${SPEED_REPS:-5}
  like=/tmp/ingot-models/SmolLM2-135M-Instruct.Q4_1.gguf
  files=$(ls /tmp/ingot-models/*.gguf 2>/dev/null || true)
  for st in ${SPEED_SYNTH:-gemma3-270m:q4_k_m qwen2.5-0.5b:q4_k_m}; do
    f=/tmp/synth-${st/:/-}.gguf
    [ -f "$f" ] || .gpu-bin/ingot synth --like "$like" --shape "${st%%:*}" --type "${st##*:}" --out "$f" > /dev/null
    files="$files $f"
  done
  status=0
  for f in $files; do
    b=$(basename "$f" .gguf)
    if [ "$peer" = 1 ]; then
      .peer/bin/llama-bench -m "$f" -p 512 -n 128 -ngl 99 -fa 1 -r "$reps" -o json > "$out/lb_$b.json" 2> "$out/lb_$b.err" || status=1
    else
      echo '[]' > "$out/lb_$b.json"
    fi
    .gpu-bin/ingot bench --model "$f" --backend gpu:cuda -p 512 -n 128 -r "$reps" --json > "$out/ib_$b.json" 2> "$out/ib_$b.err" || status=1
    # The same with decode steps replayed as CUDA graphs (opt-in: INGOT_CUDA_GRAPHS=1).
    INGOT_CUDA_GRAPHS=1 .gpu-bin/ingot bench --model "$f" --backend gpu:cuda -p 512 -n 128 -r "$reps" --json \
      > "$out/ibng_$b.json" 2> "$out/ibng_$b.err" || status=1
  done
  if [ -f "$like" ]; then
    for m in 1 sync; do
      INGOT_PROFILE_OPS=$m .gpu-bin/ingot bench --model "$like" --backend gpu:cuda -p 0 -n 64 -r 1 > /dev/null 2> "$out/profile_$m.txt" || status=1
    done
    # Prefill, op by op (each op waited for: the kernels' own time).
    INGOT_PROFILE_OPS=sync .gpu-bin/ingot bench --model "$like" --backend gpu:cuda -p 512 -n 0 -r 1 > /dev/null 2> "$out/profile_pp512_sync.txt" || status=1
  fi
  python3 - "$out" $files > "$out/speed.md" <<'PY' || status=1
import json, os, statistics, sys
out, files = sys.argv[1], sys.argv[2:]
print("| model | test | ingot t/s (median) | llama.cpp t/s (median) | ratio | ingot with CUDA graphs (INGOT_CUDA_GRAPHS=1) |")
print("|---|---|---|---|---|---|")
for f in files:
    b = os.path.basename(f)[:-5]
    try:
        lb = json.load(open(f"{out}/lb_{b}.json"))
        ib = json.load(open(f"{out}/ib_{b}.json"))
    except Exception as e:
        print(f"| {b} | (failed: {e}) | | | | |")
        continue
    for row in ib["rows"]:
        test = row["test"]
        key = ("n_prompt", int(test[2:])) if test.startswith("pp") else ("n_gen", int(test[2:]))
        peer = [r for r in lb if r[key[0]] == key[1] and r["n_prompt" if key[0] == "n_gen" else "n_gen"] == 0]
        ours = statistics.median(row["ingot_tps"])
        theirs = statistics.median(peer[0].get("samples_ts") or [peer[0]["avg_ts"]]) if peer else float("nan")
        try:
            ng = json.load(open(f"{out}/ibng_{b}.json"))
            plain = [statistics.median(r["ingot_tps"]) for r in ng["rows"] if r["test"] == test]
            plain = f"{plain[0]:.1f}" if plain else ""
        except Exception:
            plain = ""
        print(f"| {b} | {test} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} | {plain} |")
PY
  cat "$out/speed.md"
  for m in 1 sync pp512_sync; do head -30 "$out/profile_$m.txt" 2>/dev/null; done
  exit $status
  ;;
*)
  echo "usage: $0 build|run|models|synth|speed" >&2
  exit 2
  ;;
esac
