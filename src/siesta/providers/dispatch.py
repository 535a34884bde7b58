"""One `Provider` in front of several: each template names the one that runs it.

The lifecycle takes a single provider; the app gives it a `ByTemplate` when the
config mixes `provider: local` and `provider: keda` templates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from .base import BackendStatus, ExitHandler, Provider, RunningBackend, Usage


class ByTemplate:
    """Routes `start` by template, and the rest by the session's last `start`."""

    def __init__(self, providers: Mapping[str, Provider], provider_of: Mapping[str, str]):
        """`providers` by kind ("local", "keda"); `provider_of` maps template -> kind."""
        self._providers = providers
        self._provider_of = provider_of
        self._by_session: dict[str, Provider] = {}

    def set_exit_handler(self, handler: ExitHandler) -> None:
        for provider in self._providers.values():
            provider.set_exit_handler(handler)

    async def start(self, session: str, template: str) -> RunningBackend:
        provider = self._providers[self._provider_of[template]]
        self._by_session[session] = provider
        return await provider.start(session, template)

    async def stop(self, session: str, grace: float) -> None:
        provider = self._by_session.get(session)
        targets = [provider] if provider is not None else list(self._providers.values())
        await asyncio.gather(*(p.stop(session, grace) for p in targets))

    def alive(self, session: str) -> bool:
        provider = self._by_session.get(session)
        return provider is not None and provider.alive(session)

    async def status(self, session: str) -> BackendStatus:
        provider = self._by_session.get(session)
        if provider is None:
            return BackendStatus(running=False)
        return await provider.status(session)

    async def adopt(self, candidates: list[RunningBackend]) -> list[RunningBackend]:
        """Each provider is offered the candidates of its own templates (all of them when
        a candidate's template is not known) and keeps what it recognises."""
        adopted: dict[str, RunningBackend] = {}
        for kind, provider in self._providers.items():
            offered = [
                c
                for c in candidates
                if not c.template or self._provider_of.get(c.template, kind) == kind
            ]
            for backend in await provider.adopt(offered):
                adopted.setdefault(backend.session, backend)
                self._by_session.setdefault(backend.session, provider)
        return list(adopted.values())

    def measures(self, template: str) -> bool:
        return self._providers[self._provider_of[template]].measures(template)

    async def usage(self, session: str) -> Usage | None:
        provider = self._by_session.get(session)
        return None if provider is None else await provider.usage(session)

    async def logs(self, session: str, lines: int = 100) -> str:
        provider = self._by_session.get(session)
        return "" if provider is None else await provider.logs(session, lines)

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self._providers.values()))
