"""Which keys are ours: page objects, namespace descriptions and access logs under the prefix."""

from __future__ import annotations

from inspect_support import PREFIX, page, scheme

from sglang_objectcache.inspect import layout


def test_classify_only_our_layout_is_ours():
    ks = scheme()
    key, _ = page(ks, "h0")
    ns = ks.namespace.digest
    content = key.rsplit("/", 1)[-1]
    assert layout.classify(key, PREFIX) == layout.Parsed(layout.PAGE, ns, content[:2], content)
    assert layout.classify(key, PREFIX).shard_ok
    assert not layout.classify(f"{PREFIX}/{ns}/zz/{content}", PREFIX).kind == layout.PAGE  # shard not hex
    assert not layout.classify(f"{PREFIX}/{ns}/00/{content}", PREFIX).shard_ok
    assert layout.classify(ks.namespace_file, PREFIX).kind == layout.NAMESPACE
    assert layout.classify(f"{PREFIX}/{ns}/_access/h-1-2-x.log", PREFIX).kind == layout.ACCESS_LOG
    for other in (f"elsewhere/{ns}/{content[:2]}/{content}", f"{PREFIX}/notes.txt", f"{PREFIX}/{ns}/README",
                  f"{PREFIX}/{ns.upper()}/{content[:2]}/{content}", f"{PREFIX}x/{ns}/_namespace.json",
                  f"{PREFIX}/{ns}/{content[:2]}/{content}.bak"):
        assert layout.classify(other, PREFIX).kind == layout.OTHER, other
