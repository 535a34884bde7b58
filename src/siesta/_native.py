"""Import the mypyc-compiled hot path from build/mypyc/ (`make compiled`), if fresh;
and say which hot path runs (`compiled`), also for an installed wheel that ships it.

Only for a source checkout: the compiled modules are used while each source file has
the hash recorded when it was compiled; otherwise (an edit, a checkout) every module
runs as Python, with a warning. SIESTA_PURE=1 turns them off.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

SRC = Path(__file__).resolve().parent.parent
BUILD = SRC.parent / "build" / "mypyc"

COMPILED: dict[str, str] = {}  # module name -> extension file, when in use


class _Finder:
    """Finds the listed modules as their compiled extensions (ahead of the .py files)."""

    def __init__(self, paths: dict[str, str]):
        self.paths = paths

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        so = self.paths.get(name)
        return importlib.util.spec_from_file_location(name, so) if so else None


HOT_MODULE = "siesta.gateway.client"
"""A module of the hot path: compiled when the rest of it is."""


def compiled() -> bool:
    """Whether the hot path runs compiled: from build/mypyc (a source checkout after
    `make compiled`) or as extensions an installed wheel ships beside the sources."""
    if COMPILED:
        return True
    spec = importlib.util.find_spec(HOT_MODULE)
    origin = spec.origin if spec is not None else None
    return origin is not None and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def install() -> None:
    if os.environ.get("SIESTA_PURE") or not (BUILD / "manifest.json").is_file():
        return
    try:
        manifest = json.loads((BUILD / "manifest.json").read_text())
        if manifest["cache_tag"] != sys.implementation.cache_tag:
            raise ValueError(f"built for {manifest['cache_tag']}")
        stale = [
            name
            for name, entry in manifest["modules"].items()
            if hashlib.sha256((SRC / (name.replace(".", "/") + ".py")).read_bytes()).hexdigest()
            != entry["sha256"]
        ]
        if stale:
            raise ValueError("changed since: " + ", ".join(stale))
        paths = {name: str(BUILD / e["so"]) for name, e in manifest["modules"].items()}
        paths[manifest["shared"].split("/")[-1].split(".")[0]] = str(BUILD / manifest["shared"])
    except (OSError, ValueError, KeyError) as exc:
        warnings.warn(
            f"siesta: not using the compiled modules in {BUILD} ({exc}); "
            "run `make compiled` again, or `make pure`",
            stacklevel=1,
        )
        return
    if any(name in sys.modules for name in paths):
        return  # too late to swap: something imported them already
    sys.meta_path.insert(0, _Finder(paths))
    COMPILED.update(paths)
