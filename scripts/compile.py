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


def main() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    shutil.rmtree(BUILD, ignore_errors=True)
    paths = [str(SRC / (m.replace(".", "/") + ".py")) for m in MODULES]
    os.chdir(SRC)  # setuptools reads ./pyproject.toml: not the project's
    setup(
        name="siesta-compiled",
        ext_modules=mypycify(
            [
                "--config-file",
                str(ROOT / "pyproject.toml"),
                "--cache-dir",
                str(BUILD / "cache"),
                *paths,
            ],
            target_dir=str(BUILD / "c"),
            group_name=GROUP,
        ),
        script_args=[
            "-q",
            "build_ext",
            "--build-lib",
            str(BUILD / "lib"),
            "--build-temp",
            str(BUILD / "tmp"),
        ],
    )
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    manifest: dict[str, Any] = {
        "cache_tag": sys.implementation.cache_tag,
        "shared": f"lib/{GROUP}__mypyc{suffix}",
        "modules": {
            m: {
                "so": "lib/" + m.replace(".", "/") + suffix,
                "sha256": hashlib.sha256(
                    (SRC / (m.replace(".", "/") + ".py")).read_bytes()
                ).hexdigest(),
            }
            for m in MODULES
        },
    }
    for entry in [manifest["shared"], *(e["so"] for e in manifest["modules"].values())]:
        assert (BUILD / entry).is_file(), entry
    (BUILD / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
