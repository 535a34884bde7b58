"""Compile the gateway's hot path with mypyc into build/mypyc/ (`make compiled`).

Nothing is written under src/: `siesta/_native.py` imports the compiled modules only
while every source still has the hash recorded here, so an edited .py is never
shadowed by a stale extension (`make pure`, or SIESTA_PURE=1, turns them off).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
BUILD = ROOT / "build" / "mypyc"
MODULES = [  # the per-request path, and what it calls
    "siesta.gateway.client",
    "siesta.gateway.upstream",
    "siesta.gateway.http",
    "siesta.core.routing",
    "siesta.core.model",
]
GROUP = "siesta"  # the shared library is the top-level module `siesta__mypyc`


def compile_to(build: Path, *, lenient: bool = False) -> list[str]:
    """Compile MODULES with mypyc into `build`/lib; the built files, relative to lib/.

    `lenient` (the wheel's build hook, whose isolated environment has mypy but not
    siesta's dependencies or their stubs) treats what cannot be found as Any.
    """
    from mypyc.build import mypycify
    from setuptools import setup

    shutil.rmtree(build, ignore_errors=True)
    paths = [str(SRC / (m.replace(".", "/") + ".py")) for m in MODULES]
    options = ["--ignore-missing-imports", "--follow-imports=silent"] if lenient else []
    here = Path.cwd()
    os.chdir(SRC)  # setuptools reads ./pyproject.toml: not the project's
    try:
        setup(
            name="siesta-compiled",
            ext_modules=mypycify(
                [
                    "--config-file",
                    str(ROOT / "pyproject.toml"),
                    "--cache-dir",
                    str(build / "cache"),
                    *options,
                    *paths,
                ],
                target_dir=str(build / "c"),
                group_name=GROUP,
            ),
            script_args=[
                "-q",
                "build_ext",
                "--build-lib",
                str(build / "lib"),
                "--build-temp",
                str(build / "tmp"),
            ],
        )
    finally:
        os.chdir(here)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    built = [f"{GROUP}__mypyc{suffix}", *(m.replace(".", "/") + suffix for m in MODULES)]
    for name in built:
        assert (build / "lib" / name).is_file(), name
    return built


def _fresh() -> bool:
    """Whether build/mypyc holds every module, compiled from the sources as they are."""
    try:
        manifest = json.loads((BUILD / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("cache_tag") == sys.implementation.cache_tag and all(
        manifest["modules"].get(m, {}).get("sha256") == _digest(m) for m in MODULES
    )


def _digest(module: str) -> str:
    return hashlib.sha256((SRC / (module.replace(".", "/") + ".py")).read_bytes()).hexdigest()


def main() -> None:
    if "--force" not in sys.argv and _fresh():
        print("scripts/compile.py: the compiled hot path is up to date")
        return
    compile_to(BUILD)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    manifest: dict[str, Any] = {
        "cache_tag": sys.implementation.cache_tag,
        "shared": f"lib/{GROUP}__mypyc{suffix}",
        "modules": {
            m: {
                "so": "lib/" + m.replace(".", "/") + suffix,
                "sha256": _digest(m),
            }
            for m in MODULES
        },
    }
    (BUILD / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
