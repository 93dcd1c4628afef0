"""Make a tiny random-weight Llama-style model and a byte-level BPE tokenizer, locally.

Nothing is downloaded: the weights are seeded random numbers and the tokenizer is trained
on a synthetic corpus. The result is a normal Hugging Face model directory that
`python -m sglang.launch_server --model-path DIR` loads. Re-running with the same
arguments gives byte-identical weights, so parity tests can compare runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

_WORDS = (
    "the a cache page layer object store bucket prefix token model request server key value "
    "radix tree host device memory storage read write fetch batch stream kernel scatter gather "
    "latency bandwidth hit miss flush restart tenant salt chunk hash shard region endpoint "
    "alpha beta gamma delta river mountain city forest ocean data system query answer time "
    "one two three four five six seven eight nine ten hundred thousand first last next"
).split()


# Bumped when the tokenizer's recipe changes, so a model directory made before is remade.
TOKENIZER_VERSION = 2


@dataclass(frozen=True)
class TinyModelSpec:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 32
    intermediate_size: int = 256
    vocab_size: int = 2048
    max_positions: int = 8192
    dtype: str = "bfloat16"
    seed: int = 0


def synthetic_corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 30))) for _ in range(n_lines)]


def _train_tokenizer(out: Path, vocab_size: int) -> None:
    """Byte-level BPE over printable ASCII, filled up to `vocab_size` with plain-text tokens,
    so that every id a random model can emit decodes to text: an id that decodes to "" (or
    to half a UTF-8 character) makes streaming clients see no first token at all."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<unk>"],
        # GPT-2's byte-level alphabet: printable ASCII is itself, space is Ġ, newline Ċ.
        initial_alphabet=[chr(b) for b in range(33, 127)] + ["\u0120", "\u010a"],
    )
    tok.train_from_iterator(synthetic_corpus(), trainer=trainer)
    # The corpus runs out of merges long before a few thousand ids: the rest are words.
    filler = vocab_size - tok.get_vocab_size()
    tok.add_tokens([AddedToken(f" w{i}", normalized=False) for i in range(max(filler, 0))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(out))


def make_tiny_model(out_dir: str | os.PathLike, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write the model to out_dir (skipped if a model made from the same spec is there)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    stamp = out / "objectcache_tiny_spec.json"
    made = {**asdict(spec), "tokenizer": TOKENIZER_VERSION}
    if stamp.exists() and json.loads(stamp.read_text()) == made:
        return out
    out.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(out, spec.vocab_size)
    config = LlamaConfig(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        intermediate_size=spec.intermediate_size,
        vocab_size=spec.vocab_size,
        max_position_embeddings=spec.max_positions,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
        torch_dtype=spec.dtype,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(getattr(torch, spec.dtype))
    model.save_pretrained(str(out), safe_serialization=True)
    stamp.write_text(json.dumps(made))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    for field, default in asdict(TinyModelSpec()).items():
        p.add_argument("--" + field.replace("_", "-"), type=type(default), default=default)
    a = vars(p.parse_args(argv))
    out = a.pop("out_dir")
    print(make_tiny_model(out, TinyModelSpec(**a)))


if __name__ == "__main__":
    main()
