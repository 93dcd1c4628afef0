"""StagingArena: write staging memory is reused across batches, never shared while lent,
and dropped after an error (a request might still be reading it)."""

from __future__ import annotations

import threading
import time

import pytest

from sglang_objectcache.staging import StagingArena


def test_a_batch_reuses_the_buffer_of_the_last_one():
    arena = StagingArena()
    with arena.rows(4, 16) as a:
        a[:] = 7
        first = a.base
    with arena.rows(2, 16) as b:  # smaller: rows of the same kept buffer
        assert b.base is first
        assert b.shape == (2, 16)
    with arena.rows(8, 16) as c:  # larger: a new buffer, which is then kept
        grown = c.base
        assert grown is not first and c.shape == (8, 16)
    with arena.rows(3, 16) as d:
        assert d.base is grown


def test_a_buffer_is_never_lent_twice_at_once():
    arena = StagingArena()
    with arena.rows(4, 8) as a:
        with arena.rows(4, 8) as b:  # lent already: a fresh one
            assert a.base is not b.base
            a[:] = 1
            b[:] = 2
            assert int(a.sum()) == 32


def test_a_buffer_is_dropped_after_an_error():
    arena = StagingArena()
    with arena.rows(4, 8) as a:
        kept = a.base
    with pytest.raises(RuntimeError):
        with arena.rows(4, 8) as b:
            assert b.base is kept
            raise RuntimeError("the PUT failed; its body may still be read")
    with arena.rows(4, 8) as c:
        assert c.base is not kept


def test_rows_of_another_width_get_their_own_buffer():
    arena = StagingArena()
    with arena.rows(4, 8) as a:
        kept = a.base
    with arena.rows(4, 16) as b:
        assert b.base is not kept and b.shape == (4, 16)


def test_threads_never_share_a_lent_buffer():
    arena, errors = StagingArena(), []

    def batch(tag: int) -> None:
        for _ in range(200):
            with arena.rows(2, 64) as rows:
                rows[:] = tag
                time.sleep(0.0002)  # let another thread write, were it lent the same rows
                if not (rows == tag).all():
                    errors.append(tag)

    threads = [threading.Thread(target=batch, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
