"""The routes of the DAG editor: read a DAG file with its version, save, create, delete."""

from __future__ import annotations

from typing import Any

from nagare.access import Permission, Scope
from nagare.dag_edits import DagEdits, DagSource, WriteResult
from nagare.errors import BadRequest, NotFound
from nagare.http.routing import Param, Route
from nagare.http.serialize import dag_source_json, dag_write_json
from nagare.http.server import Request

_TEXT_BODY = {
    "type": "object",
    "properties": {"text": {"type": "string"}, "version": {"type": "string"}},
    "required": ["text"],
}


class EditorApi:
    def __init__(self, edits: DagEdits) -> None:
        self.edits = edits

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/dags/{dag_id}/source",
                self.dag_source,
                "The file of a loaded DAG -> {file, text, version, editable} (version: send it "
                "back when saving)",
                tags=("dags",),
                permission=Permission.SOURCE,
                scope=Scope.DAG,
            ),
            Route(
                "GET",
                "/api/dag-files/{file}",
                self.file_source,
                "A DAG file by name, also one that does not load -> {file, text, version, "
                "editable}",
                tags=("dags",),
                permission=Permission.SOURCE,
                scope=Scope.GLOBAL,
            ),
            Route(
                "PUT",
                "/api/dag-files/{file}",
                self.save,
                "Save a DAG file atomically (body: {text, version}); 409 when it changed since "
                "that version was read, 403 with allow_dag_edits: false -> {file, version, "
                "dag_id, errors}",
                body=_TEXT_BODY,
                tags=("dags",),
                permission=Permission.EDIT,
                scope=Scope.GLOBAL,
                action="dag.save",
            ),
            Route(
                "POST",
                "/api/dags",
                self.create,
                "Create a DAG file <id>.yaml from a valid DAG's text (body: {text}); 409 when the "
                "DAG or the file exists -> {file, version, dag_id, errors}",
                body=_TEXT_BODY,
                status=201,
                tags=("dags",),
                permission=Permission.EDIT,
                scope=Scope.GLOBAL,
                action="dag.create",
            ),
            Route(
                "DELETE",
                "/api/dag-files/{file}",
                self.delete,
                "Delete a DAG file (with ?version=, only if it is still that version)",
                query=(Param("version", "the version read; 409 when the file changed since"),),
                tags=("dags",),
                permission=Permission.EDIT,
                scope=Scope.GLOBAL,
                action="dag.delete",
            ),
        ]

    def dag_source(self, request: Request) -> dict[str, Any]:
        dag_id = request.params["dag_id"]
        name = self.edits.folder.snapshot.files.get(dag_id)
        if name is None:
            raise NotFound(f"no DAG '{dag_id[:100]}' is loaded")
        return self._source_json(self.edits.read(name))

    def file_source(self, request: Request) -> dict[str, Any]:
        return self._source_json(self.edits.read(request.params["file"]))

    def save(self, request: Request) -> dict[str, Any]:
        text, version = _text_and_version(request)
        return _written(request, self.edits.save(request.params["file"], text, version))

    def create(self, request: Request) -> dict[str, Any]:
        text, _ = _text_and_version(request)
        result = self.edits.create(text)
        request.audit["target"] = f"file:{result.file}"
        return _written(request, result)

    def delete(self, request: Request) -> dict[str, Any]:
        version = request.query.get("version", [""])[0]
        self.edits.delete(request.params["file"], version)
        if version:
            request.note(version=version)
        return {"deleted": request.params["file"]}

    def _source_json(self, source: DagSource) -> dict[str, Any]:
        return dag_source_json(source, self.edits.allowed)


def _text_and_version(request: Request) -> tuple[str, str]:
    body = request.json()
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise BadRequest('the body must be an object: {"text": "<the YAML>", "version": "..."}')
    version = body.get("version", "")
    if not isinstance(version, str):
        raise BadRequest("'version' must be a string")
    return body["text"], version


def _written(request: Request, result: WriteResult) -> dict[str, Any]:
    """A write's answer; its file, new version and DAG go to the audit entry."""
    request.note(file=result.file, version=result.version, dag_id=result.dag_id or "-")
    return dag_write_json(result)
