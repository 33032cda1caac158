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
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
build)
  cargo build --release --locked -p ingot-cli --features cuda
  mkdir -p .gpu-bin
  strip -o .gpu-bin/ingot target/release/ingot
  ls -la .gpu-bin/ingot
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
*)
  echo "usage: $0 build|run" >&2
  exit 2
  ;;
esac
