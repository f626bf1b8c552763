"""The command line of users and API keys.

`nagare users add|passwd|remove|list` run on the server machine against the database itself
(the same --db / --config / NAGARE_DB as `serve`), each change recorded in the audit log with
the actor `cli:<os user>` from the address `local`. `nagare keys create|list|revoke` talk to a
running server through its API, like the other client commands (an admin's key).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

from nagare.cli_format import table
from nagare.errors import BadRequest, ConfigError

if TYPE_CHECKING:
    from nagare.accounts import Accounts
    from nagare.store import Store

Subparsers: TypeAlias = "argparse._SubParsersAction[Any]"
Handler = Callable[[argparse.Namespace], int]
# one example line at the end of each command's --help
ACCOUNT_EXAMPLES = {
    "users": "nagare users add alice --role operator --db nagare.db",
    "keys": "nagare keys create ci-deploy --role operator --expires 90d",
}


def add_account_commands(commands: Subparsers) -> None:
    """Register `users` (local) and `keys` (through the API) on the root parser."""
    _add_users(commands)
    _add_keys(commands)


# ---------------------------------------------------------------- users (local)


def _add_users(commands: Subparsers) -> None:
    users = commands.add_parser(
        "users",
        help="add, change, remove and list dashboard users (on the server machine)",
        description="Manage the users of auth_mode builtin in the server's database directly "
        "(run it on the server machine; the server may be running). Passwords are asked twice "
        "on a terminal, or read from the first line of stdin with --password-stdin.",
    )
    users.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    verbs = users.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add", help="add a user with a role")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--role",
        required=True,
        help="admin, manager, developer, operator, viewer, or a role nagare.yaml names",
    )
    _password_flag(add)
    passwd = verbs.add_parser("passwd", help="set a user's password (its sessions end)")
    passwd.add_argument("name", metavar="NAME")
    _password_flag(passwd)
    remove = verbs.add_parser("remove", help="remove a user (its sessions end)")
    remove.add_argument("name", metavar="NAME")
    listing = verbs.add_parser("list", help="list the users")
    listing.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON (for scripts)"
    )
    for verb, handler in ((add, cmd_add), (passwd, cmd_passwd), (remove, cmd_remove)):
        _db_flags(verb)
        verb.set_defaults(func=handler)
    _db_flags(listing)
    listing.set_defaults(func=cmd_list)


def _password_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (no prompt)",
    )


def _db_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="database file (default: the settings' db, $NAGARE_DB)")
    parser.add_argument("--config", help="settings file (default: nagare.yaml)")


def cmd_add(namespace: argparse.Namespace) -> int:
    password = read_password(namespace.password_stdin)
    with _accounts(namespace) as (accounts, store, now):
        user = accounts.add_user(namespace.name, namespace.role, password, now)
        _audit(store, "user.create", user.name, now, role=user.role)
    print(f"Added user {user.name} (role {user.role})")
    return 0


def cmd_passwd(namespace: argparse.Namespace) -> int:
    with _accounts(namespace) as (accounts, _, _now):
        accounts.user(namespace.name)  # an unknown name fails before the prompt
    password = read_password(namespace.password_stdin)
    with _accounts(namespace) as (accounts, store, now):
        accounts.update_user(namespace.name, now, password=password)
        _audit(store, "user.passwd", namespace.name, now)
    print(f"Changed the password of {namespace.name}; its sessions ended")
    return 0


def cmd_remove(namespace: argparse.Namespace) -> int:
    with _accounts(namespace) as (accounts, store, now):
        accounts.remove_user(namespace.name)
        _audit(store, "user.delete", namespace.name, now)
    print(f"Removed user {namespace.name}")
    return 0


def cmd_list(namespace: argparse.Namespace) -> int:
    from nagare.http.accounts_api import user_json

    with _accounts(namespace) as (accounts, _, _now):
        users = [user_json(u) for u in accounts.users()]
    if namespace.json:
        print(json.dumps(users, indent=2))
    elif not users:
        print("No users (add one: nagare users add NAME --role admin)")
    else:
        print(users_table(users))
    return 0


def users_table(users: Sequence[dict[str, Any]]) -> str:
    rows = [
        (
            u["name"],
            u["role"],
            u["source"],
            "disabled" if u["disabled"] else "enabled",
            u["last_login_at"] or "never",
        )
        for u in users
    ]
    return table(("NAME", "ROLE", "SOURCE", "STATE", "LAST SIGN-IN"), rows)


def read_password(
    from_stdin: bool, stdin: Any = None, ask: Callable[[str], str] | None = None
) -> str:
    """The new password: stdin's first line, or typed twice on a terminal (never echoed)."""
    stdin = stdin or sys.stdin
    if from_stdin:
        return str(stdin.readline()).rstrip("\r\n")
    if ask is None:
        if not stdin.isatty():
            raise ConfigError("no terminal to ask the password on: pipe it with --password-stdin")
        ask = getpass.getpass
    first = ask("Password: ")
    if ask("Password again: ") != first:
        raise BadRequest("the two passwords differ")
    return first


@contextmanager
def _accounts(namespace: argparse.Namespace) -> Iterator[tuple[Accounts, Store, int]]:
    from nagare.access import all_roles
    from nagare.accounts import Accounts
    from nagare.clock import now_ms
    from nagare.config import load_config
    from nagare.store import Store

    config = load_config({"config": namespace.config, "db": namespace.db})
    if config.db_is_file and not os.path.isfile(config.db):
        raise ConfigError(
            f"no database at '{config.db}' (start the server once, or give --db or --config)"
        )
    store = Store(config.db)
    try:
        yield Accounts(store, all_roles(config.roles), config.session_hours), store, now_ms()
    finally:
        store.close()


def _audit(store: Store, action: str, name: str, now: int, **facts: object) -> None:
    from nagare.http.server import audit_detail
    from nagare.store import AuditEntry

    detail = audit_detail("", facts)
    entry = AuditEntry(now, f"cli:{_os_user()}", action, f"user:{name}", "local", "ok", detail)
    store.audit.record(entry)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return str(os.getuid())


# ---------------------------------------------------------------- keys (through the API)


def _add_keys(commands: Subparsers) -> None:
    from nagare.cli_client import _common_flags

    keys = commands.add_parser(
        "keys",
        parents=[_common_flags()],
        help="create, list and revoke API keys (an admin's key)",
        description="API keys with a role and an optional expiry, through the server's API "
        "(auth_mode builtin or oidc; the caller's key must be an admin's).",
    )
    common = _verb_flags()
    verbs = keys.add_subparsers(dest="verb", metavar="VERB", required=True)
    create = verbs.add_parser("create", help="create a key (printed once)", parents=[common])
    create.add_argument("name", metavar="NAME", help="what the key is for, e.g. ci-deploy")
    create.add_argument("--role", required=True, help="the key's role")
    create.add_argument(
        "--expires", metavar="WHEN", help="an age such as 30d or 12h, or an ISO 8601 date/time"
    )
    listing = verbs.add_parser(
        "list", help="list the keys (never the keys themselves)", parents=[common]
    )
    revoke = verbs.add_parser("revoke", help="revoke a key", parents=[common])
    revoke.add_argument("key_id", metavar="ID", help="the key's id (k_...)")
    for parser, handler in ((create, cmd_key_create), (listing, cmd_keys), (revoke, cmd_revoke)):
        parser.set_defaults(func=_guarded(handler))


def _verb_flags() -> argparse.ArgumentParser:
    """The connection flags again after the verb (`nagare keys list --api URL`); without a
    value they leave what `keys` (or the flags before it) set."""
    from nagare.cli_client import _common_flags

    flags = _common_flags()
    for action in flags._actions:
        action.default = argparse.SUPPRESS
    return flags


def _guarded(handler: Handler) -> Handler:
    from nagare.cli_client import _guarded as guarded

    return guarded(handler)


def cmd_key_create(namespace: argparse.Namespace) -> int:
    from nagare.cli_client import _client
    from nagare.clock import now_ms

    expires = expiry(namespace.expires, now_ms()) if namespace.expires else None
    key = _client(namespace).create_key(namespace.name, namespace.role, expires)
    if namespace.json:
        print(json.dumps(key, indent=2))
        return 0
    print(key["key"])
    print(
        f"API key {key['id']} ({key['name']}, role {key['role']}, expires "
        f"{key['expires_at'] or 'never'}): copy it now, it is not shown again",
        file=sys.stderr,
    )
    return 0


def cmd_keys(namespace: argparse.Namespace) -> int:
    from nagare.cli_client import _client

    keys = _client(namespace).keys()
    if namespace.json:
        print(json.dumps(keys, indent=2))
    elif not keys:
        print("No API keys")
    else:
        print(keys_table(keys))
    return 0


def cmd_revoke(namespace: argparse.Namespace) -> int:
    from nagare.cli_client import _client

    key = _client(namespace).revoke_key(namespace.key_id)
    if namespace.json:
        print(json.dumps(key, indent=2))
    else:
        print(f"Revoked API key {key['id']} ({key['name']})")
    return 0


def keys_table(keys: Sequence[dict[str, Any]]) -> str:
    rows = [
        (
            k["id"],
            k["name"],
            k["role"],
            k["prefix"] + "…",
            "revoked" if k.get("revoked_at") else (k.get("expires_at") or "never"),
            k.get("last_used_at") or "never",
        )
        for k in keys
    ]
    return table(("ID", "NAME", "ROLE", "KEY", "EXPIRES", "LAST USED"), rows)


def expiry(text: str, now: int) -> str:
    """`--expires`: an age (30d, 12h, 90m) from now, or an ISO 8601 date or time -> ISO 8601."""
    from nagare.clock import parse_iso, to_iso
    from nagare.metrics import parse_span

    value = text.strip()
    if value[:1].isdigit() and value[-1:] in ("m", "h", "d") and value[:-1].isdigit():
        return str(to_iso(now + parse_span(value, "--expires")))
    try:
        return str(to_iso(parse_iso(value)))
    except ValueError:
        raise BadRequest(
            f"--expires: expected an age such as 30d, 12h or 90m, or a date such as "
            f"2027-01-31, found '{text}'"
        ) from None
