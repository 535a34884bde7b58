"""What a local backend runs as and what it inherits: its user and its environment.

Used by the local provider at each start, and by the config check (names that do not
resolve, and environment patterns, are refused at load with their key and line).

- `RunAs` is a template's `user` / `group` resolved to ids: the backend's uid, gid and
  supplementary groups (the user's own, never siesta's), and its home folder.
- `backend_env` builds a backend's environment from nothing: the variables of siesta's
  own environment that the template's `env_inherit` names (glob patterns), never one of
  siesta's `SIESTA_*` variables nor a secret siesta reads (the Redis password's
  variable), then the template's `env`.
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_INHERIT = ("PATH", "HOME", "LANG", "LC_*", "TZ")
"""What a backend inherits from siesta's environment unless its template says otherwise:
where programs are, the home folder, the language and the time zone."""

OWN_PREFIX = "SIESTA_"
"""siesta's own variables (SIESTA_ADMIN_TOKEN among them): never inherited by a backend."""

PER_USER = ("HOME", "USER", "LOGNAME")
"""Variables that describe siesta's user: a backend run as another user gets that user's."""


class IdentityError(ValueError):
    """A `user` or `group` that does not resolve; the message says which and why."""


@dataclass(frozen=True, slots=True)
class RunAs:
    """The identity a backend runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str | None = None
    home: str | None = None

    @classmethod
    def resolve(cls, user: str | None, group: str | None) -> RunAs | None:
        """`user` (a name or uid, or user:group) and `group` (a name or gid) as ids; None
        when neither is set. `IdentityError` when a name is unknown, or a uid without a
        passwd entry comes without a group."""
        if user is None:
            if group is not None:
                raise IdentityError("group needs user: set the user the backend runs as")
            return None
        name, _, own_group = user.partition(":")
        if own_group:
            if group is not None:
                raise IdentityError(f"user {user!r} names a group already; drop group")
            group = own_group
        entry = _passwd(name)
        if entry is None and not name.isdigit():
            raise IdentityError(f"unknown user {name!r} (not in the passwd database)")
        uid = entry.pw_uid if entry is not None else int(name)
        if group is not None:
            gid = _gid(group)
        elif entry is not None:
            gid = entry.pw_gid
        else:
            raise IdentityError(f"uid {uid} has no passwd entry: set its group too")
        groups: tuple[int, ...] = (gid,)
        if entry is not None:
            groups = tuple(dict.fromkeys([gid, *os.getgrouplist(entry.pw_name, gid)]))
        return cls(
            uid,
            gid,
            groups,
            entry.pw_name if entry is not None else None,
            entry.pw_dir if entry is not None else None,
        )

    def is_current(self) -> bool:
        """Whether siesta itself runs as exactly this identity (nothing to change)."""
        return (
            self.uid == os.geteuid()
            and self.gid == os.getegid()
            and set(self.groups) <= {os.getegid(), *os.getgroups()}
        )


def _passwd(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        return None


def _gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise IdentityError(f"unknown group {group!r} (not in the group database)") from None


def privilege_problem(run_as: RunAs | None) -> str | None:
    """Why siesta, as it runs now, cannot start a backend as `run_as` (None: it can)."""
    if run_as is None or run_as.is_current() or os.geteuid() == 0:
        return None
    return (
        "running backends as another user needs siesta to run as root "
        f"(it runs as uid {os.geteuid()}); remove user/group, or start siesta as root"
    )


def inherit_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be an `env_inherit` entry (None: it can)."""
    if pattern.upper().startswith(OWN_PREFIX):
        return (
            f"{pattern!r}: siesta's own {OWN_PREFIX}* variables are never passed to backends "
            "(SIESTA_ADMIN_TOKEN is one); give the backend what it needs in env"
        )
    return None


def backend_env(
    own: Mapping[str, str],
    inherit: Sequence[str],
    env: Mapping[str, str],
    *,
    secrets: Collection[str] = (),
    run_as: RunAs | None = None,
) -> dict[str, str]:
    """A backend's environment: what `inherit` names of `own` (never a `SIESTA_*`
    variable nor one of `secrets`), with HOME, USER and LOGNAME made `run_as`'s, then
    `env` (the template's, placeholders filled) on top."""
    result: dict[str, str] = {}
    if inherit:
        for key, value in own.items():
            if key.startswith(OWN_PREFIX) or key in secrets:
                continue
            if any(fnmatch.fnmatchcase(key, pattern) for pattern in inherit):
                result[key] = value
    if run_as is not None:
        mine = {"HOME": run_as.home, "USER": run_as.name, "LOGNAME": run_as.name}
        for key in PER_USER:
            if key in result:
                theirs = mine[key]
                if theirs is None:
                    del result[key]
                else:
                    result[key] = theirs
    result.update(env)
    return result
