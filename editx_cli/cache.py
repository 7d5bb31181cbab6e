"""The persistent feature cache: prompt features keyed by audio content.

Keys hash the decoded, preprocessed samples together with a fingerprint of the
extractor (its checkpoint files and code version), so renaming a file still hits
and a changed checkpoint never serves stale features. diskcache (SQLite) makes
it safe for several processes at once and bounds its size.

A cache folder is data, never code: a team may share one, and whoever can write
it must not run code as its readers. Values are stored as bytes in editx's own
format (JSON, with arrays in an .npz read with allow_pickle=False), and the
diskcache `Disk` used here refuses to unpickle anything; an entry in any other
form is a miss with a warning.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache
import numpy as np

log = logging.getLogger("editx")
MAGIC = b"editx-cache-1\n"

DEFAULT_SIZE_LIMIT = 2 * 1024**3  # 2 GiB


def default_dir() -> Path:
    env = os.environ.get("EDITX_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("editx")) / "features"


class UnsafeEntry(ValueError):
    pass


class CacheError(RuntimeError):
    """The cache folder cannot be used at all (unwritable, or not a folder)."""


def pack(value: Any) -> bytes:
    """JSON-able values with numpy arrays anywhere inside -> bytes (no pickle)."""
    arrays: dict[str, np.ndarray] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                raise TypeError("object arrays cannot be cached")
            name = f"a{len(arrays)}"
            arrays[name] = v
            return {"__array__": name}
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v) or "__array__" in v:
                raise TypeError("cached dicts need plain string keys")
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        raise TypeError(f"{type(v).__name__} values cannot be cached")

    doc = json.dumps(walk(value), allow_nan=False).encode()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return MAGIC + len(doc).to_bytes(8, "little") + doc + buf.getvalue()


def unpack(data: bytes) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)) or not bytes(data[: len(MAGIC)]) == MAGIC:
        raise UnsafeEntry("not an editx cache entry")
    data = bytes(data)
    n = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    try:
        doc = json.loads(data[start : start + n])
        with np.load(io.BytesIO(data[start + n :]), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # truncated or tampered with
        raise UnsafeEntry(f"unreadable entry ({type(e).__name__})") from None

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) == {"__array__"}:
                return arrays[v["__array__"]]
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    try:
        return walk(doc)
    except KeyError:
        raise UnsafeEntry("unreadable entry (a missing array)") from None


class SafeDisk(diskcache.Disk):
    """diskcache's storage with pickle taken out: string keys and bytes values only."""

    def put(self, key):
        if not isinstance(key, str):
            raise TypeError("cache keys are strings")
        return super().put(key)

    def get(self, key, raw):
        if not raw:
            raise UnsafeEntry("a pickled key")
        return super().get(key, raw)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if read or not isinstance(value, bytes):
            raise TypeError("cache values are bytes")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise UnsafeEntry("a pickled or text value")
        return super().fetch(mode, filename, value, read)


class FeatureCache:
    """A diskcache.Cache plus this run's hit and miss counts.

    Lifetime hit/miss counts are kept by diskcache itself (`stats(enable=True)`),
    shared by every process using the folder.
    """

    def __init__(self, directory: str | os.PathLike | None = None, size_limit: int = DEFAULT_SIZE_LIMIT):
        self.directory = Path(directory) if directory else default_dir()
        self.size_limit = size_limit
        self._db: diskcache.Cache | None = None  # opened on first use: a refused run creates nothing
        self._warned = False
        self.hits = 0
        self.misses = 0

    @property
    def _cache(self) -> diskcache.Cache:
        if self._db is None:
            self._db = self._open()
        return self._db

    def open(self) -> None:
        """Open (or create) the folder now; raises CacheError if it cannot be used."""
        self._cache  # noqa: B018

    def _connect(self) -> diskcache.Cache:
        db = diskcache.Cache(str(self.directory), size_limit=self.size_limit,
                             eviction_policy="least-recently-used", disk=SafeDisk)
        db.stats(enable=True)
        return db

    def _open(self) -> diskcache.Cache:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                return self._connect()
            except sqlite3.DatabaseError as e:  # a damaged database: set it aside, start afresh
                aside = self.directory / f"cache.db.damaged-{int(time.time())}"
                os.replace(self.directory / "cache.db", aside)
                for extra in ("cache.db-wal", "cache.db-shm"):
                    (self.directory / extra).unlink(missing_ok=True)
                log.warning("feature cache %s: the database was damaged (%s); moved to %s and started afresh",
                            self.directory, e, aside.name)
                return self._connect()
        except (OSError, sqlite3.Error) as e:
            why = getattr(e, "strerror", None) or str(e)
            raise CacheError(f"{self.directory}: the feature cache cannot be used ({why}); give another "
                             "--cache-dir, or --no-cache") from None

    @staticmethod
    def key(namespace: str, content_digest: str, extractor_fingerprint: str) -> str:
        return f"{namespace}:{extractor_fingerprint}:{content_digest}"

    def get(self, key: str) -> Any | None:
        try:
            data = self._cache.get(key, default=None, retry=True)
            value = None if data is None else unpack(data)
        except (UnsafeEntry, sqlite3.DatabaseError) as e:
            if not self._warned:  # once a run: an old cache folder may hold many
                log.warning("feature cache %s: ignoring an entry that editx did not write (%s); "
                            "it is computed again", self.directory, e)
                self._warned = True
            value = None
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def set(self, key: str, value: Any) -> None:
        try:
            self._cache.set(key, pack(value), retry=True)
        except (OSError, sqlite3.Error) as e:  # a full disk: the run goes on without storing this
            log.warning("feature cache %s: could not store an entry (%s)", self.directory, e)

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """Return (value, hit). Two processes computing the same key at once both
        succeed; the later write wins with identical content."""
        value = self.get(key)
        if value is not None:
            return value, True
        value = compute()
        self.set(key, value)
        return value, False

    def stats(self) -> dict:
        hits, misses = self._cache.stats()
        total = hits + misses
        return {
            "path": str(self.directory),
            "entries": len(self._cache),
            "size_bytes": self._cache.volume(),
            "size_limit_bytes": self._cache.size_limit,
            "hits": hits,
            "misses": misses,
            "hit_rate": round(hits / total, 4) if total else None,
        }

    def clear(self) -> int:
        n = self._cache.clear(retry=True)
        self._cache.stats(reset=True)
        return n

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


class NullCache:
    """Stands in when the user passes --no-cache: every lookup misses, nothing is stored."""

    directory = None

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0

    key = staticmethod(FeatureCache.key)

    def get(self, key: str) -> None:
        self.misses += 1
        return None

    def set(self, key: str, value: Any) -> None:
        pass

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        self.misses += 1
        return compute(), False

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_cache(directory: str | os.PathLike | None = None, size_limit: int | None = None,
               enabled: bool = True) -> FeatureCache | NullCache:
    """The feature cache a run, a worker or a server uses: the folder (default: the user cache
    folder) at its size limit, or nothing at all (--no-cache). The one place caches are made."""
    if not enabled:
        return NullCache()
    return FeatureCache(directory, size_limit or DEFAULT_SIZE_LIMIT)
