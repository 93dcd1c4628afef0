"""What the tests of objectcache's own HTTP clients (store/httpget.py, store/httpput.py) share."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from typing import Iterator

from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store import make_store
from sglang_objectcache.store.obstore_ import ObstoreStore


def blob(n: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 251 for i in range(n))


def store(s3, bucket, **kw) -> ObstoreStore:
    st = make_store(ObjectCacheConfig.from_dict(s3.config(bucket, transport="obstore", **kw)))
    assert isinstance(st, ObstoreStore)
    return st


@contextmanager
def silent_store(s3, bucket, read_timeout_s: float) -> Iterator[ObstoreStore]:
    """A store whose endpoint accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(srv.accept()) for _ in range(4)], daemon=True).start()
    cfg = {**s3.config(bucket), "endpoint_url": f"http://127.0.0.1:{srv.getsockname()[1]}", "transport": "obstore",
           "read_timeout_s": read_timeout_s}
    st = ObstoreStore(ObjectCacheConfig.from_dict(cfg))
    try:
        yield st
    finally:
        st.close()
        srv.close()
