"""Imports as on the GPU image: a module that neither the image nor the wheelhouse holds is
refused, and a refusal met by editx's own code is written down.

Put this folder first on PYTHONPATH and name, in EDITX_IMAGE_ALLOW, the files that list the
allowed distributions (one `name` or `name==version` a line, `#` comments; several files
separated by os.pathsep); EDITX_IMAGE_LOG names the file the refusals are appended to.
Every process started with that environment is guarded, subprocesses included. A refusal
seen by a third-party package's optional import is its own business (it falls back); one
seen by editx (`editx_cli`, the benchmarks, the scripts) means a checked path needs a
package the GPU machine will not have.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import os
import re
import sys

_OURS = ("editx_cli", "__main__", "gpu_check", "decode", "vocoder", "make_tiny_checkpoints")


def _allowed_distributions() -> set[str]:
    names = {"editx"}  # the checkout itself
    for path in filter(None, os.environ.get("EDITX_IMAGE_ALLOW", "").split(os.pathsep)):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if line:
                    names.add(_norm(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0]))
    return names


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _ImageFinder(importlib.abc.MetaPathFinder):
    def __init__(self, allowed: set[str], log: str | None) -> None:
        self.allowed, self.log = allowed, log
        self.owners = {top: {_norm(d) for d in dists}
                       for top, dists in importlib.metadata.packages_distributions().items()}
        here = os.path.dirname(os.path.abspath(__file__))
        self.local = os.path.dirname(os.path.dirname(here))  # the checkout: its own modules are editx

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "sitecustomize":
            return None
        owners = self.owners.get(top)
        if not owners or owners & self.allowed:  # the checkout's own modules, or allowed
            return None
        importer = _importer()
        if self.log and importer.startswith(_OURS):
            with open(self.log, "a", encoding="utf-8") as f:
                f.write(f"{fullname}\t{importer}\t{sorted(owners)[0]}\n")
        raise ModuleNotFoundError(f"{fullname} is not on the GPU image (distribution {sorted(owners)[0]})",
                                  name=fullname)


def _importer() -> str:
    """The module whose code asked for the import: the first frame outside the import system."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("importlib", "_frozen_importlib")) and "sitecustomize" not in name:
            return name
        frame = frame.f_back
    return ""


if os.environ.get("EDITX_IMAGE_ALLOW"):
    sys.meta_path.insert(0, _ImageFinder(_allowed_distributions(), os.environ.get("EDITX_IMAGE_LOG")))
