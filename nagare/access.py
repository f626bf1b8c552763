"""Who may do what: roles, the permissions every route declares, the identity of a request
(`Principal`) and the pure decisions over them.

Roles are Dagu's set, each holding the rights of the one below it: `viewer` reads, `operator`
also runs, kills, retries, approves and pauses, `developer` also reads and edits DAG files,
`manager` also reads the audit log, `admin` also manages users and API keys. A role may be
restricted to DAGs with some tags (`roles: {operator: {tags: [finance]}}` in nagare.yaml), and
nagare.yaml may name roles of its own on a built-in base (`roles: {finance: {base: operator,
tags: [finance]}}`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nagare.errors import ConfigError
from nagare.patterns import NAME


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    DEVELOPER = "developer"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Permission(StrEnum):
    """What a route needs. The first four are not roles' rights but other ways in."""

    OPEN = "open"  # anyone: liveness, the API description, signing in
    CLUSTER = "cluster"  # the cluster protocol: the worker token
    WEBHOOK = "webhook"  # a DAG's webhook: its own HMAC signature
    SELF = "self"  # any identity: who am I, sign out, my password
    READ = "read"  # DAGs, runs, tasks, logs, metrics, pools, workers
    SOURCE = "source"  # the YAML text of DAG files and their versions
    OPERATE = "operate"  # trigger, kill, retry, approve, reject, emit, pause, activate, backfill
    EDIT = "edit"  # create, save and delete DAG files; sync the DAGs folder from git
    AUDIT = "audit"  # the audit log
    ADMIN = "admin"  # users and API keys


# The rights of each role (each includes those of the role below it).
_LADDER: tuple[tuple[Role, frozenset[Permission]], ...] = (
    (Role.VIEWER, frozenset({Permission.SELF, Permission.READ})),
    (Role.OPERATOR, frozenset({Permission.OPERATE})),
    (Role.DEVELOPER, frozenset({Permission.SOURCE, Permission.EDIT})),
    (Role.MANAGER, frozenset({Permission.AUDIT})),
    (Role.ADMIN, frozenset({Permission.ADMIN})),
)


def _rights() -> dict[Role, frozenset[Permission]]:
    rights: dict[Role, frozenset[Permission]] = {}
    held: frozenset[Permission] = frozenset()
    for role, more in _LADDER:
        held = held | more
        rights[role] = held
    return rights


ROLE_RIGHTS: Mapping[Role, frozenset[Permission]] = _rights()


class Scope(StrEnum):
    """Which DAGs a route touches, so that a role restricted to some tags sees only those."""

    NONE = "none"  # no DAG's data (who am I, users, keys, the audit log, the DAG schema)
    DAG = "dag"  # the DAG of the path's `dag_id`
    RUN = "run"  # the DAG of the path's `run_id`
    FILTERED = "filtered"  # a list the handler filters by the principal's DAGs
    GLOBAL = "global"  # every DAG at once (counters, load, files): unrestricted roles only


class Kind(StrEnum):
    """How a request proved who it is."""

    ANONYMOUS = "anonymous"  # no auth configured: everyone may do everything
    API_KEY = "api_key"  # the one key of `--api-key`
    KEY = "key"  # an API key an admin created (with a role)
    SESSION = "session"  # a signed-in user's session cookie
    WORKER = "worker"  # the cluster token
    WEBHOOK = "webhook"  # a webhook sender (its DAG's signature)
    LOCAL = "local"  # the CLI on the server machine, with the database itself


@dataclass(frozen=True)
class RoleDef:
    """A role as nagare.yaml defines it: its built-in rights and the tags it is limited to
    (None: every DAG)."""

    base: Role
    tags: frozenset[str] | None = None


@dataclass(frozen=True)
class Principal:
    """The identity of a request. `name` is the actor the audit log records."""

    name: str
    kind: Kind
    role: Role | None  # None: no role's rights (a worker, a webhook sender)
    tags: frozenset[str] | None = None  # only DAGs with one of these tags (None: every DAG)
    csrf: str = ""  # a session's token that its writes must send back (X-CSRF-Token)

    @property
    def via_cookie(self) -> bool:
        return self.kind == Kind.SESSION


ANONYMOUS = Principal("anonymous", Kind.ANONYMOUS, Role.ADMIN)
API_KEY = Principal("api-key", Kind.API_KEY, Role.ADMIN)
ACCOUNT_MODES = ("builtin", "oidc")  # auth_mode values with users and keys
WORKER = Principal("worker", Kind.WORKER, None)
NOBODY = Principal("anonymous", Kind.ANONYMOUS, None)  # an open route's caller, unproven

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def can(principal: Principal, permission: Permission) -> bool:
    """Whether `principal` holds `permission` (the role-less ones are checked elsewhere)."""
    if permission == Permission.OPEN:
        return True
    if principal.role is None:
        return False
    return permission in ROLE_RIGHTS[principal.role]


def sees(principal: Principal, dag_tags: Iterable[str]) -> bool:
    """Whether `principal` may see a DAG with these tags."""
    return principal.tags is None or not principal.tags.isdisjoint(dag_tags)


def csrf_ok(principal: Principal, method: str, supplied: str) -> bool:
    """A write authenticated by a session cookie must carry the session's CSRF token."""
    if not principal.via_cookie or method in SAFE_METHODS:
        return True
    return bool(supplied) and _same(supplied, principal.csrf)


def _same(a: str, b: str) -> bool:
    import hmac  # OpenSSL's libcrypto comes with it: at the first check, not at start

    return hmac.compare_digest(a.encode(), b.encode())


def parse_roles(raw: Any) -> dict[str, RoleDef]:
    """nagare.yaml's `roles:`: {NAME: {base: ROLE, tags: [..]}}; a built-in NAME restricts that
    role (its base is itself). Raises ConfigError naming the bad entry."""
    roles: dict[str, RoleDef] = {}
    if raw in (None, ""):
        return roles
    if not isinstance(raw, dict):
        raise ConfigError("roles: expected a mapping such as {operator: {tags: [finance]}}")
    for name, spec in raw.items():
        roles[str(name)] = _role_def(str(name), spec)
    return roles


def _role_def(name: str, spec: Any) -> RoleDef:
    where = f"roles.{name}"
    if not NAME.match(name):
        raise ConfigError(f"{where}: not a valid role name (letters, digits, '_', '-')")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with 'base' and/or 'tags'")
    unknown = set(spec) - {"base", "tags"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (base, tags)")
    builtin = name in Role.__members__.values()
    base = spec.get("base", name if builtin else None)
    if base not in [r.value for r in Role]:
        raise ConfigError(
            f"{where}.base: expected one of {', '.join(r.value for r in Role)}, found {base!r}"
        )
    if builtin and base != name:
        raise ConfigError(f"{where}: a built-in role keeps its own rights (no 'base')")
    return RoleDef(Role(base), _tags(where, spec.get("tags")))


def _tags(where: str, raw: Any) -> frozenset[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) and t for t in raw):
        raise ConfigError(f"{where}.tags: expected a non-empty list of tag names")
    return frozenset(raw)


def all_roles(declared: Mapping[str, RoleDef]) -> dict[str, RoleDef]:
    """Every role a user or key may hold: the built-in ones, as nagare.yaml restricts them,
    and those it names."""
    return {**{r.value: RoleDef(r) for r in Role}, **declared}


def principal_of(
    name: str, kind: Kind, role_name: str, roles: Mapping[str, RoleDef], csrf: str = ""
) -> Principal | None:
    """The principal of a user or key whose stored role is `role_name`; None when that role no
    longer exists (nagare.yaml dropped it): such an identity is refused, never widened."""
    found = roles.get(role_name)
    if found is None:
        return None
    return Principal(name, kind, found.base, found.tags, csrf)
