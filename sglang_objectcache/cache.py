"""`ObjectCache`: the cache core beneath both faces, page mode's HiCache backend
(`sglang/hicache_backend.py`) and the layerwise linker (`sglang/layerwise_linker.py`).

It owns everything that must mean the same in both modes, so each mode reads what the
other wrote and both fail the same way:
- identity: the namespace, derived from one `RankIdentity` (`keys.make_namespace`), and
  rotated when SGLang changes the weights (`rotate`). Faces read `cache.keys` once per
  batch, so a batch never mixes two namespaces;
- known keys, and the leading run of pages present (`leading_run`), asked of a store with
  short timeouts (`probe_config`): lookups may run on SGLang's scheduler thread;
- store health. Only store-wide failures (connection, timeout, 5xx, throttling) open a
  down window (`health.DownWindow`): reads and lookups answer "miss" at once for
  `negative_ttl_s`. A failed write opens one for writes; a failed read never fails a
  write. A per-object 4xx is that object's miss only;
- whether a fetched object is usable (`verdict`), the one decision both modes take;
- the scrub, which deletes only what is proven corrupt (`scrub.prove_corrupt`), and holds
  back writes of the names it is checking until it ends (`after_scrub`, `scrub.Holds`);
- write-result accounting (`wrote`) and the observers (access log, metrics), called here
  explicitly rather than hooked onto a face;
- how much of a hit to load, the rest recomputed (`loadable`, `compute_or_load.Policy`), on
  rates both faces feed (`policy.meter`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Optional, Sequence

from sglang_objectcache import objformat
from sglang_objectcache.compute_or_load import Hit, Policy
from sglang_objectcache.health import DownWindow
from sglang_objectcache.keys import KeyScheme, RankIdentity, make_namespace
from sglang_objectcache.known import KnownKeys
from sglang_objectcache.stats import Stats
from sglang_objectcache.scrub import Holds, prove_corrupt
from sglang_objectcache.store import INTO, StoreError
from sglang_objectcache.store.base import CLOCK_SKEW_HINT

logger = logging.getLogger(__name__)

# verdicts: '' (usable) or a miss reason
NOT_FOUND, STORE_ERROR, CORRUPT, UNSUPPORTED = "not_found", "store_error", "corrupt", "unsupported"


def probe_config(cfg):
    """The settings of the store that answers existence (HEADs): lookups run on SGLang's
    scheduler thread (layerwise) or ahead of a prefetch, so a hung store must cost them
    about a second, once; after that the down window answers at once."""
    import dataclasses

    return dataclasses.replace(
        cfg, connect_timeout_s=min(cfg.connect_timeout_s, 0.5), read_timeout_s=min(cfg.read_timeout_s, 1.0),
        retries=0, request_deadline_s=min(cfg.request_deadline_s, 1.5))


def open_probe(cfg, store):
    """A second client of the same store, with `probe_config`'s timeouts (the store itself
    where a second client is costly: NIXL agents)."""
    if cfg.transport == "nixl":
        return store
    from sglang_objectcache.store import make_store

    return make_store(probe_config(cfg))


class ObjectCache:
    def __init__(self, cfg, store, rank: RankIdentity, stats: Optional[Stats] = None, probe=None):
        self.cfg, self.store = cfg, store
        self.probe = probe or store  # answers HEADs: `probe_config`
        self.stats = stats or Stats()
        self.rank = rank
        self.keys = KeyScheme(cfg.key_prefix, make_namespace(cfg, rank))
        self.known = KnownKeys(cfg.exists_cache_entries)
        self.policy = Policy.of(cfg)
        self.reads_down = DownWindow(cfg.negative_ttl_s, "reads and lookups miss")
        self.writes_down = DownWindow(cfg.negative_ttl_s, "writes are skipped")
        # After a weight update that kept SGLang's radix cache (flush_cache=False), its
        # pages hold old-weight KV under no namespace we can tell: store nothing, read
        # nothing, until SGLang flushes.
        self.suspended = False
        self.frozen = False  # a rotation failed: suspended for good
        self._auth_warned = -60.0
        self.on_rotate: list[Callable[["ObjectCache"], None]] = []
        self._holds = Holds()  # names under scrub, and the writes waiting on them
        self._scrubber = None  # one thread: `scrub_later`'s scrubs run one at a time
        self.describe()

    @property
    def geometry(self) -> objformat.PageGeometry:
        return self.rank.geometry

    # ---- identity ------------------------------------------------------------------------

    def describe(self) -> None:
        """Write `_namespace.json` (what the namespace holds, for objectcache-inspect)."""
        ns = self.keys.namespace
        body = json.dumps(ns.describe(), sort_keys=True, indent=1).encode()
        try:
            self.store.put(self.keys.namespace_file, body, if_absent=True)
        except Exception as e:  # noqa: BLE001 - a description for tools; never fatal
            logger.warning("objectcache: could not write %s: %s", self.keys.namespace_file, e)
        logger.info("objectcache: namespace %s = %s", ns.digest, ns.describe())

    def rotate(self, weights: str, suspend: bool = False) -> None:
        """The weights changed: a new namespace, nothing known, no host-tier entry reused
        (the faces' tiers are keyed by object key, so the old entries can never match)."""
        self.rank = self.rank.updated(self.rank.model.after_update(weights))
        self.keys = KeyScheme(self.cfg.key_prefix, make_namespace(self.cfg, self.rank))
        self.known.clear()
        self.suspended = suspend
        self.stats.inc("namespace_rotations")
        logger.warning("objectcache: weights updated: pages now go to namespace %s%s", self.keys.namespace.digest,
                       " (storage paused until the cache is flushed)" if suspend else "")
        for fn in self.on_rotate:
            fn(self)
        self.describe()

    # ---- health --------------------------------------------------------------------------

    def can_read(self) -> bool:
        return not (self.suspended or self.reads_down)

    def can_write(self) -> bool:
        return not (self.suspended or self.writes_down)

    def note_error(self, err: StoreError, write: bool = False) -> None:
        self.stats.inc(("write_errors_" if write else "store_errors_") + err.kind)
        if err.store_wide:
            (self.writes_down if write else self.reads_down).open(err)
        elif err.kind == "auth":
            self._warn_auth(err)

    def _warn_auth(self, err: StoreError) -> None:
        # Refused credentials (revoked, expired, a clock gone wrong) make every page a miss
        # without taking the store down: say so, once a minute, or nobody knows.
        now = time.monotonic()
        if now - self._auth_warned < 60.0:
            return
        self._auth_warned = now
        hint = f" ({CLOCK_SKEW_HINT})" if "RequestTimeTooSkewed" in str(err) else ""
        logger.error("objectcache: the store refused our credentials: %s%s; pages are misses until it "
                     "accepts them", err, hint)

    def note_ok(self) -> None:
        self.reads_down.ok()
        self.writes_down.ok()

    # ---- existence -----------------------------------------------------------------------

    def loadable(self, hit: Hit, mode: str, local: int = 0) -> int:
        """Of a hit whose first `local` pages are held locally (loaded at no store cost)
        followed by `hit.pages` in the store, how many leading pages to load."""
        c = self.policy.choose(hit, mode)
        if c.load_pages < hit.pages:
            self.stats.inc("policy_pages_computed", hit.pages - c.load_pages)
            self.stats.inc("policy_" + c.reason)
        return local + c.load_pages

    def leading_run(self, names: Sequence[str], local: Callable[[str], bool] = lambda n: False) -> int:
        """How many of `names`, from the first, are present: held locally (`local`), known,
        or found by HEAD. While reads are down only local copies count: a prefetch of a
        page the store cannot serve could only fail."""
        n = 0
        if not self.can_read():
            while n < len(names) and local(names[n]):
                n += 1
            return n
        while n < len(names) and (names[n] in self.known or local(names[n])):
            n += 1
        if n == len(names):
            return n
        rest = names[n:]
        self.stats.inc("head_requests", len(rest))
        for name, r in zip(rest, self.probe.exists_prefix(rest)):
            if isinstance(r, StoreError):
                self.note_error(r)
                return n
            if not r:
                return n
            self.known.add(name)
            n += 1
        self.note_ok()
        return n

    # ---- usability -----------------------------------------------------------------------

    def verdict(self, name: str, result, digest: bytes, check: Optional[Callable[[], None]] = None) -> str:
        """'' if a GET result can be used, else the miss reason. `result` is a body, None
        (absent), a StoreError or INTO (then `check` checks what went through the receiver)."""
        if isinstance(result, StoreError):
            if result.status == 416:  # a range past the end: the object is shorter than its header says
                return CORRUPT
            self.note_error(result)
            return STORE_ERROR
        if result is None:
            self.known.discard(name)
            return NOT_FOUND
        try:
            if result is INTO:
                check()
            else:
                objformat.decode(result, self.geometry, digest)
        except objformat.UnsupportedFormat as e:
            logger.warning("objectcache: object %s is of another format (%s): a miss", name, e)
            return UNSUPPORTED
        except objformat.FormatError as e:
            self.stats.inc("checksum_failures")
            logger.warning("objectcache: object %s is unusable (%s): a miss", name, e)
            return CORRUPT
        return ""

    # ---- scrub ---------------------------------------------------------------------------

    def scrub(self, names: Sequence[str], digests: Sequence[bytes]) -> list[str]:
        """Delete the objects among `names` proven corrupt (`prove_corrupt`), so their pages
        can be stored again; forget every one that is gone. Returns the deleted names.
        Writes of `names` wait until it ends (`after_scrub`)."""
        self._holds.hold(names)
        try:
            return self._scrub(names, digests)
        finally:
            self._holds.release(names)

    def scrub_later(self, names: Sequence[str], digests: Sequence[bytes]) -> None:
        """`scrub` on the cache's scrub thread; returns at once. Callers on SGLang's scheduler
        thread or the layerwise I/O thread must not wait for its re-reads (seconds on a slow
        store). The names are held from this call on, so a write issued before the scrub
        has even started still waits for it."""
        names, digests = list(names), list(digests)
        self._holds.hold(names)
        try:
            if self._scrubber is None:
                from concurrent.futures import ThreadPoolExecutor

                self._scrubber = ThreadPoolExecutor(1, thread_name_prefix="objectcache-scrub")
            self._scrubber.submit(self._scrub_then_release, names, digests)
        except Exception:  # noqa: BLE001 - closed: no scrub, and nothing may wait for one
            self._holds.release(names)

    def _scrub_then_release(self, names: list[str], digests: list[bytes]) -> None:
        try:
            self.scrub(names, digests)
        except Exception:  # noqa: BLE001 - a failed scrub deletes nothing; writes go on
            logger.exception("objectcache: scrub failed")
        finally:
            self._holds.release(names)

    def held(self, name: str) -> bool:
        """A scrub is checking `name` (or is about to)."""
        return name in self._holds

    def after_scrub(self, names: Sequence[str], fn: Callable[[], None]) -> None:
        """Run `fn` (a write of `names`) now if no scrub holds any of them, else once the
        last such scrub ends, on its thread. A write that raced the scrub would be refused by
        the corrupt object (writes are conditional), which the scrub then deletes: the page
        would be gone from the store, yet known, until computed again."""
        self._holds.after(names, fn)

    def _scrub(self, names: Sequence[str], digests: Sequence[bytes]) -> list[str]:
        doomed = []
        for name, digest, why in zip(names, digests, self.prove_corrupt(names, digests)):
            if why is None:
                self.known.discard(name)  # gone already
            elif why:
                logger.warning("objectcache: object %s is corrupt in the store (%s); deleting it so the "
                               "page can be stored again", name, why)
                doomed.append(name)
        if doomed:
            try:
                self.store.delete_many(doomed)
            except StoreError as e:
                logger.warning("objectcache: could not delete corrupt objects: %s", e)
                return []
            for name in doomed:
                self.known.discard(name)
        self.stats.inc("corrupt_deleted", len(doomed))
        return doomed

    def prove_corrupt(self, names: Sequence[str], digests: Sequence[bytes]) -> list[Optional[str]]:
        return prove_corrupt(self.store, self.geometry, names, digests, self.stats)

    # ---- writes --------------------------------------------------------------------------

    def wrote(self, names: Sequence[str], results: Sequence, object_bytes: int) -> list[bool]:
        """Account PUT results (True written, False already there, StoreError failed)."""
        out, written = [], 0
        for name, r in zip(names, results):
            if isinstance(r, StoreError):
                self.note_error(r, write=True)
                out.append(False)
                continue
            self.known.add(name)
            written += bool(r)
            self.stats.inc("pages_written" if r else "pages_deduped")
            out.append(True)
        self.stats.inc("bytes_written", written * object_bytes)
        return out

    # ---- observers -----------------------------------------------------------------------

    def start_observers(self, metrics: bool = True) -> None:
        """The access log (for `objectcache-inspect gc`) and the Prometheus exporter."""
        try:
            from sglang_objectcache import metrics as prom
            from sglang_objectcache.inspect import accesslog

            log = accesslog.log_for(self)
            if log is not None:
                log.flush()
            if metrics:
                prom.start_exporter(self.cfg.metrics_interval_s)
        except Exception:  # noqa: BLE001 - observability never blocks serving
            logger.exception("objectcache: access log / metrics not started")

    def observe_hits(self, names: Sequence[str]) -> None:
        if not names:
            return
        try:
            from sglang_objectcache.inspect import accesslog

            log = accesslog.log_for(self)
            if log is not None:
                log.record(names)
        except Exception:  # noqa: BLE001 - bookkeeping must never fail a read
            logger.exception("objectcache: access log record failed")

    def close(self) -> None:
        try:
            from sglang_objectcache.inspect import accesslog

            accesslog.flush_log(self)
        except Exception:  # noqa: BLE001
            logger.exception("objectcache: access log flush failed")
        if self._scrubber is not None:  # a scrub still running ends on its own; none starts
            self._scrubber.shutdown(wait=False, cancel_futures=True)
        if self.probe is not self.store:
            self.probe.close()

