"""Redis and directory caches against the real local Redis (127.0.0.1:6379)."""

from __future__ import annotations

import os
import secrets
import subprocess
import time

import pytest

from crmmaint.engines.redis import RedisAddress, RedisCache, quote_arg
from crmmaint.errors import EngineError
from crmmaint.inventory import Cache
from crmmaint.transport.local import LocalTransport

TEST_DB = 9


def redis(*args: str, db: int = TEST_DB, stdin: bytes | None = None) -> str:
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-n", str(db), *args],
        input=stdin,
        capture_output=True,
        check=True,
    )
    return out.stdout.decode()


@pytest.fixture
def prefix():
    p = f"crmtest:{secrets.token_hex(4)}:"
    yield p
    for key in redis("--scan", "--pattern", p + "*").split("\n"):
        if key:
            redis("DEL", key)


@pytest.fixture
def cache() -> RedisCache:
    return RedisCache(
        Cache(name="sessions", host="local", redis=f"redis://127.0.0.1:6379/{TEST_DB}"),
        LocalTransport(),
    )


def fill(prefix: str, n: int, kind: str) -> None:
    script = "".join(f"SET {prefix}{kind}:{i} v\n" for i in range(n))
    redis(stdin=script.encode())


def test_address_parsing():
    assert RedisAddress.parse("redis://cache1:6380/3").args() == [
        "-h",
        "cache1",
        "-p",
        "6380",
        "-n",
        "3",
    ]
    assert RedisAddress.parse("rediss://c").args() == ["-h", "c", "-p", "6379", "--tls", "-n", "0"]
    assert RedisAddress.parse("unix:///run/redis.sock?db=2").args() == [
        "-s",
        "/run/redis.sock",
        "-n",
        "2",
    ]
    assert quote_arg(b'a b"\\\xff') == '"a b\\"\\\\\\xff"'


def test_ping_and_info(cache, prefix):
    assert 0 < cache.ping() < 5
    fill(prefix, 3, "k")
    redis("GET", f"{prefix}k:1")
    redis("GET", f"{prefix}missing")
    info = cache.info()
    assert info["used_memory"] > 0 and info["connected_clients"] >= 1
    assert info["keyspace_hits"] >= 1 and info["keyspace_misses"] >= 1
    assert 0 < info["hit_ratio"] < 1
    assert info["keys"] >= 3 and "evicted_keys" in info


def test_clear_with_pattern_check_counts_then_unlinks(cache, prefix):
    fill(prefix, 1200, "sess")
    fill(prefix, 5, "keep")
    # A key with a space, a quote and a non-ASCII byte survives quoting over stdin.
    redis("SET", f'{prefix}sess:odd "key" é', "v")
    assert cache.clear(f"{prefix}sess:*", check=True) == 1201
    assert len(redis("--scan", "--pattern", f"{prefix}*").split()) > 1201
    assert cache.clear(f"{prefix}sess:*", check=False) == 1201
    left = [k for k in redis("--scan", "--pattern", f"{prefix}*").split("\n") if k]
    assert sorted(left) == sorted(f"{prefix}keep:{i}" for i in range(5))


def test_clear_everything_needs_explicit_permission(cache, prefix):
    with pytest.raises(EngineError, match="refusing"):
        cache.clear(None, check=False)
    fill(prefix, 4, "all")
    size = int(redis("DBSIZE"))
    assert cache.clear(None, check=True, allow_flush=True) == size
    if size == 4:  # only our keys: the real flush is safe to exercise
        assert cache.clear(None, check=False, allow_flush=True) == 4
        time.sleep(0.2)  # FLUSHDB ASYNC
        assert int(redis("DBSIZE")) == 0


def test_unreachable_redis_is_an_engine_error():
    dead = RedisCache(
        Cache(name="x", host="local", redis="redis://127.0.0.1:1/0"), LocalTransport()
    )
    with pytest.raises(EngineError):
        dead.ping()


def test_clear_directory(tmp_path):
    cache_dir = tmp_path / "cache"
    (cache_dir / "sub").mkdir(parents=True)
    old = time.time() - 3600
    for i in range(3):
        p = cache_dir / "sub" / f"old{i}"
        p.write_bytes(b"x" * 100)
        os.utime(p, (old, old))
    (cache_dir / "fresh").write_bytes(b"y" * 10)
    c = RedisCache(
        Cache(name="files", host="local", directories=[str(cache_dir), str(tmp_path / "absent")]),
        LocalTransport(),
    )
    assert c.clear_directory(older_than=600, check=True) == (3, 300)
    assert len(list(cache_dir.rglob("*"))) == 5
    assert c.clear_directory(older_than=600, check=False) == (3, 300)
    assert sorted(p.name for p in cache_dir.rglob("*")) == ["fresh", "sub"]
    assert c.clear_directory(check=False) == (1, 10)
    with pytest.raises(EngineError, match="refusing"):
        c.clear_directory(["/"], check=True)
