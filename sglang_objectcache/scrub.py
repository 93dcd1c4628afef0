"""What the cache core's scrub relies on: proof that a stored object is corrupt, and the
holds that keep writes of the names a scrub is checking back until it ends.

- `prove_corrupt` is the one judge of a stored object, for the server's scrub
  (`cache.ObjectCache.scrub`) and `objectcache-inspect verify --repair` alike: nothing is
  deleted on the strength of one bad read.
- `Holds` counts the scrubs checking each name and runs the writes waiting on them once the
  last such scrub ends (`ObjectCache.after_scrub` says why a write must wait).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional, Sequence

from sglang_objectcache import objformat
from sglang_objectcache.stats import Stats
from sglang_objectcache.store import StoreError, etag_matches

logger = logging.getLogger(__name__)


class Holds:
    """Names under scrub (a count each: scrubs may overlap) and the writes waiting on them."""

    def __init__(self):
        self._held: dict[str, int] = {}  # name -> scrubs now checking it
        self._waiting: list[tuple[frozenset, Callable[[], None]]] = []  # writes held back by a scrub
        self._lock = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self._held

    def hold(self, names: Sequence[str]) -> None:
        with self._lock:
            for n in names:
                self._held[n] = self._held.get(n, 0) + 1

    def after(self, names: Sequence[str], fn: Callable[[], None]) -> None:
        """Run `fn` now if none of `names` is held, else when the last hold on them is released."""
        with self._lock:
            if any(n in self._held for n in names):
                self._waiting.append((frozenset(names), fn))
                return
        fn()

    def release(self, names: Sequence[str]) -> None:
        """Drop one hold on each name; run (on this thread) the writes no hold keeps back any more."""
        with self._lock:
            for n in names:
                left = self._held.get(n, 0) - 1
                if left > 0:
                    self._held[n] = left
                else:
                    self._held.pop(n, None)
            ready = [fn for held, fn in self._waiting if not any(n in self._held for n in held)]
            self._waiting = [(held, fn) for held, fn in self._waiting if any(n in self._held for n in held)]
        for fn in ready:
            try:
                fn()
            except Exception:  # noqa: BLE001 - one failed write must not keep the others back
                logger.exception("objectcache: a write held back by a scrub failed")


def prove_corrupt(store, geometry: objformat.PageGeometry, names: Sequence[str], digests: Sequence[bytes],
                  stats: Optional[Stats] = None) -> list[Optional[str]]:
    """Per name: why the *stored* object is corrupt, '' if that is not proven (fine, of
    another format, or damaged only on the way), None if it is gone.

    Proof is stable, never one bad read: the size the store reports differs from the
    geometry's (a truncated or extended object; an object of another format version is
    not ours to judge), or a re-read fails its checks and its bytes are the ones the store
    holds (their MD5 is the ETag). Where the ETag is no MD5, two re-reads must return the
    same failing bytes. A body mangled on the way fails the ETag test and deletes nothing
    (`scrub_transient` counts it). Every object read here is read at most at its size."""
    out: list[Optional[str]] = []
    for name, digest, st in zip(names, digests, store.stat_many(list(names))):
        if st is None:
            out.append(None)
        elif isinstance(st, StoreError):
            out.append("")
        elif st.size != geometry.object_bytes:
            out.append(_wrong_size(store, geometry, name, st.size))
        else:
            out.append(_failing_bytes(store, geometry, name, digest, st.etag, stats))
    return out


def _wrong_size(store, g: objformat.PageGeometry, name: str, size: int) -> str:
    why = f"stored size {size}, expected {g.object_bytes}"
    if not size:
        return why
    (head,) = store.get_ranges([(name, 0, min(size, g.header_bytes))])
    if head is None or isinstance(head, StoreError):
        return ""
    try:
        objformat._unpack_fixed(memoryview(head).cast("B"))
    except objformat.UnsupportedFormat:
        return ""  # another format version: not ours to judge
    except objformat.FormatError:
        pass
    return why


def _failing_bytes(store, g: objformat.PageGeometry, name: str, digest: bytes, etag: str,
                   stats: Optional[Stats]) -> str:
    def read():
        (blob,) = store.get_ranges([(name, 0, g.object_bytes)])
        if blob is None or isinstance(blob, StoreError):
            return None, ""
        try:
            objformat.decode(blob, g, digest)
        except objformat.UnsupportedFormat:
            return blob, ""
        except objformat.FormatError as e:
            return blob, str(e)
        return blob, ""

    blob, why = read()
    if not why:
        return ""
    same = etag_matches(blob, etag)
    if same is None:  # no MD5 ETag: a second read must agree byte for byte
        again, why2 = read()
        same = why2 == why and again is not None and bytes(again) == bytes(blob)
    if not same:
        if stats is not None:
            stats.inc("scrub_transient")
        logger.warning("objectcache: object %s read back damaged (%s) but the store holds other bytes; "
                       "kept (damaged on the way?)", name, why)
        return ""
    return why
