"""Benchmarks, probes and profiles of objectcache, run from the repository root.

Run one:

    .venv/bin/python -m benchmarks.<name> --help
    nice -n -10 .venv/bin/python -m benchmarks.storage     # nice is optional; it is recorded

Each benchmark is a module with `parser()` (its argparse.ArgumentParser, built without running
anything) and `main()`. It writes `benchmarks/results/<name>.json` (or its `--out`) through
`benchmarks.schema.write_result`: the command that made it, the commit, the machine, the runs
and their medians, and the `plot` spec that draws `<name>.png` beside it.

The parts they share:
  rig.py      local S3 server per run, real SGLang CPU KV pools, CPU accounting, pinning, percentiles
  clients.py  the storage paths measured side by side: raw S3 clients, SGLang's in-tree backends
  schema.py   the result schema: write_result, load_result
  storage_summary.py  benchmarks.storage's cells, ratios and targets (also for --resummarize)
  plot.py     the only module that draws (matplotlib); redraw PNGs from their JSONs with
              `.venv/bin/python -m benchmarks.plot [name ...]`

docs/results.md and the README's targets table are generated from the JSONs by
`.venv/bin/python scripts/results_doc.py`. A new benchmark: a module here with `parser()`
and `main()` that calls `write_result` (tests/test_benchmarks.py checks every recorded
command still parses).
"""
