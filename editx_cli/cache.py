"""The persistent feature cache: prompt features keyed by audio content.

Keys hash the decoded, preprocessed samples together with a fingerprint of the
extractor (its checkpoint files and code version), so renaming a file still hits
and a changed checkpoint never serves stale features. diskcache (SQLite) makes
it safe for several processes at once and bounds its size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_SIZE_LIMIT = 2 * 1024**3  # 2 GiB


def default_dir() -> Path:
    env = os.environ.get("EDITX_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("editx")) / "features"


def fingerprint_files(paths: list[str | os.PathLike], code_version: str) -> str:
    """Fingerprint of extractor checkpoints: path name, size and a hash of head and tail.

    Hashing multi-GB checkpoints in full at every start would cost more than the
    cache saves; size plus the first and last MiB changes with any re-export.
    """
    h = hashlib.sha256(code_version.encode())
    for p in sorted(str(x) for x in paths):
        path = Path(p)
        h.update(path.name.encode())
        if not path.exists():
            h.update(b"<missing>")
            continue
        size = path.stat().st_size
        h.update(str(size).encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()[:16]


class FeatureCache:
    """A diskcache.Cache plus this run's hit and miss counts.

    Lifetime hit/miss counts are kept by diskcache itself (`stats(enable=True)`),
    shared by every process using the folder.
    """

    def __init__(self, directory: str | os.PathLike | None = None, size_limit: int = DEFAULT_SIZE_LIMIT):
        import diskcache

        self.directory = Path(directory) if directory else default_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(
            str(self.directory), size_limit=size_limit, eviction_policy="least-recently-used"
        )
        self._cache.stats(enable=True)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(namespace: str, content_digest: str, extractor_fingerprint: str) -> str:
        return f"{namespace}:{extractor_fingerprint}:{content_digest}"

    def get(self, key: str) -> Any | None:
        value = self._cache.get(key, default=None, retry=True)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def set(self, key: str, value: Any) -> None:
        self._cache.set(key, value, retry=True)

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
        self._cache.close()


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

    def close(self) -> None:
        pass
