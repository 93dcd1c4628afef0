"""End-to-end harness: prove that objectcache gives hits and never changes an answer.

- `client`: a streaming `/generate` client (TTFT, greedy output, cached tokens by tier).
- `workloads`, `cli`: the `objectcache-harness` command (multiturn, shared-prefix, long-doc).
- `server`: launch/stop a real `sglang.launch_server` process tree; CPU, HiCache, reference flags.
- `proxy`: a fault-injection HTTP proxy in front of an S3 endpoint.
- `fixtures`: the same as pytest fixtures (`pytest -p objectcache_dev.harness.fixtures`).
See docs/harness.md.
"""
