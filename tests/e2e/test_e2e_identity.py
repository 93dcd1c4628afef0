"""The cache's namespace follows the model's weights, not its name.

Two tiny models share everything but their weights (one spec, two seeds: the same
config.json, tokenizer and shapes). Served under one name, with one `model_id`, on one
bucket, neither may read the other's pages: those pages are the KV of other weights, and
served as a hit they change the answer. The same holds within one server whose weights
SGLang replaces in place (`/update_weights_from_disk`). Model B's answers are checked
against `computed` (salted requests on its own server), model A's against `reference`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from e2e_support import (
    BACKEND, MAX_NEW, BucketL3, computed, launch_on, outputs, prompts, update_weights_from_disk, wait_for_writes,
)
from objectcache_dev.harness.compare import differences

from objectcache_dev.harness.server import ServerPool

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(BACKEND != "objectcache", reason="model_id and the namespace are objectcache's"),
]

NAME = "shared-name"  # --served-model-name and objectcache's model_id, for both models
TEXTS = prompts(2, "identity")


def send(server, texts):
    return [server.client.generate(t, max_new_tokens=MAX_NEW, top_logprobs=2) for t in texts]


def tiers(completions):
    return [(c.device, c.host, c.storage) for c in completions]


class NamedL3(BucketL3):
    """The bucket, with both servers under one served name (the flag travels with the tier's
    arguments so `launch_on` starts a server of either model the same way)."""

    def server_args(self, **overrides) -> list[str]:
        return ["--served-model-name", NAME] + super().server_args(**overrides)


@pytest.fixture(scope="module")
def l3(s3, new_l3):
    bucket = new_l3("identity").bucket
    return NamedL3(s3, bucket, model_id=NAME)


@pytest.fixture(scope="module")
def launch_b(model_b, tmp_path_factory):
    """Like `sglang_server`, for `model_b`."""
    keep = os.environ.get("OBJECTCACHE_E2E_LOG_DIR")
    where = os.path.join(keep, __name__, "model-b") if keep else str(tmp_path_factory.mktemp("model-b-logs"))
    pool = ServerPool(model_b, where)
    try:
        yield pool.launch
    finally:
        pool.close()


@pytest.fixture(scope="module")
def written_by_a(sglang_server, l3, reference):
    """Model A wrote TEXTS' pages to the bucket and stopped; its answers are A's reference."""
    a = launch_on(sglang_server, l3, "model-a")
    before = l3.keys()
    done = send(a, TEXTS)
    written = wait_for_writes(l3, before)
    a.stop()
    assert not differences(done, reference.completions(TEXTS)), "model A's own answers changed"
    return written


@pytest.fixture(scope="module")
def server_b(launch_b, l3, written_by_a):
    return launch_on(launch_b, l3, "model-b")


def test_the_two_models_differ_only_in_their_weights(tiny_model, model_b, server_b, reference):
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (Path(tiny_model) / name).read_bytes() == (Path(model_b) / name).read_bytes(), name
    assert (Path(tiny_model) / "model.safetensors").read_bytes() != (Path(model_b) / "model.safetensors").read_bytes()
    # Else a page of the other model served as a hit could not change an answer.
    assert outputs(computed(server_b, TEXTS)) != outputs(reference.completions(TEXTS))


def test_a_model_with_other_weights_gets_no_storage_hits(server_b, l3, written_by_a):
    done = send(server_b, TEXTS)
    assert [c.storage for c in done] == [0] * len(TEXTS), (
        f"model B was served model A's pages: cached device/host/storage {tiers(done)}")
    bad = differences(done, computed(server_b, TEXTS))
    assert not bad, "model B's answers changed:\n" + "\n".join(bad)


def test_update_weights_from_disk_means_the_next_request_computes(server_b, l3, tiny_model, reference):
    """Page mode. Model B writes a prompt's pages, SGLang swaps in model A's weights (and
    flushes its device and host tiers): the prompt must be computed again, with A's weights.
    Last in this module: server_b serves model A from here on."""
    [text] = prompts(1, "update-page")
    before = l3.keys()
    [first] = send(server_b, [text])
    wait_for_writes(l3, before)
    assert not differences([first], computed(server_b, [text])), "model B's own answer changed"
    update_weights_from_disk(server_b, tiny_model)
    [again] = send(server_b, [text])
    assert tiers([again]) == [(0, 0, 0)], (
        f"after the weight update, cached device/host/storage {tiers([again])}: the old weights' KV was served")
    bad = differences([again], reference.completions([text]))
    assert not bad, "the answer after the update is not model A's:\n" + "\n".join(bad)
