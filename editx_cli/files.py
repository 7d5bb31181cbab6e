"""Files replaced whole: each is written beside its place under a name of its own, then
renamed over it, so whoever reads it (another run, a review page's browser, a crash's next
run) finds the old file or the new one, never half of one, and a failed write (a full disk)
leaves nothing behind.

Outputs are the exception: `audio.write_atomic` names their temporary files so that a run can
tell its own leftovers from another host's, and `resume.commit` renames them once recorded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace(path: Path, data: str | bytes | Callable[[Path], None]) -> None:
    """Put `data` at `path` whole: text (UTF-8), bytes, or a function that writes the file it is
    given (an image library's save)."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        if callable(data):
            data(part)
        elif isinstance(data, bytes):
            part.write_bytes(data)
        else:
            part.write_text(data, encoding="utf-8")
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
