"""The tiny model the tests and benchmarks serve: its tokenizer covers its vocabulary."""

from __future__ import annotations

from objectcache_dev.tinymodel import TinyModelSpec, make_tiny_model


def test_every_id_the_model_can_emit_decodes_to_text(tmp_path):
    # A random model emits any id below vocab_size. An id that decodes to "" or to half a
    # UTF-8 character gives streaming clients no first token (SGLang's benchmark then
    # records TTFT 0 for that request).
    from transformers import AutoTokenizer

    spec = TinyModelSpec(num_layers=1, hidden_size=64, num_heads=2, num_kv_heads=2, head_dim=32,
                         intermediate_size=64, vocab_size=1024)
    tok = AutoTokenizer.from_pretrained(str(make_tiny_model(tmp_path / "m", spec)))
    assert len(tok) == spec.vocab_size
    special = set(tok.all_special_ids)
    for i in range(spec.vocab_size):
        if i not in special:
            text = tok.decode([i])
            assert text and "\ufffd" not in text, (i, text)


def test_prompts_of_the_corpus_words_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(make_tiny_model(tmp_path / "m", TinyModelSpec(num_layers=1))))
    text = "the cache page layer object store\nbucket prefix token"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
