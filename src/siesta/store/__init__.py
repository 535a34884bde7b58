"""Where sessions and their events are kept: `sqlite` (embedded default)."""
