"""siesta: session-aware scale-to-zero."""

__version__ = "0.1.0"
