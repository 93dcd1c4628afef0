"""The objectcache instances alive in this process (one per attached backend or linker).

SGLang builds the backend deep inside its cache controller and keeps no handle a plugin
can reach. Components that only observe (the metrics exporter, the radix-tree endpoint)
find the live instances here. Weak references: a detached backend simply disappears.
"""

from __future__ import annotations

import weakref

_live: "weakref.WeakSet" = weakref.WeakSet()


def register(instance) -> None:
    _live.add(instance)


def instances() -> list:
    return list(_live)
