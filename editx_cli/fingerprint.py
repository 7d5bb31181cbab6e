"""Fingerprints of checkpoint files: what keys the caches and the resume records to a model.

Apart from the cache itself so that code needing only a fingerprint (the engines, the
benchmarks on a bare GPU image) does not need the cache's packages.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


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
