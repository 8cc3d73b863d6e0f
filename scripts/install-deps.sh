#!/usr/bin/env bash
# Installs with apt-get the Debian 12 packages loom needs that are not yet
# installed. Idempotent: when everything is there it installs nothing and
# does not touch the network.
set -euo pipefail

packages=(
  build-essential     # g++ and make; g++ brings OpenMP (libgomp)
  cmake
  libdnnl-dev         # oneDNN: matmul
  ocl-icd-opencl-dev  # Debian's dnnl CMake config runs find_package(OpenCL); libdnnl-dev only recommends it
  libxsimd-dev        # xsimd: SIMD kernels with run-time dispatch
  doctest-dev         # tests
  nlohmann-json3-dev  # JSON configs
  zlib1g-dev          # PNG pictures (deflate and crc32)
  libopenmpi-dev      # data-parallel training over several processes/machines (train/dist.h)
  openmpi-bin         # mpirun
  fortunes            # demo text: /usr/share/games/fortunes
  dataset-fashion-mnist  # demo images: /usr/share/datasets/fashion-mnist
)

# CI also builds with clang and runs the fuzz targets (.ci/run): `install-deps.sh --ci` adds them.
if [ "${1:-}" = "--ci" ]; then
  packages+=(
    clang             # clang++ 14: the second compiler CI builds and tests with
    libclang-rt-14-dev  # libFuzzer and the sanitizer runtimes for clang (tests/fuzz/run.sh)
  )
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages are installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
