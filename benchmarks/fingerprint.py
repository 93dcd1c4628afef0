"""What the weights fingerprint costs at startup (`sglang_objectcache/identity.py`).

Two checkpoints, made locally:
- `llama3-8b`: Llama-3-8B's 291 tensors with their real shapes, bf16, in 4 safetensors
  shards (16.1 GB of tensor data). The data is written as sparse files, so this measures the
  fingerprint's reads and hashing, not this disk; `reads` says how many reads a cold start
  makes (each one a random read on the real disk).
- `real-1gib`: 1 GiB of random bytes in 2 shards, page cache dropped before each cold run
  (posix_fadvise DONTNEED), sampled and full.

    .venv/bin/python -m benchmarks.fingerprint --out benchmarks/results/fingerprint

Writes `--out`.json and its plot beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import tempfile
import time
from pathlib import Path

from benchmarks.schema import write_result
from sglang_objectcache import identity

L, H, KV, I, V = 32, 4096, 1024, 14336, 128256  # Llama-3-8B


def llama3_8b_tensors() -> list[tuple[str, list[int]]]:
    out = [("model.embed_tokens.weight", [V, H])]
    for i in range(L):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", [H, H]), (p + "self_attn.k_proj.weight", [KV, H]),
                (p + "self_attn.v_proj.weight", [KV, H]), (p + "self_attn.o_proj.weight", [H, H]),
                (p + "mlp.gate_proj.weight", [I, H]), (p + "mlp.up_proj.weight", [I, H]),
                (p + "mlp.down_proj.weight", [H, I]), (p + "input_layernorm.weight", [H]),
                (p + "post_attention_layernorm.weight", [H])]
    return out + [("model.norm.weight", [H]), ("lm_head.weight", [V, H])]


def write_shards(root: Path, tensors, shards: int, fill: bool) -> int:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": H}))
    per = -(-len(tensors) // shards)
    total = 0
    for s in range(shards):
        header, off = {}, 0
        for name, shape in tensors[s * per:(s + 1) * per]:
            n = 2
            for d in shape:
                n *= d
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
            off += n
        raw = json.dumps(header).encode()
        path = root / f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            if fill:
                left = off
                while left:
                    k = min(left, 64 << 20)
                    f.write(os.urandom(k))
                    left -= k
            else:
                f.truncate(8 + len(raw) + off)
        total += off
    return total


def drop_cache(root: Path) -> None:
    for f in root.iterdir():
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def timed(root: Path, full: bool, runs: int, cold: bool) -> list[float]:
    out = []
    for _ in range(runs):
        if cold:
            drop_cache(root)
        t0 = time.perf_counter()
        identity.fingerprint_path(str(root), full=full)
        out.append(time.perf_counter() - t0)
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/fingerprint")
    ap.add_argument("--runs", type=int, default=5)
    return ap


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    lanes = {}
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "llama3-8b"
        tensors = llama3_8b_tensors()
        nbytes = write_shards(big, tensors, 4, fill=False)
        lanes["llama3-8b sampled (sparse)"] = {
            "seconds": timed(big, False, a.runs, cold=False), "tensor_bytes": nbytes,
            "tensors": len(tensors), "reads": 3 * len(tensors) + 2 * 4}
        real = Path(tmp) / "real-1gib"
        nbytes = write_shards(real, [(f"t{i}", [512 << 10]) for i in range(1024)], 2, fill=True)
        for name, full, cold in (("real-1gib sampled, cold", False, True), ("real-1gib sampled, warm", False, False),
                                 ("real-1gib full, cold", True, True)):
            lanes[name] = {"seconds": timed(real, full, a.runs, cold), "tensor_bytes": nbytes}
    for lane in lanes.values():
        s = sorted(lane["seconds"])
        lane["median_s"] = s[len(s) // 2]
    write_result(a.out, runs=a.runs, medians={name: lane["median_s"] for name, lane in lanes.items()},
                 extra={"lanes": lanes}, plot={"kind": "fingerprint", "size": [7, 3], "dpi": 110})
    for name, lane in lanes.items():
        runs = [round(x * 1e3, 1) for x in lane["seconds"]]
        print(f"{name:32s} median {lane['median_s'] * 1e3:9.1f} ms  runs {runs}")


def draw(fig, result: dict) -> None:
    """The `fingerprint` plot kind (drawn by benchmarks.plot): median time per lane."""
    names = list(result["lanes"])
    ax = fig.subplots()
    ax.barh(names, [result["lanes"][n]["median_s"] * 1e3 for n in names])
    ax.set_xscale("log")
    ax.set_xlabel("weights fingerprint, ms (median of %d)" % result["runs"])


if __name__ == "__main__":
    main()
