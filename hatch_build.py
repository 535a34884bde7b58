"""The wheel's build hook: the gateway's hot path compiled with mypyc (scripts/compile.py).

Installing siesta from source (`pip install .`, `pipx install`, `make dist`) compiles the
per-request modules into extensions shipped beside their .py files, which Python then
imports first. Where that cannot be done (no C compiler, no Python headers, an
unsupported interpreter), the wheel is pure Python and says so in the build's output;
SIESTA_PURE=1 asks for a pure wheel. Editable installs (`make demo`, `make test`) use
`make compiled` instead, whose build/mypyc/ is checked against the sources at import.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ROOT = Path(__file__).resolve().parent


class CompiledHotPath(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable" or os.environ.get("SIESTA_PURE"):
            return
        self._work = tempfile.TemporaryDirectory(prefix="siesta-mypyc-")
        build = Path(self._work.name)
        try:
            sys.path.insert(0, str(ROOT / "scripts"))
            from compile import compile_to

            built = compile_to(build, lenient=True)
        except BaseException as exc:  # a failed compile (SystemExit from setuptools too)
            self.app.display_warning(
                f"siesta: the compiled hot path could not be built ({exc!r}); "
                "this wheel is pure Python"
            )
            return
        finally:
            if sys.path and sys.path[0] == str(ROOT / "scripts"):
                sys.path.pop(0)
        for name in built:
            build_data["force_include"][str(build / "lib" / name)] = name
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        self.app.display_info(f"siesta: compiled hot path: {', '.join(built)}")

    def finalize(self, version: str, build_data: dict[str, Any], artifact: str) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            work.cleanup()
