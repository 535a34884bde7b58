"""The config file changed: sessions it no longer lists go, and SIGHUP applies a new file.

Used by `siesta.app`. At start, the sessions the file listed last time (remembered in
the state folder) that it no longer lists are removed, each with a log line; sessions
created through the admin API were never listed, so they stay. On SIGHUP the file is
read again: a valid file is applied (sessions added and removed, templates and
policies replaced); a bad one is refused, line by line, and the running config kept.
Settings of listeners and the store need a restart, and the log says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from pathlib import Path

from siesta.config import Config, ConfigError, TemplateConf, load_config
from siesta.core.policy import Policy
from siesta.lifecycle import Lifecycle
from siesta.logconfig import fields

log = logging.getLogger("siesta.reload")

CONFIGURED_FILE = "configured-sessions.json"
"""In the state folder: the ids of the sessions the config file listed at the last start."""

RESTART_KEYS = ("gateway", "store", "keda", "instance", "savings", "admin")
"""Top-level sections a reload cannot apply to a running siesta."""


def configured_before(state_dir: Path) -> set[str]:
    """The sessions the config file listed last time (none when unknown)."""
    try:
        return set(json.loads((state_dir / CONFIGURED_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def remember_configured(state_dir: Path, config: Config) -> None:
    """Note the sessions `config` lists, for the next start or reload."""
    try:
        (state_dir / CONFIGURED_FILE).write_text(json.dumps(sorted(config.sessions)))
    except OSError as exc:
        log.warning("cannot write %s: %s", state_dir / CONFIGURED_FILE, exc)


async def remove_unlisted(lifecycle: Lifecycle, listed_before: set[str], config: Config) -> None:
    """Remove the sessions the file listed before and lists no more."""
    for sid in sorted(listed_before - set(config.sessions)):
        if lifecycle.get(sid) is None:
            continue
        await lifecycle.remove_session(sid, "removed from the config file")
        log.info(
            "%s: removed: the config file no longer lists it",
            sid,
            extra=fields(session=sid, path=str(config.path)),
        )


class Reloader:
    """Applies a new config file to a running siesta (what `siesta.app` hands it)."""

    def __init__(
        self,
        config: Config,
        lifecycle: Lifecycle,
        templates: MutableMapping[str, TemplateConf],
        policies: MutableMapping[str, Policy],
    ):
        self.config = config
        self._lifecycle = lifecycle
        self._templates = templates
        self._policies = policies

    async def reload(self) -> bool:
        """Read the file again and apply it; False (and the old config kept) if it is bad."""
        path = self.config.path
        if path is None:
            log.warning("SIGHUP: this siesta was not started from a file; nothing to reload")
            return False
        try:
            new = load_config(path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem, extra=fields(path=str(path)))
            log.error("reload refused: the running config is kept", extra=fields(path=str(path)))
            return False
        problem = self._orphans(new) or "; ".join(new.privilege_problems())
        if problem:
            log.error("reload refused: %s; the running config is kept", problem)
            return False
        await self._apply(new)
        return True

    def _orphans(self, new: Config) -> str:
        """Sessions that would be left with a template the new file drops."""
        listed = set(new.sessions)
        kept = [s for s in self._lifecycle.sessions.values() if s.id not in self._dropped(new)]
        left = [
            f"session {s.id!r} runs template {s.template!r}, which the new file drops"
            for s in kept
            if s.template not in new.templates and s.id not in listed
        ]
        return "; ".join(left)

    def _dropped(self, new: Config) -> set[str]:
        return set(self.config.sessions) - set(new.sessions)

    async def _apply(self, new: Config) -> None:
        old = self.config
        self._templates.update(new.templates)  # in place: every part holds this mapping
        for name in set(self._templates) - set(new.templates):
            del self._templates[name]
        self._policies.clear()
        self._policies.update(new.template_policies())
        await remove_unlisted(self._lifecycle, set(old.sessions), new)
        for sid, spec in new.sessions.items():
            if self._lifecycle.get(sid) is None:
                await self._lifecycle.add_session(sid, spec.template, spec.labels)
        self.config = new
        remember_configured(new.state_dir, new)
        changed = [key for key in RESTART_KEYS if getattr(old, key) != getattr(new, key)]
        log.info(
            "reloaded %s: %d template(s), %d session(s) configured",
            new.path,
            len(new.templates),
            len(new.sessions),
            extra=fields(path=str(new.path)),
        )
        if changed:
            log.warning("reload: %s changed; they take effect at the next restart", changed)
