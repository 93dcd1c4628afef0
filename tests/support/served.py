"""A served model for tests without a server: a small checkpoint and the ServerArgs fields
objectcache reads to identify it (see the `served_model` fixture in conftest.py)."""

from __future__ import annotations


def write_checkpoint(path, seed: int = 0, nbytes: int = 4096) -> str:
    """A minimal checkpoint directory (config.json + one safetensors file of seeded bytes),
    enough for objectcache to fingerprint the weights."""
    import json
    import os
    import random
    import struct

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}, f)
    header = json.dumps({"w": {"dtype": "U8", "shape": [nbytes], "data_offsets": [0, nbytes]}}).encode()
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + random.Random(seed).randbytes(nbytes))
    return str(path)


def server_args_for(model_path: str, **kw):
    """What objectcache reads of SGLang's ServerArgs, for tests without a server."""
    from types import SimpleNamespace

    base = dict(model_path=model_path, served_model_name=None, revision=None, load_format="auto",
                dtype="auto", kv_cache_dtype="auto", quantization=None, json_model_override_args="{}",
                quantization_param_path=None, lora_paths=None, tp_size=1, dcp_size=1,
                disable_overlap_schedule=True)
    base.update(kw)
    return SimpleNamespace(**base)
