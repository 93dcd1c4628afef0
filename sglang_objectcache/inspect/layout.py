"""What each key in the bucket is, by name alone: the one place the bucket layout is parsed.

    {prefix}/{ns}/_namespace.json          namespace description (keys.NAMESPACE_FILE)
    {prefix}/{ns}/{shard}/{content}        a page object (ns: 16 hex, content: 32 hex)
    {prefix}/{ns}/_access/{name}.log       an access log (accesslog.py)
    anything else                          "other": not ours; tools never delete it

Deleting tools (verify --repair, gc) only ever delete keys that parse as `page` under the
configured prefix, so a shared bucket's other data is safe by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from sglang_objectcache.keys import NAMESPACE_FILE, SHARD_CHARS

ACCESS_DIR = "_access"
PAGE, NAMESPACE, ACCESS_LOG, OTHER = "page", "namespace", "access_log", "other"

_NS = re.compile(r"^[0-9a-f]{16}$")
_CONTENT = re.compile(r"^[0-9a-f]{32}$")
_SHARD = re.compile(r"^[0-9a-f]{%d}$" % SHARD_CHARS)


@dataclass(frozen=True)
class Parsed:
    kind: str
    namespace: Optional[str] = None
    shard: Optional[str] = None
    content: Optional[str] = None

    @property
    def shard_ok(self) -> bool:
        return self.content is not None and self.shard == self.content[:SHARD_CHARS]


def root(prefix: str) -> str:
    return prefix.strip("/") + "/"


def namespace_prefix(prefix: str, namespace: str) -> str:
    return f"{root(prefix)}{namespace}/"


def access_prefix(prefix: str, namespace: str) -> str:
    return f"{namespace_prefix(prefix, namespace)}{ACCESS_DIR}/"


def classify(key: str, prefix: str) -> Parsed:
    r = root(prefix)
    if not key.startswith(r):
        return Parsed(OTHER)
    parts = key[len(r):].split("/")
    if len(parts) < 2 or not _NS.match(parts[0]):
        return Parsed(OTHER)
    ns = parts[0]
    if len(parts) == 2 and parts[1] == NAMESPACE_FILE:
        return Parsed(NAMESPACE, ns)
    if len(parts) == 3 and parts[1] == ACCESS_DIR and parts[2].endswith(".log"):
        return Parsed(ACCESS_LOG, ns)
    if len(parts) == 3 and _SHARD.match(parts[1]) and _CONTENT.match(parts[2]):
        return Parsed(PAGE, ns, parts[1], parts[2])
    return Parsed(OTHER, ns)
