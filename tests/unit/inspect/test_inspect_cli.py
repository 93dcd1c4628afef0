"""objectcache-inspect's argument parsing: sizes and durations, and gc --ttl's unit."""

from __future__ import annotations

import pytest

from sglang_objectcache.inspect import cli


def test_size_and_duration_parsing():
    assert cli.parse_size("10GiB") == 10 * 2**30 and cli.parse_size("500MB") == 500 * 10**6
    assert cli.parse_size("1234") == 1234 and cli.parse_duration("7d") == 7 * 86400
    assert cli.parse_duration("90") == 90 and cli.parse_duration("30m") == 1800


def test_gc_ttl_needs_a_unit(capsys):
    for text, seconds in (("7d", 7 * 86400), ("12h", 12 * 3600), ("30m", 1800), ("45s", 45)):
        assert cli.parser().parse_args(["gc", "--ttl", text]).ttl == seconds
    for bare in ("7", "0.5"):
        with pytest.raises(SystemExit) as e:
            cli.main(["gc", "--bucket", "b", "--ttl", bare, "--delete"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--ttl" in err and "unit" in err and f"{bare}d" in err
