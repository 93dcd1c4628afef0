"""The layerwise loader on SGLang's real CPU KV pool and a store, shared by the layerwise unit tests."""

from __future__ import annotations

import time

import torch
from pools import make_pools

from sglang_objectcache import kernels, objformat
from sglang_objectcache.config import ObjectCacheConfig, SchedulerConfig
from sglang_objectcache.identity import ModelIdentity
from sglang_objectcache.keys import KeyScheme, RankIdentity, make_namespace
from sglang_objectcache.layerwise.counter import LayerReadyCounter
from sglang_objectcache.layerwise.fetch import ProcessFetch
from sglang_objectcache.layerwise.hosttier import HostTier
from sglang_objectcache.layerwise.loader import LayerwiseLoader
from sglang_objectcache.layerwise.settings import LoaderHooks, LoaderParts, LoaderSettings
from sglang_objectcache.layerwise.timeline import Timeline
from sglang_objectcache.transfers import TransferScheduler
from sglang_objectcache.sglang.pool_view import device_pool_view
from sglang_objectcache.stats import Stats
from sglang_objectcache.store import make_store

PAGE = 4
SENTINEL = 0x5A


class Rig:
    """A source pool whose pages are in the bucket, and a destination pool to load into."""

    def __init__(self, s3_config: dict, *, host_mb: int = 0, timeout_s: float = 5.0, window: int = 4,
                 layers: int = 3, per_get: int = 1, fetch: str = "process", sched=SchedulerConfig()):
        self.cfg = ObjectCacheConfig.from_dict(s3_config)
        self.src_dev, _ = make_pools("mha", page_size=PAGE, host=False)
        self.dst_dev, _ = make_pools("mha", page_size=PAGE, host=False)
        self.src, self.g, _ = device_pool_view(self.src_dev, PAGE)
        self.dst, _, _ = device_pool_view(self.dst_dev, PAGE)
        g = torch.Generator().manual_seed(7)
        for pair in self.src:
            for t in pair:
                t.view(torch.uint8).copy_(torch.randint(0, 256, t.view(torch.uint8).shape, dtype=torch.uint8, generator=g))
        for pair in self.dst:
            for t in pair:
                t.view(torch.uint8).fill_(SENTINEL)
        self.keys = KeyScheme("oc", make_namespace(self.cfg, RankIdentity(ModelIdentity("m", "test"), self.g, is_mla=False)))
        self.store = make_store(self.cfg)
        self.stats = Stats()
        self.tier = HostTier(host_mb << 20)
        self.timeline = Timeline()
        self.corrupt = []
        self.counter = LayerReadyCounter(self.g.num_layers, timeout_s, on_finish=lambda i: self.loader.stop(i),
                                         on_wait=self.timeline.wait)
        parts = LoaderParts(
            store=self.store, content_digest=self.keys.content_digest, scheduler=TransferScheduler(sched),
            tier=self.tier, timeline=self.timeline, stats=self.stats, counter=self.counter,
            fetch=ProcessFetch(self.cfg, self.g, 4, pinned=False) if fetch == "process" else None)
        self.loader = LayerwiseLoader(
            self.g, self.dst, parts, LoaderSettings(window_layers=window, layers_per_get=per_get),
            LoaderHooks(on_corrupt=lambda names, hashes: self.corrupt.extend(names)))

    def slots(self, pages) -> torch.Tensor:
        return torch.tensor([p * PAGE + t for p in pages for t in range(PAGE)], dtype=torch.int64)

    def put(self, hashes, pages) -> list[str]:
        payload = kernels.gather_all_layers(self.src, self.slots(pages), self.g)
        items = [(self.keys.object_key(h), objformat.sealed(self.g, self.keys.content_digest(h), row.numpy()))
                 for h, row in zip(hashes, payload)]
        assert self.store.put_many(items) == [True] * len(items)
        return [n for n, _ in items]

    def load(self, index_hashes, pages, compute_s: float = 0.0) -> tuple[int, bool]:
        idx = self.counter.update_producer()
        names = [self.keys.object_key(h) for h in index_hashes]
        self.loader.load(idx, ["r"], list(index_hashes), names, self.slots(pages))
        self.counter.set_consumer(idx)
        for layer in range(self.g.num_layers):  # what SGLang's attention layers do
            self.counter.wait_until(layer)
            time.sleep(compute_s)
        ok = self.counter.finish(idx)
        self.counter.set_consumer(-1)
        return idx, ok

    def same(self, src_pages, dst_pages) -> bool:
        a = kernels.gather_all_layers(self.src, self.slots(src_pages), self.g)
        b = kernels.gather_all_layers(self.dst, self.slots(dst_pages), self.g)
        return torch.equal(a, b)

    def untouched(self, pages) -> bool:
        rows = kernels.gather_all_layers(self.dst, self.slots(pages), self.g)
        return bool((rows == SENTINEL).all())

    def close(self):
        self.loader.close()
        self.store.close()


def hashes(n, tag="h"):
    return [f"{tag}{i:063d}" for i in range(n)]
