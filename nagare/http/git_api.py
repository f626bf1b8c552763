"""The routes of git sync: the commit the DAGs folder holds, and "sync now"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nagare.access import Permission, Scope
from nagare.errors import Conflict
from nagare.http.routing import Route
from nagare.http.serialize import git_status_json
from nagare.http.server import Request

if TYPE_CHECKING:  # (loaded only when nagare.yaml has git_sync:)
    from nagare.git_sync import GitSync


class GitApi:
    def __init__(self, sync: GitSync | None) -> None:
        self.sync = sync

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/git",
                self.status,
                "Git sync: {enabled} and, when on, the url (without credentials), branch, the "
                "synced commit (sha, subject, committed_at, synced_at), last_attempt_at, "
                "last_success_at and last_error",
                tags=("system",),
                permission=Permission.READ,
                scope=Scope.GLOBAL,
            ),
            Route(
                "POST",
                "/api/git/sync",
                self.sync_now,
                "Fetch the branch now instead of at the next interval (202); 409 when git sync "
                "is off",
                status=202,
                tags=("system",),
                permission=Permission.EDIT,
                scope=Scope.GLOBAL,
                action="git.sync",
            ),
        ]

    def status(self, request: Request) -> dict[str, Any]:
        return git_status_json(self.sync.status() if self.sync else None)

    def sync_now(self, request: Request) -> dict[str, Any]:
        if self.sync is None:
            raise Conflict("git sync is off (no git_sync in nagare.yaml)")
        self.sync.wake()
        return git_status_json(self.sync.status())
