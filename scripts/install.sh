#!/usr/bin/env bash
# Install sglang-objectcache and everything it needs into .venv/ (idempotent).
#
# On a machine with an NVIDIA driver this is a plain `pip install -e '.[test,fast]'`: the real
# sglang (the release SUPPORTED_SGLANG names in sglang_objectcache/sglang/compat.py) with its
# CUDA dependencies. On a CPU-only machine it installs SGLang's CPU engine instead (see
# docs/cpu.md): the CPU build of torch, that sglang without its
# CUDA-only wheels, the exact versions in requirements/cpu.lock, and two import-time
# stand-ins (sgl_kernel, torchvision) put on sys.path by a .pth file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

manifest=sglang_objectcache/sglang/compat.py
sglang_version=$(sed -n 's/^SUPPORTED_SGLANG = "\(.*\)"$/\1/p' "$manifest")
hash_inputs=$( (cat setup.py requirements/* scripts/install.sh; echo "$sglang_version") | sha256sum | cut -c1-16)
stamp=.venv/.objectcache-installed-$hash_inputs
[ -f "$stamp" ] && exit 0

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install -q)
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[install] NVIDIA GPU found: installing sglang==$sglang_version with its CUDA dependencies"
  rm -f "$site/objectcache_cpu_standin.pth"
  "${pip[@]}" -e '.[test,fast]'
else
  echo "[install] no GPU: installing SGLang's CPU engine (torch CPU build, pinned by requirements/cpu.lock)"
  "${pip[@]}" -c requirements/cpu.lock torch
  # sglang's own metadata pulls GBs of CUDA-only wheels that cannot import here.
  "${pip[@]}" --no-deps -c requirements/cpu.lock sglang
  "${pip[@]}" -c requirements/cpu.lock -r requirements/cpu-sglang-deps.txt -r requirements/cpu-extra.txt
  "${pip[@]}" --no-deps -e .
  if ! .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('sgl_kernel') is None)" 2>/dev/null \
     || [ -f "$site/objectcache_cpu_standin.pth" ]; then
    echo "$PWD/sglang_objectcache/sglang/cpu/standin" > "$site/objectcache_cpu_standin.pth"
  fi
fi
.venv/bin/python -c "import sglang_objectcache.sglang.plugin as p; p.check_sglang(); print('[install] ok: sglang', p.SUPPORTED_SGLANG)"
rm -f .venv/.objectcache-installed-*
touch "$stamp"
