#!/usr/bin/env bash
# GPU checks on a lent NVIDIA machine (the `device` tool), in one call.
#
#   bash scripts/gpu_device.sh build   # here: build a stripped CUDA-enabled ingot into .gpu-bin/,
#                                      # and fetch the Vulkan loader packages into .gl/ (both git-ignored)
#   device run: command "bash scripts/gpu_device.sh run", carry [".gpu-bin", ".gl"]
#                                      # there: the standard golden suite on gpu:cuda and on
#                                      # gpu:wgpu (NVIDIA's Vulkan driver); reports land in $OUT
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
  for be in gpu:cuda gpu:wgpu; do
    name=${be/:/_}
    $ingot golden check "$suite" --backend "$be" --json > "$out/check_$name.json" 2> "$out/check_$name.err" || status=1
    $ingot golden check "$suite" --backend "$be" | tail -40 | tee "$out/check_$name.txt" || true
  done
  exit $status
  ;;
*)
  echo "usage: $0 build|run" >&2
  exit 2
  ;;
esac
