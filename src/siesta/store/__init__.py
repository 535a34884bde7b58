"""Where sessions and their events are kept: `sqlite` (the embedded default) or `redis`
(shared by replicas). `open_store` picks one from the config's `store` section."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Store
from .sqlite import ThreadedSqlite

if TYPE_CHECKING:
    from siesta.config import StoreConf


def open_store(conf: StoreConf, instance: str) -> Store:
    """The store `conf` names; `instance` (`Config.instance_id`) prefixes Redis keys."""
    if conf.path is not None:
        return ThreadedSqlite(conf.path)
    from .redis import RedisStore  # only loaded (with redis-py) when Redis is used

    return RedisStore.from_conf(conf, instance)
