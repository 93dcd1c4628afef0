"""Find and delete unusable objects, so their pages can be stored again.

Writes are conditional (If-None-Match: *), so a corrupt or truncated object would block the
correct bytes from ever replacing it; and it can never serve a hit. When a read finds one
unusable object, the other pages read with it are suspect too (one bad disk, one bad
upload): `scrub` verifies them all and deletes every one that fails, nothing else. Only
objects whose checksum, size, geometry or key binding fail are deleted; a page that is
merely missing, or a store error, deletes nothing.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

from sglang_objectcache import objformat
from sglang_objectcache.objformat import PageGeometry
from sglang_objectcache.store import StoreError

logger = logging.getLogger(__name__)


def unusable(blob, geometry: PageGeometry, digest: bytes) -> Optional[str]:
    """Why a fetched object cannot be used, or None if it is fine (or absent / an error)."""
    if blob is None or isinstance(blob, StoreError):
        return None
    try:
        objformat.decode(blob, geometry, digest, verify=True)
    except objformat.FormatError as e:
        return str(e)
    return None


def scrub(store, geometry: PageGeometry, names: Sequence[str], digests: Sequence[bytes],
          blobs: Optional[Sequence] = None, on_deleted: Callable[[str], None] = lambda n: None) -> list[str]:
    """Verify `names` (re-reading them unless `blobs` are given) and delete the unusable ones."""
    if blobs is None:
        blobs = store.get_many(list(names))
    doomed = []
    for name, digest, blob in zip(names, digests, blobs):
        why = unusable(blob, geometry, digest)
        if why:
            logger.warning("objectcache: object %s is unusable (%s); deleting it so the page can be "
                           "stored again", name, why)
            doomed.append(name)
    if doomed:
        try:
            store.delete_many(doomed)
        except StoreError as e:
            logger.warning("objectcache: could not delete unusable objects: %s", e)
            return []
        for name in doomed:
            on_deleted(name)
    return doomed
