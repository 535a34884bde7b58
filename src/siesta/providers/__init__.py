"""Where backends run: `local` (processes on this machine)."""
