"""Re-read page objects and check them without knowing SGLang's page hashes.

A verifier sees only the key `{prefix}/{ns}/{shard}/{content}` and the bytes. That is
enough, because the key is built as `content = content_digest(page_hash).hex()` and the
header stores that same digest:
- corrupt:   the bytes fail the format (size, magic, version, header checksum, any layer
             checksum). A reader would reject them: a miss, and wasted bytes.
- misplaced: intact, but stored under a key it does not belong to (the header's digest is
             not the key's content id, or the shard directory is wrong). Unreachable.
- orphaned:  intact, but its geometry is not its namespace's (`_namespace.json`), so no
             server of that namespace can use it. Unreachable.
`repair` deletes exactly the objects with one of these problems, and only page keys.
Objects that vanish or fail to read during the run are counted, never deleted; namespaces
without a valid `_namespace.json` are checked against each object's own header only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Optional

from sglang_objectcache import objformat
from sglang_objectcache.inspect import layout
from sglang_objectcache.inspect.bucket import Scan
from sglang_objectcache.store import StoreError

PROBLEMS = ("corrupt", "misplaced", "orphaned")


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

    def by_problem(self) -> dict[str, int]:
        return {p: sum(1 for f in self.findings if f.problem == p) for p in PROBLEMS}


def check_object(key: str, blob, namespace_geometry: Optional[objformat.PageGeometry], prefix: str) -> Optional[Finding]:
    """The problem with one page object, or None if it is sound."""
    p = layout.classify(key, prefix)
    assert p.kind == layout.PAGE, key
    try:
        geometry, digest = objformat.peek_header(blob)
        objformat.decode(blob, geometry, digest, verify=True)
    except objformat.FormatError as e:
        return Finding(key, "corrupt", str(e))
    if digest.hex() != p.content:
        return Finding(key, "misplaced", f"header belongs to content id {digest.hex()}")
    if not p.shard_ok:
        return Finding(key, "misplaced", f"shard directory {p.shard}, expected {p.content[:len(p.shard)]}")
    if namespace_geometry is not None and geometry != namespace_geometry:
        return Finding(key, "orphaned", f"geometry {geometry} differs from the namespace's {namespace_geometry}")
    return None


def verify(store, s: Scan, batch: int = 16, sample: Optional[int] = None, seed: int = 0,
           on_progress: Optional[Callable[[int, int], None]] = None) -> Report:
    """GET and check every page of the scan (or `sample` random pages per namespace)."""
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
    findings, unreadable = [], []
    ok = vanished = nbytes = done = 0
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        for (key, digest), blob in zip(chunk, store.get_many([k for k, _ in chunk])):
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
            else:
                findings.append(f)
        if on_progress is not None:
            on_progress(done, len(todo))
    return Report(len(todo), ok, nbytes, tuple(findings), vanished, tuple(unreadable), unverified)


def repair(store, report: Report, prefix: str) -> int:
    """Delete the objects `report` found bad. Returns how many are gone."""
    doomed = [f.key for f in report.findings if f.problem in PROBLEMS]
    for key in doomed:  # defence in depth: never anything but our page objects
        if layout.classify(key, prefix).kind != layout.PAGE:
            raise ValueError(f"refusing to delete {key!r}: not a page object under {prefix!r}")
    return store.delete_many(doomed) if doomed else 0
