"""siesta: session-aware scale-to-zero."""

from siesta import _native

__version__ = "0.1.0"

_native.install()
