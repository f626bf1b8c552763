"""Editing DAG files through the API (issue 18, authoring): read with a version, save atomically
with a conflict when the file changed underneath, create from the DAG id without overwriting,
delete, and `allow_dag_edits: false`. Real server on port 0, real files in the tmp DAG folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import quote

from conftest import Nagare

DAG = "id: hello\ntasks:\n  - id: a\n    command: echo hi\n"
KEY = "k-edit"


def test_read_save_and_the_folder_loads_the_new_version(
    nagare_factory: Callable[..., Nagare],
) -> None:
    nagare = nagare_factory(dags={"hello.yaml": DAG}, api_key=KEY)
    source = nagare.get("/api/dags/hello/source")
    assert (source["file"], source["text"], source["editable"]) == ("hello.yaml", DAG, True)
    assert source == nagare.get("/api/dag-files/hello.yaml")
    edited = DAG.replace("echo hi", "echo edited") + "description: from the editor\n"
    saved = nagare.call(
        "PUT", "/api/dag-files/hello.yaml", {"text": edited, "version": source["version"]}
    )
    assert saved.status == 200, saved.body
    assert (saved.json["dag_id"], saved.json["errors"]) == ("hello", [])
    assert saved.json["version"] != source["version"]
    assert (nagare.root / "dags" / "hello.yaml").read_text() == edited
    assert nagare.get("/api/dags/hello")["description"] == "from the editor"
    leftovers = [n for n in os.listdir(nagare.root / "dags") if n != "hello.yaml"]
    assert leftovers == []  # the temporary file was renamed, not left behind
    # a broken save is written, reported, and the last good version keeps running
    broken = nagare.call(
        "PUT",
        "/api/dag-files/hello.yaml",
        {"text": "id: hello\ntasks: 3\n", "version": saved.json["version"]},
    )
    assert broken.status == 200
    assert broken.json["errors"] and "hello.yaml:2: tasks" in broken.json["errors"][0]
    assert nagare.get("/api/dags/hello")["description"] == "from the editor"


def test_a_file_changed_underneath_is_a_conflict_and_is_not_overwritten(
    nagare_factory: Callable[..., Nagare],
) -> None:
    nagare = nagare_factory(dags={"hello.yaml": DAG}, api_key=KEY)
    opened = nagare.get("/api/dag-files/hello.yaml")
    on_disk = DAG.replace("echo hi", "echo from git")
    (nagare.root / "dags" / "hello.yaml").write_text(on_disk)
    result = nagare.call(
        "PUT", "/api/dag-files/hello.yaml", {"text": DAG + "# mine\n", "version": opened["version"]}
    )
    assert result.status == 409
    assert "changed since it was opened" in result.json["error"]["message"]
    assert (nagare.root / "dags" / "hello.yaml").read_text() == on_disk
    stale = nagare.call("DELETE", f"/api/dag-files/hello.yaml?version={opened['version']}")
    assert stale.status == 409
    assert (nagare.root / "dags" / "hello.yaml").exists()


def test_create_names_the_file_after_the_id_and_refuses_to_overwrite(
    nagare_factory: Callable[..., Nagare],
) -> None:
    nagare = nagare_factory(dags={"hello.yaml": DAG}, api_key=KEY)
    text = "id: fresh.one\ntasks:\n  - id: a\n    command: echo new\n"
    created = nagare.call("POST", "/api/dags", {"text": text})
    assert created.status == 201, created.body
    assert (created.json["file"], created.json["dag_id"]) == ("fresh.one.yaml", "fresh.one")
    assert (nagare.root / "dags" / "fresh.one.yaml").read_text() == text
    assert nagare.get("/api/dags/fresh.one")["dag_id"] == "fresh.one"
    again = nagare.call("POST", "/api/dags", {"text": text})
    assert again.status == 409 and "already exists" in again.json["error"]["message"]
    # a file of that name that does not load is not overwritten either
    (nagare.root / "dags" / "other.yml").write_text("id: other\ntasks: oops\n")
    clash = nagare.call("POST", "/api/dags", {"text": text.replace("fresh.one", "other")})
    assert clash.status == 409 and "other.yml already exists" in clash.json["error"]["message"]
    assert (nagare.root / "dags" / "other.yml").read_text() == "id: other\ntasks: oops\n"
    invalid = nagare.call("POST", "/api/dags", {"text": "id: x\ntasks: 3\n"})
    assert invalid.status == 422 and "line 2" in invalid.json["error"]["message"]


def test_delete_removes_the_file_and_the_dag(nagare_factory: Callable[..., Nagare]) -> None:
    nagare = nagare_factory(dags={"hello.yaml": DAG}, api_key=KEY)
    version = nagare.get("/api/dag-files/hello.yaml")["version"]
    result = nagare.call("DELETE", f"/api/dag-files/hello.yaml?version={version}")
    assert result.status == 200, result.body
    assert not (nagare.root / "dags" / "hello.yaml").exists()
    assert nagare.call("GET", "/api/dags/hello").status == 404
    assert nagare.call("GET", "/api/dag-files/hello.yaml").status == 404


def test_writes_need_the_key_and_file_names_stay_in_the_folder(
    nagare_factory: Callable[..., Nagare],
) -> None:
    nagare = nagare_factory(dags={"hello.yaml": DAG}, api_key=KEY)
    anonymous = {"Authorization": ""}
    assert (
        nagare.call("PUT", "/api/dag-files/hello.yaml", {"text": DAG}, headers=anonymous).status
        == 401
    )
    assert nagare.call("POST", "/api/dags", {"text": DAG}, headers=anonymous).status == 401
    assert nagare.call("DELETE", "/api/dag-files/hello.yaml", headers=anonymous).status == 401
    for name in ("../nagare.db", ".hidden.yaml", "a/b.yaml", "notes.txt"):
        result = nagare.call(
            "PUT", f"/api/dag-files/{quote(name, safe='')}", {"text": DAG, "version": ""}
        )
        assert result.status in (400, 404), (name, result.status)
    assert (nagare.root / "nagare.db").exists()


def test_allow_dag_edits_false_refuses_every_write(nagare_factory: Callable[..., Nagare]) -> None:
    nagare = nagare_factory(dags={"hello.yaml": DAG}, api_key=KEY, allow_dag_edits=False)
    source = nagare.get("/api/dag-files/hello.yaml")
    assert source["editable"] is False
    writes = [
        nagare.call(
            "PUT", "/api/dag-files/hello.yaml", {"text": DAG + "#\n", "version": source["version"]}
        ),
        nagare.call("POST", "/api/dags", {"text": DAG.replace("hello", "new")}),
        nagare.call("DELETE", "/api/dag-files/hello.yaml"),
    ]
    for result in writes:
        assert result.status == 403
        assert "allow_dag_edits: false" in result.json["error"]["message"]
    assert (nagare.root / "dags" / "hello.yaml").read_text() == DAG
    assert not (nagare.root / "dags" / "new.yaml").exists()
