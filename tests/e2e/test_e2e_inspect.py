"""objectcache-inspect against one live CPU SGLang server (default Rust tree core) on SeaweedFS:
the tree shows a prompt's prefix in the expected tiers before and after /flush_cache, the
metrics move on hits and on a corrupt object, verify finds that object, and gc keeps exactly
the most recently used pages. Tests share the server and run in file order."""

from __future__ import annotations

import json
import random
import time
import uuid

import pytest
import requests

from sglang_objectcache.config import ObjectCacheConfig
from objectcache_dev.harness.server import cpu_args, objectcache_args
from objectcache_dev.harness.workloads import words
from sglang_objectcache.inspect import accesslog, cli, layout
from sglang_objectcache.store import make_store

pytestmark = pytest.mark.e2e

PAGE = 64
PAGES = 4  # 300-word prompts: 300 tokens, 4 full pages cached (the last token never is)


@pytest.fixture(scope="module")
def bucket_cfg(s3):
    name = f"inspect-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(name)
    return s3.config(name)


@pytest.fixture(scope="module")
def store(bucket_cfg):
    st = make_store(ObjectCacheConfig.from_dict(bucket_cfg))
    yield st
    st.close()


@pytest.fixture(scope="module")
def server(sglang_server, bucket_cfg):
    # The tree endpoint is off unless asked for, and shows prompts only to the admin key.
    return sglang_server(cpu_args() + objectcache_args(bucket_cfg) + ["--enable-metrics", "--admin-api-key", ADMIN],
                         name="inspect", env={"OBJECTCACHE_ACCESS_LOG_INTERVAL_S": "1",
                                              "OBJECTCACHE_METRICS_INTERVAL_S": "0.5", "OBJECTCACHE_TREE_ENDPOINT": "1"})


ADMIN = "inspect-admin-key"


def prompt(seed: int) -> str:
    return words(random.Random(f"inspect-{seed}"), 300)


def run_cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    argv = list(argv)
    if argv[0] == "tree":
        argv += ["--api-key", ADMIN]
    rc = cli.main(argv)
    return rc, capsys.readouterr().out


def tree(capsys, server, text: str, head: bool = True) -> dict:
    rc, out = run_cli(capsys, "tree", "--url", server.url, "--prefix", text, "--json", *(["--head"] if head else []))
    assert rc == 0, out
    (t,) = json.loads(out)["trees"]
    return t


def wait_until(fn, timeout_s: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or fn}")
        time.sleep(0.3)


def stored(capsys, server, text: str) -> dict:
    """The tree once the prompt's pages are all in the store (write-back is asynchronous)."""
    return wait_until(lambda: (lambda t: t if t["query"].get("store_pages_present") == PAGES else None)(
        tree(capsys, server, text)), what="write-back of the prompt's pages")


def settled_metrics(server) -> dict[str, float]:
    """Metrics once the exporter has caught up: two reads three export intervals apart agree
    (the exporter runs every 0.5 s here, and a test can finish well within that)."""
    last = metrics(server)
    for _ in range(40):
        time.sleep(1.5)
        now = metrics(server)
        if now == last:
            return now
        last = now
    raise AssertionError("the metrics never settled")


def metrics(server) -> dict[str, float]:
    out = {}
    for line in requests.get(server.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(("objectcache_", "sglang:prefetched_tokens_total")):
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0] if name.startswith("sglang:") else name] = float(value)
    return out


def page_keys(store) -> set[str]:
    return {o.key for o in store.list("") if layout.classify(o.key, "objectcache").kind == layout.PAGE}


def test_tree_shows_the_prefix_in_each_tier_before_and_after_flush(server, store, capsys):
    text = prompt(1)
    first = server.client.generate(text, max_new_tokens=2)
    assert first.prompt_tokens == 300 and first.cached_tokens == 0

    t = stored(capsys, server, text)
    q = t["query"]
    assert t["core"] == "rust" and q["pages"] == PAGES
    assert (q["tree_tokens"], q["device_tokens"], q["host_tokens"]) == (PAGES * PAGE,) * 3
    assert q["store_pages_known"] == PAGES
    path = [n for n in t["nodes"] if n["start"] < PAGES * PAGE]
    assert path and all(n["device"] and n["host"] and n["store"]["known"] == n["store"]["pages"] for n in path)
    assert sum(n["pages"] for n in path) == PAGES
    assert " ".join(text.split()[:5]) in " ".join(path[0]["preview"].split())
    assert set(q["object_keys"]) <= page_keys(store)

    # The rich rendering of the same reply.
    rc, out = run_cli(capsys, "tree", "--url", server.url, "--prefix", text)
    assert rc == 0 and "GPU ●" in out and "host ●" in out and f"store {PAGES}/{PAGES}" in out

    server.client.flush_cache()
    t = tree(capsys, server, text)
    assert t["totals"]["nodes"] == 0 and t["nodes"] == []
    assert (t["query"]["tree_tokens"], t["query"]["store_pages_present"]) == (0, PAGES)

    again = server.client.generate(text, max_new_tokens=2)
    assert (again.device, again.host, again.storage) == (0, 0, PAGES * PAGE)
    t = tree(capsys, server, text)
    assert (t["query"]["tree_tokens"], t["query"]["device_tokens"], t["query"]["host_tokens"]) == (PAGES * PAGE,) * 3


def test_metrics_move_on_hits_and_on_a_corrupt_object_that_verify_then_finds(server, store, bucket_cfg, capsys):
    hit_text, bad_text = prompt(2), prompt(3)
    server.client.generate(hit_text, max_new_tokens=2)
    server.client.generate(bad_text, max_new_tokens=2)
    stored(capsys, server, hit_text)
    bad_keys = stored(capsys, server, bad_text)["query"]["object_keys"]
    before = settled_metrics(server)
    server.client.flush_cache()

    assert server.client.generate(hit_text, max_new_tokens=2).storage == PAGES * PAGE
    wait_until(lambda: metrics(server)["objectcache_storage_hits_total"] >= before.get(
        "objectcache_storage_hits_total", 0) + PAGES, 30, "hit metrics")
    m = settled_metrics(server)  # one scrape can see a counter moved before its histogram
    d = lambda name: m.get(name, 0.0) - before.get(name, 0.0)  # noqa: E731
    object_bytes = next(o.size for o in store.list("") if o.key == bad_keys[0])
    assert d("objectcache_storage_hits_total") == PAGES
    assert d("objectcache_bytes_read_total") == PAGES * object_bytes
    assert d('objectcache_requests_total{op="get"}') == PAGES
    assert d("objectcache_get_latency_seconds_count") == PAGES
    assert d("sglang:prefetched_tokens_total") == PAGES * PAGE

    # Damage one payload byte of the other prompt's first page, in place: a counted miss,
    # and the backend deletes the object so the recomputed page is stored again.
    body = bytearray(store.get(bad_keys[0]))
    body[-1] ^= 0xFF
    store.put(bad_keys[0], bytes(body), if_absent=False)
    server.client.flush_cache()
    missed = server.client.generate(bad_text, max_new_tokens=2)
    assert missed.storage == 0 and missed.cached_tokens == 0
    wait_until(lambda: metrics(server).get("objectcache_checksum_failures_total", 0) > before.get(
        "objectcache_checksum_failures_total", 0), 30, "checksum metrics")
    m = settled_metrics(server)
    assert d("objectcache_checksum_failures_total") == 1
    assert d('objectcache_storage_misses_total{reason="corrupt"}') == PAGES  # the whole run after it
    assert d("objectcache_corrupt_deleted_total") == 1
    assert d("objectcache_storage_hits_total") == PAGES

    # A damaged object no server has read yet: verify finds it, and only it; --repair deletes it.
    victim = stored(capsys, server, hit_text)["query"]["object_keys"][-1]
    body = bytearray(store.get(victim))
    body[-1] ^= 0xFF
    store.put(victim, bytes(body), if_absent=False)
    stored(capsys, server, bad_text)  # the recomputed page is back
    cfg = json.dumps(bucket_cfg)
    rc, out = run_cli(capsys, "verify", "--config", cfg, "--json")
    report = json.loads(out)
    assert rc == 1 and [(f["key"], f["problem"]) for f in report["findings"]] == [(victim, "corrupt")]
    assert report["ok"] == len(page_keys(store)) - 1
    rc, out = run_cli(capsys, "verify", "--config", cfg, "--repair", "--json")
    assert rc == 0 and json.loads(out)["repaired"] == 1 and store.get(victim) is None


def test_access_log_records_hits_and_gc_keeps_exactly_the_most_recently_used(server, store, bucket_cfg, capsys):
    text = prompt(4)
    server.client.generate(text, max_new_tokens=2)
    keep = set(stored(capsys, server, text)["query"]["object_keys"])
    server.client.flush_cache()
    assert server.client.generate(text, max_new_tokens=2).storage == PAGES * PAGE  # a read, logged
    ns_prefix = next(iter(keep)).rsplit("/", 2)[0] + "/"
    contents = {k.rsplit("/", 1)[-1] for k in keep}
    wait_until(lambda: contents <= set(accesslog.read(store, ns_prefix)[0]), 30, "the access log flush")
    store.put_many([("objectcache/notes.txt", b"not ours"), ("elsewhere/x", b"not ours")])
    pages_before = page_keys(store)
    assert len(pages_before) > len(keep)  # the earlier tests' prompts are older

    cfg = json.dumps(bucket_cfg)
    size = next(o.size for o in store.list("") if o.key in keep)
    rc, out = run_cli(capsys, "gc", "--config", cfg, "--max-bytes", str(PAGES * size), "--json")
    dry = json.loads(out)
    assert rc == 0 and dry["dry_run"] and {v["key"] for v in dry["victims"]} == pages_before - keep
    assert page_keys(store) == pages_before

    rc, out = run_cli(capsys, "gc", "--config", cfg, "--max-bytes", str(PAGES * size), "--delete", "--json")
    assert rc == 0 and json.loads(out)["deleted"] == len(pages_before - keep)
    left = {o.key for o in store.list("")}
    assert page_keys(store) == keep
    assert {"objectcache/notes.txt", "elsewhere/x", ns_prefix + "_namespace.json"} <= left
    assert len([k for k in left if layout.classify(k, "objectcache").kind == layout.ACCESS_LOG]) == 1

    # The server's known-keys cache still believes in a deleted prompt; HEAD does not.
    old = tree(capsys, server, prompt(1))["query"]
    assert old["store_pages_known"] == PAGES and old["store_pages_present"] == 0
