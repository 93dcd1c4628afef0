"""Re-read page objects and check them without knowing SGLang's page hashes.

A verifier sees only the key `{prefix}/{ns}/{shard}/{content}` and the bytes. That is
enough, because the key is built as `content = content_digest(page_hash).hex()` and the
header stores that same digest:
- corrupt:     the bytes fail the format (size, magic, header checksum, any layer
               checksum). A reader would reject them: a miss, and wasted bytes.
- misplaced:   intact, but stored under a key it does not belong to (the header's digest is
               not the key's content id, or the shard directory is wrong). Unreachable.
- orphaned:    intact, but its geometry is not its namespace's (`_namespace.json`), so no
               server of that namespace can use it. Unreachable.
- unsupported: a well-formed start of an object this code cannot read: another format
               version, or a kind or dtype code it does not know. A newer writer may share
               the bucket, so this is reported and never deleted.

Reads are bounded: each object is read with one ranged GET of at most the size its
namespace's geometry implies, plus one byte (so an object too long still shows). Where a
namespace has no valid `_namespace.json`, its objects are checked against their own
headers: the first `objformat.ALIGN` bytes are read, then the object up to the size its
header claims (+1).

`repair` deletes nothing on the strength of the run's one read. It asks the store for proof
(`scrub.prove_corrupt`, as the server's scrub does): the stored size differs from the
geometry's, or a bounded re-read fails its checks and its bytes are the ones the store holds
(their MD5 is the ETag; two identical failing reads where the ETag is no MD5). Each object
is checked against what its key must hold: its namespace's geometry (its header's, where the
namespace has none) and the key's content id. An object that fails the run's read but not
the proof (damaged on the way, rewritten since, or only in the wrong shard directory) is kept
and reported as not proven. Only keys that parse as page objects are ever deleted. Objects
that vanish or fail to read during the run are counted, never deleted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Optional

from sglang_objectcache import objformat
from sglang_objectcache.inspect import layout
from sglang_objectcache.inspect.bucket import Scan
from sglang_objectcache.store import StoreError

PROBLEMS = ("corrupt", "misplaced", "orphaned", "unsupported")
REPAIRABLE = ("corrupt", "misplaced", "orphaned")  # deleted by `repair`, once the store proves them
PROOF_BATCH = 64  # HEADs per `prove_corrupt` call


@dataclass(frozen=True)
class Finding:
    key: str
    problem: str  # one of PROBLEMS
    detail: str


@dataclass(frozen=True)
class Report:
    checked: int
    ok: int
    bytes_read: int
    findings: tuple[Finding, ...]
    vanished: int = 0  # deleted between listing and reading
    unreadable: tuple[str, ...] = ()  # store errors: not judged
    unverified_namespaces: dict = field(default_factory=dict)  # digest -> why
    # key -> (geometry, key digest) the object must have to be usable: what `repair` asks
    # the store to prove it lacks. Geometry None: unknown (no namespace geometry, header
    # unreadable), so nothing can be proven.
    expected: dict = field(default_factory=dict, repr=False, compare=False)

    def by_problem(self) -> dict[str, int]:
        return {p: sum(1 for f in self.findings if f.problem == p) for p in PROBLEMS}


@dataclass(frozen=True)
class Repair:
    deleted: tuple[str, ...] = ()  # proven corrupt in the store, and deleted
    proofs: dict = field(default_factory=dict)  # key -> the proof, for each deleted key
    kept: dict = field(default_factory=dict)  # key -> why not deleted (every repairable finding left)
    gone: tuple[str, ...] = ()  # vanished before the proof
    count: int = 0  # how many of `deleted` the store reports gone (`delete_many`)

    def action(self, f: Finding) -> str:
        """What repair did with finding `f`, in words."""
        if f.key in self.proofs:
            return "deleted"
        if f.key in self.gone:
            return "gone"
        if f.problem not in REPAIRABLE:
            return "kept"
        return f"{self.kept.get(f.key, 'not proven')}: kept"


def check_object(key: str, blob, namespace_geometry: Optional[objformat.PageGeometry],
                 prefix: str) -> Optional[Finding]:
    """The problem with one page object, or None if it is sound. `blob` is the object's
    first bytes: at least its expected size + 1 where it is longer."""
    p = layout.classify(key, prefix)
    assert p.kind == layout.PAGE, key
    try:
        geometry, digest = objformat.peek_header(blob)
        if namespace_geometry is not None and geometry != namespace_geometry:
            objformat.decode_header(blob, geometry, digest)  # a sound header of another shape?
            return Finding(key, "orphaned", f"geometry {geometry} differs from the namespace's {namespace_geometry}")
        objformat.decode(blob, geometry, digest)
    except objformat.UnsupportedFormat as e:
        return Finding(key, "unsupported", str(e))
    except objformat.FormatError as e:
        return Finding(key, "corrupt", str(e))
    if digest.hex() != p.content:
        return Finding(key, "misplaced", f"header belongs to content id {digest.hex()}")
    if not p.shard_ok:
        return Finding(key, "misplaced", f"shard directory {p.shard}, expected {p.content[:len(p.shard)]}")
    return None


def _header_geometry(blob) -> Optional[objformat.PageGeometry]:
    try:
        return objformat.peek_header(blob)[0]
    except objformat.FormatError:
        return None


def _read(store, reqs: list[tuple[str, int, int]]) -> list:
    """Ranged GETs from offset 0; an empty object (a 416 for [0, n)) reads as b''."""
    out = store.get_ranges(reqs) if reqs else []
    return [b"" if isinstance(r, StoreError) and r.status == 416 else r for r in out]


def verify(store, s: Scan, batch: int = 16, sample: Optional[int] = None, seed: int = 0,
           on_progress: Optional[Callable[[int, int], None]] = None) -> Report:
    """Read and check every page of the scan (or `sample` random pages per namespace)."""
    todo, geometry, unverified = [], {}, {}
    rng = random.Random(seed)
    for digest, ns in s.namespaces.items():
        geometry[digest] = ns.geometry
        if ns.geometry is None:
            unverified[digest] = ns.description_error or "no geometry"
        pages = [o.key for o in ns.pages]
        if sample is not None and sample < len(pages):
            pages = rng.sample(pages, sample)
        todo.extend((k, digest) for k in pages)
    findings, unreadable, expected = [], [], {}
    ok = vanished = nbytes = done = 0
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        # One bounded read per object where the namespace says how big its objects are;
        # otherwise the header first, then the object up to the size the header claims.
        first = _read(store, [(k, 0, geometry[d].object_bytes + 1 if geometry[d] else objformat.ALIGN)
                              for k, d in chunk])
        blobs = list(first)
        again = [j for j, ((_, d), b) in enumerate(zip(chunk, first))
                 if geometry[d] is None and b is not None and not isinstance(b, StoreError)
                 and len(b) >= objformat.ALIGN and _header_geometry(b) is not None]
        for j, b in zip(again, _read(store, [(chunk[j][0], 0, _header_geometry(first[j]).object_bytes + 1)
                                            for j in again])):
            nbytes += len(memoryview(first[j]).cast("B"))
            blobs[j] = b
        for (key, digest), blob in zip(chunk, blobs):
            done += 1
            if blob is None:
                vanished += 1
                continue
            if isinstance(blob, StoreError):
                unreadable.append(f"{key}: {blob}")
                continue
            nbytes += len(memoryview(blob).cast("B"))
            f = check_object(key, blob, geometry[digest], s.prefix)
            if f is None:
                ok += 1
                continue
            findings.append(f)
            content = layout.classify(key, s.prefix).content
            expected[key] = (geometry[digest] or _header_geometry(blob), bytes.fromhex(content))
        if on_progress is not None:
            on_progress(done, len(todo))
    return Report(len(todo), ok, nbytes, tuple(findings), vanished, tuple(unreadable), unverified, expected)


def repair(store, report: Report, prefix: str) -> Repair:
    """Delete the objects `report` found corrupt, misplaced or orphaned that the store
    proves are (`scrub.prove_corrupt`); keep the rest, and every unsupported one."""
    from sglang_objectcache.scrub import prove_corrupt

    candidates = [f for f in report.findings if f.problem in REPAIRABLE]
    for f in candidates:  # defence in depth: never anything but our page objects
        if layout.classify(f.key, prefix).kind != layout.PAGE:
            raise ValueError(f"refusing to delete {f.key!r}: not a page object under {prefix!r}")
    kept, proofs, gone = {}, {}, []
    by_geometry: dict = {}
    for f in candidates:
        g, digest = report.expected.get(f.key, (None, None))
        if g is None:
            kept[f.key] = "not proven (geometry unknown)"
        else:
            by_geometry.setdefault(g, []).append((f.key, digest))
    for g, items in by_geometry.items():
        for i in range(0, len(items), PROOF_BATCH):
            part = items[i:i + PROOF_BATCH]
            for (key, _), why in zip(part, prove_corrupt(store, g, [k for k, _ in part], [d for _, d in part])):
                if why is None:
                    gone.append(key)
                elif why:
                    proofs[key] = why
                else:
                    kept[key] = "not proven"
    doomed = [f.key for f in candidates if f.key in proofs]
    count = store.delete_many(doomed) if doomed else 0
    return Repair(tuple(doomed), proofs, kept, tuple(gone), count)


def problems_left(report: Report, fixed: Optional[Repair] = None) -> list[Finding]:
    """The repairable findings still in the bucket (all of them without a repair).
    Unsupported objects are another writer's: reported, never a problem to fix."""
    done = set(fixed.deleted) | set(fixed.gone) if fixed is not None else set()
    return [f for f in report.findings if f.problem in REPAIRABLE and f.key not in done]
