"""DAG file parsing and validation (`nagare/dagfile.py`), rule by rule from spec/dag-format.md.

Pure tests: YAML text in, `DagDef` or a list of `DagError` out. Every error must say where
(file:line), which field, what was found and what was expected.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from nagare.dagfile import (
    DagError,
    dag_from_json,
    dag_to_json,
    find_cycle,
    load_dag_file,
    parse_dag,
    topological_order,
)
from nagare.models import DagDef, Resources, TaskDef, TaskType

FILE = "pipe.yaml"
BASE_DIR = "/srv/dags"


def yml(text: str) -> str:
    """Dedented YAML whose first line is line 1."""
    return textwrap.dedent(text).lstrip("\n")


def parse(text: str, base_dir: str = BASE_DIR) -> tuple[DagDef | None, list[DagError]]:
    return parse_dag(yml(text), FILE, base_dir)


def ok(text: str, base_dir: str = BASE_DIR) -> DagDef:
    dag, errors = parse(text, base_dir)
    assert errors == [], [str(e) for e in errors]
    assert dag is not None
    return dag


def errors_of(text: str) -> list[DagError]:
    dag, errors = parse(text)
    assert dag is None
    assert errors, "expected at least one error"
    return errors


def only_error(text: str) -> DagError:
    errors = errors_of(text)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def task_dag(task_body: str, *more_tasks: str) -> str:
    """A DAG `d` whose first task `a` has `task_body` (YAML lines at task-key indentation).

    Line numbers: `id: d` is 1, `tasks:` 2, `- id: a` 3, the first body line 4.
    """
    lines = ["id: d", "tasks:", "  - id: a"]
    lines += ["    " + line for line in textwrap.dedent(task_body).strip("\n").splitlines()]
    for extra in more_tasks:
        body = textwrap.dedent(extra).strip("\n").splitlines()
        lines += ["  - " + body[0]] + ["    " + line for line in body[1:]]
    return "\n".join(lines) + "\n"


def docker_task(resources: str) -> str:
    return task_dag(f"command: run\nimage: img\nresources: {resources}")


# ---------------------------------------------------------------- a complete, valid file


SPEC_EXAMPLE = """
id: map_reduce
description: "Dynamic map-reduce"
schedule: "0 */6 * * *"
timezone: "Europe/Berlin"
catchup: false
env: {REGION: eu}
trigger:
  type: webhook
  path: /api/webhooks/github
  method: POST
  secret: "s3cret"
  signature_header: X-Hub-Signature-256
  extract_payload: {COMMIT_AUTHOR: ".pusher.name"}
tasks:
  - id: get_files
    type: command
    command: "echo '[\\"a.csv\\", \\"b.csv\\"]'"
    depends_on: []
    env: {PORT: 5432}
    timeout_seconds: 300
    retries: 2
    retry_delay_seconds: 5
    pool: default
  - id: process_file
    type: map
    map_over: get_files
    command: "python process.py {{item}}"
  - id: per_region
    with_items: [eu, us]
    command: "sync {{item}}"
  - id: kick_downstream
    type: trigger_dag
    dag_id: other_dag
  - id: in_container
    image: "python:3.12-slim"
    workdir: /data
    volumes: ["/tmp/in:/data:ro"]
    resources: {cpus: "1.0", memory: "512m", gpus: "all"}
    command: python3 process.py
"""


def test_the_spec_example_parses_into_the_documented_model() -> None:
    dag = ok(SPEC_EXAMPLE)
    assert dag.dag_id == "map_reduce"
    assert dag.description == "Dynamic map-reduce"
    assert (dag.schedule, dag.timezone, dag.catchup) == ("0 */6 * * *", "Europe/Berlin", False)
    assert dag.env == {"REGION": "eu"}
    assert dag.file == FILE
    assert [t.task_id for t in dag.tasks] == [
        "get_files",
        "process_file",
        "per_region_eu",
        "per_region_us",
        "kick_downstream",
        "in_container",
    ]
    get_files = dag.task("get_files")
    assert get_files == TaskDef(
        task_id="get_files",
        command='echo \'["a.csv", "b.csv"]\'',
        env={"PORT": "5432"},
        timeout_seconds=300,
        retries=2,
        retry_delay_seconds=5,
        pool="default",
        line=15,
    )
    assert get_files.max_attempts == 3
    process = dag.task("process_file")
    assert process is not None
    assert (process.type, process.map_over, process.depends_on) == (
        TaskType.MAP,
        "get_files",
        ("get_files",),
    )
    kick = dag.task("kick_downstream")
    assert kick is not None
    assert (kick.type, kick.dag_id, kick.command) == (TaskType.TRIGGER_DAG, "other_dag", "")
    box = dag.task("in_container")
    assert box is not None
    assert (box.image, box.workdir, box.volumes) == (
        "python:3.12-slim",
        "/data",
        ("/tmp/in:/data:ro",),
    )
    assert box.resources == Resources(cpus="1.0", memory="512m", gpus="all")
    assert dag.trigger is not None
    assert dag.trigger.extract_payload == {"COMMIT_AUTHOR": ".pusher.name"}


def test_defaults_of_a_minimal_task() -> None:
    dag = ok(task_dag("command: echo hi"))
    assert dag.tasks == (TaskDef(task_id="a", command="echo hi", line=3),)
    assert dag.tasks[0].pool == "default"
    assert (dag.schedule, dag.timezone, dag.catchup, dag.trigger) == ("", "", False, None)
    assert not dag.is_scheduled


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "line", "field", "suggestion"),
    [
        (task_dag("command: x\ndependson: [b]"), 5, "tasks[0] (a).dependson", "depends_on"),
        (task_dag("command: x\ntimeout: 5"), 5, "tasks[0] (a).timeout", "timeout_seconds"),
        (task_dag("command: x\nimgae: alpine"), 5, "tasks[0] (a).imgae", "image"),
        ("id: d\nschedul: '@daily'\ntasks: [{id: a, command: x}]\n", 2, "schedul", "schedule"),
        (
            "id: d\ntrigger: {type: webhook, path: /api/webhooks/x, secrt: s}\n"
            "tasks: [{id: a, command: x}]\n",
            2,
            "trigger.secrt",
            "secret",
        ),
        (docker_task("{cpu: '1'}"), 6, "tasks[0] (a).resources.cpu", "cpus"),
    ],
)
def test_unknown_key_is_an_error_with_a_did_you_mean_suggestion(
    text: str, line: int, field: str, suggestion: str
) -> None:
    error = only_error(text)
    assert (error.file, error.line, error.field) == (FILE, line, field)
    unknown = field.rsplit(".", 1)[-1]
    assert f"unknown key '{unknown}'" in error.message
    assert f"did you mean '{suggestion}'?" in error.message


def test_a_task_error_names_the_task_by_index_and_id() -> None:
    text = """
        id: d
        tasks:
          - id: fetch
            command: x
          - id: build
            command: y
          - id: kick
            type: trigger_dag
            dag_id: other
            image: alpine
    """
    error = only_error(text)
    assert error.field == "tasks[2] (kick).image"
    assert str(error) == (
        "pipe.yaml:10: tasks[2] (kick).image: 'image' cannot be used with type 'trigger_dag'"
    )


@pytest.mark.parametrize(
    ("id_line", "id_error"),
    [
        ("", "'id' is required"),
        ("id: [a, b]", "expected a string, found a list"),
        ("id: 'not an id'", "'not an id' is not a valid id"),
        ("id: " + "x" * 101, "is not a valid id"),
    ],
)
def test_a_task_without_a_readable_id_is_named_by_index_only(id_line: str, id_error: str) -> None:
    second = "\n".join(line for line in (id_line, "command: y", "retries: -1") if line)
    errors = errors_of(task_dag("command: x", second))
    fields = {e.field: e.message for e in errors}
    assert sorted(fields) == ["tasks[1].id", "tasks[1].retries"], fields
    assert id_error in fields["tasks[1].id"]


def test_unknown_key_without_a_close_match_lists_the_known_keys() -> None:
    error = only_error(task_dag("command: x\nzzzzzz: 1"))
    assert error.field == "tasks[0] (a).zzzzzz"
    assert "unknown key 'zzzzzz'" in error.message
    assert "known: id, type, command, depends_on" in error.message


def test_a_key_given_twice_is_an_error() -> None:
    error = only_error(task_dag("command: x\ncommand: y"))
    assert (error.line, error.field) == (5, "tasks[0] (a).command")
    assert "given twice" in error.message


# ---------------------------------------------------------------- task types


def test_unknown_type_is_an_error_naming_the_known_types() -> None:
    error = only_error(task_dag("type: bash\ncommand: x"))
    assert (error.line, error.field) == (4, "tasks[0] (a).type")
    assert "unknown type 'bash'" in error.message
    assert "command, map, trigger_dag" in error.message


@pytest.mark.parametrize(
    "body",
    [
        "retries: 1",
        "command: ''",
        "command: '   '",
        "command:",
        "type: command\nretries: 1",
    ],
)
def test_command_task_requires_a_command(body: str) -> None:
    error = only_error(task_dag(body) + "  - id: b\n    command: x\n")
    assert error.field == "tasks[0] (a).command"
    assert "'command' is required for type 'command'" in error.message


def test_map_task_requires_a_command() -> None:
    text = task_dag("command: src", "id: m\ntype: map\nmap_over: a")
    error = only_error(text)
    assert error.field == "tasks[1] (m).command"
    assert "'command' is required for type 'map'" in error.message


def test_trigger_dag_requires_dag_id_and_no_command() -> None:
    error = only_error(task_dag("type: trigger_dag"))
    assert (error.line, error.field) == (3, "tasks[0] (a).dag_id")
    assert "'dag_id' is required for type 'trigger_dag'" in error.message
    dag = ok(task_dag("type: trigger_dag\ndag_id: other"))
    assert dag.tasks[0].dag_id == "other"


# ---------------------------------------------------------------- map


def test_map_requires_map_over() -> None:
    error = only_error(task_dag("type: map\ncommand: x"))
    assert error.field == "tasks[0] (a).map_over"
    assert "requires 'map_over'" in error.message


def test_map_over_naming_an_unknown_task_is_an_error_with_a_suggestion() -> None:
    text = task_dag("command: src", "id: m\ntype: map\nmap_over: aa\ncommand: x")
    messages = [e.message for e in errors_of(text)]
    assert any("unknown task 'aa'" in m and "did you mean 'a'" in m for m in messages), messages


def test_map_over_naming_an_unknown_task_is_reported_under_map_over() -> None:
    text = task_dag("command: src", "id: m\ntype: map\nmap_over: nope\ncommand: x")
    error = only_error(text)
    assert error.field.endswith("map_over"), str(error)
    assert error.line == 7  # the `map_over: nope` line


def test_map_over_is_only_valid_with_type_map() -> None:
    text = task_dag("command: src", "id: b\ncommand: x\nmap_over: a")
    error = only_error(text)
    assert (error.line, error.field) == (7, "tasks[1] (b).map_over")
    assert "only valid with type: map" in error.message


def test_map_over_a_map_task_is_an_error() -> None:
    text = task_dag(
        "command: src",
        "id: m1\ntype: map\nmap_over: a\ncommand: x",
        "id: m2\ntype: map\nmap_over: m1\ncommand: y",
    )
    error = only_error(text)
    assert error.field == "tasks.m2.map_over"
    assert "'m1' is a map task" in error.message


def test_map_over_itself_is_an_error() -> None:
    errors = errors_of(task_dag("type: map\nmap_over: a\ncommand: x"))
    assert any(
        e.field == "tasks.a.map_over" and "cannot map over itself" in e.message for e in errors
    ), [str(e) for e in errors]


@pytest.mark.parametrize(
    ("extra", "expected_deps"),
    [
        ("", ("a",)),
        ("\ndepends_on: [b]", ("b", "a")),
        ("\ndepends_on: [a, b]", ("a", "b")),
    ],
)
def test_map_over_implies_depends_on(extra: str, expected_deps: tuple[str, ...]) -> None:
    text = task_dag(
        "command: src", "id: b\ncommand: other", f"id: m\ntype: map\nmap_over: a{extra}\ncommand: x"
    )
    dag = ok(text)
    assert dag.tasks[2].depends_on == expected_deps


# ---------------------------------------------------------------- docker fields


def test_image_requires_command() -> None:
    error = only_error(task_dag("image: alpine"))
    assert error.field == "tasks[0] (a).command"
    assert "'command' is required" in error.message


@pytest.mark.parametrize(
    ("body", "line", "key"),
    [
        ("workdir: /w", 5, "workdir"),
        ("volumes: ['/a:/b']", 5, "volumes"),
        ("resources: {cpus: '1'}", 5, "resources"),
    ],
)
def test_workdir_volumes_resources_require_image(body: str, line: int, key: str) -> None:
    error = only_error(task_dag(f"command: x\n{body}"))
    assert (error.line, error.field) == (line, f"tasks[0] (a).{key}")
    assert f"'{key}' requires 'image'" in error.message


def test_image_is_not_allowed_on_trigger_dag() -> None:
    error = only_error(task_dag("type: trigger_dag\ndag_id: other\nimage: alpine"))
    assert (error.line, error.field) == (6, "tasks[0] (a).image")
    assert "'image' cannot be used with type 'trigger_dag'" in error.message


@pytest.mark.parametrize("cpus", ["'0'", "'-1'", "'Inf'", "'NaN'", "'abc'", "'-0'", "'1e400'", "0"])
def test_resources_cpus_must_be_a_positive_finite_number(cpus: str) -> None:
    error = only_error(docker_task(f"{{cpus: {cpus}}}"))
    assert (error.line, error.field) == (6, "tasks[0] (a).resources.cpus")
    assert "expected a positive number" in error.message
    assert f"found '{cpus.strip(chr(39))}'" in error.message


@pytest.mark.parametrize(("cpus", "kept"), [("'0.5'", "0.5"), ("2", "2"), ("2.0", "2.0")])
def test_resources_cpus_accepts_positive_numbers_as_written(cpus: str, kept: str) -> None:
    assert ok(docker_task(f"{{cpus: {cpus}}}")).tasks[0].resources == Resources(cpus=kept)


@pytest.mark.parametrize("memory", ["512m", "512M", "2g", "2G", "64k", "64K", "10b", "1073741824"])
def test_resources_memory_accepts_a_number_with_an_optional_suffix(memory: str) -> None:
    assert ok(docker_task(f"{{memory: '{memory}'}}")).tasks[0].resources == Resources(memory=memory)


@pytest.mark.parametrize("memory", ["512mb", "1.5g", "-1m", "m", "512 m", "2t", "abc"])
def test_resources_memory_rejects_other_forms(memory: str) -> None:
    error = only_error(docker_task(f"{{memory: '{memory}'}}"))
    assert (error.line, error.field) == (6, "tasks[0] (a).resources.memory")
    assert f"found '{memory}'" in error.message
    assert "b/k/m/g" in error.message


@pytest.mark.parametrize("gpus", ["all", "1", "8"])
def test_resources_gpus_accepts_all_or_a_positive_integer(gpus: str) -> None:
    assert ok(docker_task(f"{{gpus: '{gpus}'}}")).tasks[0].resources == Resources(gpus=gpus)


@pytest.mark.parametrize("gpus", ["0", "-1", "1.5", "some", "all,1"])
def test_resources_gpus_rejects_other_values(gpus: str) -> None:
    error = only_error(docker_task(f"{{gpus: '{gpus}'}}"))
    assert (error.line, error.field) == (6, "tasks[0] (a).resources.gpus")
    assert '"all" or a positive integer' in error.message
    assert f"found '{gpus}'" in error.message


def test_resources_gpus_with_a_unicode_digit_is_an_error_not_a_crash() -> None:
    error = only_error(docker_task("{gpus: '²'}"))
    assert error.field == "tasks[0] (a).resources.gpus"


@pytest.mark.parametrize(
    ("volume", "fragment"),
    [
        ("data", "expected host_path:container_path[:ro|rw]"),
        ("a:/b:ro:x", "expected host_path:container_path[:ro|rw]"),
        (":/data", "must be non-empty"),
        ("/in:", "must be non-empty"),
        ("/in::ro", "must be non-empty"),
        ("/in:/data:rx", "invalid volume mode 'rx' (expected 'ro' or 'rw')"),
        ("/in:/data:RO", "invalid volume mode 'RO'"),
        ("/in:data", "container path 'data' must be absolute"),
    ],
)
def test_invalid_volume_forms(volume: str, fragment: str) -> None:
    error = only_error(task_dag(f"command: x\nimage: img\nvolumes:\n  - '{volume}'"))
    assert (error.line, error.field) == (7, "tasks[0] (a).volumes[0]")
    assert fragment in error.message
    if "mode" not in fragment and "container path" not in fragment:
        assert f"'{volume}'" in error.message


@pytest.mark.parametrize(
    ("volume", "resolved"),
    [
        ("/tmp/in:/data", "/tmp/in:/data"),
        ("/tmp/in:/data:ro", "/tmp/in:/data:ro"),
        ("/tmp/in:/data:rw", "/tmp/in:/data:rw"),
        ("data:/data", "/srv/dags/data:/data"),
        ("./data/in:/in:ro", "/srv/dags/data/in:/in:ro"),
        ("../shared:/shared", "/srv/shared:/shared"),
    ],
)
def test_volume_host_paths_resolve_against_the_dag_files_folder(volume: str, resolved: str) -> None:
    dag = ok(task_dag(f"command: x\nimage: img\nvolumes: ['{volume}']"))
    assert dag.tasks[0].volumes == (resolved,)


def test_relative_volume_resolves_against_the_folder_of_the_loaded_file(tmp_path: Path) -> None:
    path = tmp_path / "box.yaml"
    path.write_text(task_dag("command: x\nimage: img\nvolumes: ['in:/data:ro']"))
    dag, errors = load_dag_file(str(path))
    assert errors == []
    assert dag is not None
    assert dag.tasks[0].volumes == (f"{tmp_path / 'in'}:/data:ro",)


# ---------------------------------------------------------------- dependencies and graph


def test_unknown_dependency_is_an_error_with_a_suggestion() -> None:
    text = task_dag(
        "command: x", "id: extract\ncommand: y", "id: load\ncommand: z\ndepends_on: [extrat]"
    )
    error = only_error(text)
    assert (error.line, error.field) == (7, "tasks.load.depends_on")
    assert "unknown task 'extrat'; did you mean 'extract'?" in error.message


def test_unknown_dependency_without_a_close_match_lists_the_task_ids() -> None:
    error = only_error(task_dag("command: x", "id: b\ncommand: y\ndepends_on: [zzz]"))
    assert "unknown task 'zzz'" in error.message
    assert "expected one of: a, b" in error.message


def test_a_cycle_is_reported_with_its_full_path() -> None:
    text = task_dag(
        "command: x\ndepends_on: [b]",
        "id: b\ncommand: y\ndepends_on: [c]",
        "id: c\ncommand: z\ndepends_on: [a]",
    )
    error = only_error(text)
    assert (error.line, error.field) == (3, "tasks.a.depends_on")
    assert error.message == "dependency cycle: a -> b -> c -> a"


def test_a_two_task_cycle_behind_an_acyclic_prefix() -> None:
    text = task_dag(
        "command: x", "id: b\ncommand: y\ndepends_on: [a, c]", "id: c\ncommand: z\ndepends_on: b"
    )
    assert only_error(text).message == "dependency cycle: b -> c -> b"


def test_self_dependency_is_an_error() -> None:
    error = only_error(task_dag("command: x\ndepends_on: [a]"))
    assert (error.line, error.field) == (3, "tasks.a.depends_on")
    assert error.message == "task 'a' depends on itself"


def test_find_cycle_returns_the_closed_path_or_nothing() -> None:
    def t(task_id: str, *deps: str) -> TaskDef:
        return TaskDef(task_id=task_id, command="x", depends_on=deps)

    assert find_cycle([t("a"), t("b", "a"), t("c", "a", "b")]) == []
    assert find_cycle([t("a", "c"), t("b", "a"), t("c", "b")]) == ["a", "c", "b", "a"]
    assert find_cycle((t("x"), t("y", "y"))) == ["y", "y"]
    assert find_cycle([t("a", "missing")]) == []


def test_duplicate_task_ids_are_an_error() -> None:
    error = only_error(task_dag("command: x", "id: b\ncommand: y", "id: a\ncommand: z"))
    assert (error.line, error.field) == (7, "tasks.a")
    assert error.message == "duplicate task id 'a'"


# ---------------------------------------------------------------- ids and pools

VALID_IDS = ["a", "A", "9", "etl.v2", "load-data", "x_1", "a" * 100]
INVALID_IDS = ["_a", "-a", ".a", "a b", "a/b", "a:b", "é", "a" * 101, "a\u00a0b"]


@pytest.mark.parametrize("value", VALID_IDS)
def test_valid_ids_for_dags_tasks_and_pools(value: str) -> None:
    dag = ok(f"id: '{value}'\ntasks:\n  - id: '{value}'\n    pool: '{value}'\n    command: x\n")
    assert (dag.dag_id, dag.tasks[0].task_id, dag.tasks[0].pool) == (value, value, value)


@pytest.mark.parametrize("value", INVALID_IDS)
@pytest.mark.parametrize(
    ("template", "line", "field", "noun"),
    [
        ("id: '{v}'\ntasks: [{{id: a, command: x}}]\n", 1, "id", "id"),
        ("id: d\ntasks:\n  - id: '{v}'\n    command: x\n", 3, "tasks[0].id", "id"),
        (
            "id: d\ntasks:\n  - id: a\n    pool: '{v}'\n    command: x\n",
            4,
            "tasks[0] (a).pool",
            "pool",
        ),
    ],
)
def test_invalid_ids_and_pool_names(
    value: str, template: str, line: int, field: str, noun: str
) -> None:
    error = only_error(template.format(v=value))
    assert (error.line, error.field) == (line, field)
    assert f"'{value}' is not a valid {noun}" in error.message
    assert "at most 100" in error.message


def test_a_numeric_id_is_kept_as_its_text() -> None:
    dag = ok("id: 123\ntasks:\n  - id: 007\n    command: x\n")
    assert (dag.dag_id, dag.tasks[0].task_id) == ("123", "007")


@pytest.mark.parametrize(
    ("text", "line", "field", "fragment"),
    [
        ("tasks: [{id: a, command: x}]\n", 1, "id", "'id' is required"),
        ("id: d\n", 1, "tasks", "'tasks' is required"),
        ("id: d\ntasks: []\n", 2, "tasks", "expected a non-empty list of tasks, found a list"),
        ("id: d\ntasks: {a: 1}\n", 2, "tasks", "found a mapping"),
        ("id: d\ntasks:\n  - just a string\n", 3, "tasks[0]", "expected a task mapping"),
        ("id: d\ntasks:\n  - command: x\n", 3, "tasks[0].id", "'id' is required"),
    ],
)
def test_required_structure(text: str, line: int, field: str, fragment: str) -> None:
    error = only_error(text)
    assert (error.line, error.field) == (line, field)
    assert fragment in error.message


# ---------------------------------------------------------------- schedule and timezone


@pytest.mark.parametrize(
    "schedule",
    ["'0 */6 * * *'", "'@daily'", "'@every 5m'", "workflow_dispatch", "''", "'*/5 * * * *'"],
)
def test_valid_schedules(schedule: str) -> None:
    dag = ok(f"id: d\nschedule: {schedule}\ntasks: [{{id: a, command: x}}]\n")
    assert dag.schedule == schedule.strip("'")


def test_absent_or_manual_schedule_means_not_scheduled() -> None:
    for line in ("", "schedule: workflow_dispatch\n", "schedule: ''\n"):
        assert not ok(f"id: d\n{line}tasks: [{{id: a, command: x}}]\n").is_scheduled
    assert ok("id: d\nschedule: '@hourly'\ntasks: [{id: a, command: x}]\n").is_scheduled


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        ("'* * * *'", "not a valid cron expression"),
        ("'61 * * * *'", "not a valid cron expression"),
        ("'0 0 30 2 *'", "never matches"),
        ("'@reboot'", "unknown schedule descriptor '@reboot'"),
        ("'@every 5'", "not a valid @every schedule"),
        ("hourly", "not a valid cron expression"),
    ],
)
def test_invalid_cron_is_an_error(schedule: str, fragment: str) -> None:
    error = only_error(f"id: d\nschedule: {schedule}\ntasks: [{{id: a, command: x}}]\n")
    assert (error.line, error.field) == (2, "schedule")
    assert fragment in error.message
    assert schedule.strip("'") in error.message


def test_unknown_timezone_is_an_error() -> None:
    text = "id: d\nschedule: '@daily'\ntimezone: Mars/Olympus\ntasks: [{id: a, command: x}]\n"
    error = only_error(text)
    assert (error.line, error.field) == (3, "timezone")
    assert "unknown timezone 'Mars/Olympus'" in error.message
    assert "IANA" in error.message


def test_timezone_is_checked_even_without_a_schedule() -> None:
    error = only_error("id: d\ntimezone: Nowhere/Land\ntasks: [{id: a, command: x}]\n")
    assert error.field == "timezone"


def test_unquoted_star_schedule_is_invalid_yaml_with_a_quoting_hint() -> None:
    error = only_error("id: d\nschedule: */5 * * * *\ntasks: [{id: a, command: x}]\n")
    assert error.line == 2
    assert error.message.startswith("invalid YAML: ")
    assert "quote values that start with '*'" in error.message
    assert 'schedule: "*/5 * * * *"' in error.message
    assert str(error).startswith(f"{FILE}:2: invalid YAML")


def test_other_invalid_yaml_names_the_line_without_the_star_hint() -> None:
    error = only_error("id: d\ntasks:\n  - id: a\n    command: [unclosed\n")
    assert error.line >= 4
    assert error.message.startswith("invalid YAML: ")
    assert "quote values" not in error.message


def test_an_unclosed_quote_is_reported_where_it_opens() -> None:
    """Defect 12: it used to point at the end of the text ("found unexpected end of stream")."""
    text = 'id: d\ndescription: "never closed\ntasks:\n  - id: a\n    command: x\n\n\n'
    error = only_error(text)
    assert error.line == 2
    assert error.message.startswith(
        "invalid YAML: unclosed quote: the value quoted at line 2, column 14"
    )


def test_an_unclosed_flow_list_is_reported_where_it_opens() -> None:
    error = only_error("id: d\ntags: [a, b\ntasks:\n  - id: a\n    command: x\n")
    assert error.line == 2
    assert "the '[' list that starts at line 2, column 7 is not closed" in error.message


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n"])
def test_an_empty_file_is_an_error(text: str) -> None:
    dag, errors = parse_dag(text, FILE)
    assert dag is None
    assert len(errors) == 1
    assert "the file is empty" in errors[0].message
    assert "expected a mapping with 'id' and 'tasks'" in errors[0].message
    assert str(errors[0]).startswith(FILE)


@pytest.mark.parametrize(
    ("text", "found"),
    [("- a\n- b\n", "a list"), ("just text\n", "the string 'just text'"), ("42\n", "the number")],
)
def test_a_non_mapping_root_is_an_error(text: str, found: str) -> None:
    error = only_error(text)
    assert error.line == 1
    assert "expected a mapping with 'id' and 'tasks'" in error.message
    assert f"found {found}" in error.message


# ---------------------------------------------------------------- all problems at once


def test_all_problems_of_a_file_are_reported_together() -> None:
    text = yml(
        """
        id: "bad id"
        schedule: "not a cron"
        tasks:
          - id: a
            command: x
            retries: "3"
            dependson: [b]
          - id: b
            type: shell
            command: y
        """
    )
    dag, errors = parse_dag(text, FILE)
    assert dag is None
    assert sorted((e.line, e.field) for e in errors) == [
        (1, "id"),
        (2, "schedule"),
        (6, "tasks[0] (a).retries"),
        (7, "tasks[0] (a).dependson"),
        (9, "tasks[1] (b).type"),
    ]


def test_graph_problems_are_reported_together_with_field_problems() -> None:
    text = task_dag("command: x\nretries: -1\ndepends_on: [nope]", "id: a\ncommand: y")
    fields = sorted(e.field for e in errors_of(text))
    assert fields == ["tasks.a", "tasks.a.depends_on", "tasks[0] (a).retries"]


def test_a_cycle_is_reported_together_with_an_unknown_dependency() -> None:
    text = task_dag(
        "command: x\ndepends_on: [zzz]",
        "id: b\ncommand: y\ndepends_on: [c]",
        "id: c\ncommand: z\ndepends_on: [b]",
    )
    messages = [e.message for e in errors_of(text)]
    assert any("unknown task 'zzz'" in m for m in messages), messages
    assert "dependency cycle: b -> c -> b" in messages, messages


def test_an_invalid_cron_is_reported_together_with_an_unknown_timezone() -> None:
    text = "id: d\nschedule: 'not cron'\ntimezone: Mars/Base\ntasks: [{id: a, command: x}]\n"
    fields = sorted(e.field for e in errors_of(text))
    assert fields == ["schedule", "timezone"]


@pytest.mark.parametrize(
    ("text", "line", "field", "found", "expected"),
    [
        (
            task_dag("command: x\nretries: '3'"),
            5,
            "tasks[0] (a).retries",
            "'3'",
            "whole number >= 0",
        ),
        (task_dag("command: x\ntimeout_seconds: 0"), 5, "tasks[0] (a).timeout_seconds", "0", "> 0"),
        (task_dag("type: nope\ncommand: x"), 4, "tasks[0] (a).type", "'nope'", "command, map"),
        (docker_task("{memory: 1x}"), 6, "tasks[0] (a).resources.memory", "'1x'", "b/k/m/g"),
        ("id: 'a b'\ntasks: [{id: a, command: x}]\n", 1, "id", "'a b'", "letters, digits"),
        (task_dag("command: x\ncatchup: 1"), 5, "tasks[0] (a).catchup", "'catchup'", "known:"),
        ("id: d\ncatchup: 'yes'\ntasks: [{id: a, command: x}]\n", 2, "catchup", "'yes'", "true"),
        ("id: d\nenv: [A]\ntasks: [{id: a, command: x}]\n", 2, "env", "a list", "NAME: value"),
        (task_dag("command: x\nenv: {1A: x}"), 5, "tasks[0] (a).env.1A", "'1A'", "[A-Za-z_]"),
        (
            "id: d\ndescription: [x]\ntasks: [{id: a, command: x}]\n",
            2,
            "description",
            "a list",
            "a string",
        ),
    ],
)
def test_error_text_names_file_line_field_found_and_expected(
    text: str, line: int, field: str, found: str, expected: str
) -> None:
    error = only_error(text)
    assert (error.line, error.field) == (line, field)
    rendered = str(error)
    assert rendered.startswith(f"{FILE}:{line}: {field}: "), rendered
    assert found in error.message
    assert expected in error.message


def test_every_error_of_a_broken_file_has_file_line_and_field() -> None:
    text = yml(
        """
        id: d
        env: {9X: a}
        trigger: {type: hook, path: /x}
        tasks:
          - id: a
            image: img
            command: x
            volumes: ["a"]
            resources: {cpus: "0", memory: "1q", gpus: "0"}
          - id: b
            type: map
            command: y
            depends_on: [a, a2]
        """
    )
    dag, errors = parse_dag(text, FILE)
    assert dag is None
    assert len(errors) == 9, [str(e) for e in errors]
    for error in errors:
        field = r"[\w.\[\]]+( \([\w.-]+\)[\w.\[\]]+)?"  # tasks[0] (a).image: index and id
        assert re.match(rf"^{re.escape(FILE)}:\d+: {field}: \S", str(error)), str(error)
        assert error.line > 0


# ---------------------------------------------------------------- scalars and numbers


def test_scalar_text_is_kept_as_written() -> None:
    dag = ok(
        task_dag(
            "command: x\n"
            "env: {PORT: 5432, MODE: 0755, FLAG: yes, RATIO: 1.50, EMPTY: null, TILDE: ~, "
            "HEX: 0x1F, DATE: 2024-01-01}"
        )
    )
    assert dag.tasks[0].env == {
        "PORT": "5432",
        "MODE": "0755",
        "FLAG": "yes",
        "RATIO": "1.50",
        "EMPTY": "",
        "TILDE": "",
        "HEX": "0x1F",
        "DATE": "2024-01-01",
    }


def test_dag_env_keeps_scalar_text_too() -> None:
    dag = ok("id: d\nenv: {PORT: 08080, ON: on}\ntasks: [{id: a, command: x}]\n")
    assert dag.env == {"PORT": "08080", "ON": "on"}


def test_with_items_and_command_keep_scalar_text() -> None:
    dag = ok(task_dag("command: echo {{item}}\nwith_items: [1, 0755, yes]"))
    assert [(t.task_id, t.command) for t in dag.tasks] == [
        ("a_1", "echo 1"),
        ("a_0755", "echo 0755"),
        ("a_yes", "echo yes"),
    ]


@pytest.mark.parametrize(
    ("body", "field", "found"),
    [
        ("retries: '3'", "retries", "the string '3'"),
        ("retries: 1.5", "retries", "the number '1.5'"),
        ("retries: -1", "retries", "-1"),
        ("retries: true", "retries", "the boolean 'true'"),
        ("retries: [1]", "retries", "a list"),
        ("timeout_seconds: 0", "timeout_seconds", "found 0"),
        ("timeout_seconds: -5", "timeout_seconds", "found -5"),
        ("timeout_seconds: '10'", "timeout_seconds", "the string '10'"),
        ("timeout_seconds: .inf", "timeout_seconds", ".inf"),
        ("timeout_seconds: .nan", "timeout_seconds", ".nan"),
        ("retry_delay_seconds: -1", "retry_delay_seconds", "-1"),
        ("retry_delay_seconds: -0.5", "retry_delay_seconds", "-0.5"),
        ("retry_delay_seconds: 'soon'", "retry_delay_seconds", "the string 'soon'"),
    ],
)
def test_number_fields_reject_wrong_values(body: str, field: str, found: str) -> None:
    error = only_error(task_dag(f"command: x\n{body}"))
    assert (error.line, error.field) == (5, f"tasks[0] (a).{field}")
    assert found in error.message
    assert "expected" in error.message


@pytest.mark.parametrize(
    ("body", "attribute", "value"),
    [
        ("retries: 0", "retries", 0),
        ("retries: 5", "retries", 5),
        ("timeout_seconds: 0.5", "timeout_seconds", 0.5),
        ("timeout_seconds: 300", "timeout_seconds", 300),
        ("retry_delay_seconds: 0", "retry_delay_seconds", 0),
        ("retry_delay_seconds: 2.5", "retry_delay_seconds", 2.5),
    ],
)
def test_number_fields_accept_valid_values(body: str, attribute: str, value: float) -> None:
    task = ok(task_dag(f"command: x\n{body}")).tasks[0]
    assert getattr(task, attribute) == value


def test_catchup_must_be_a_boolean() -> None:
    assert ok("id: d\ncatchup: true\ntasks: [{id: a, command: x}]\n").catchup is True
    error = only_error("id: d\ncatchup: 1\ntasks: [{id: a, command: x}]\n")
    assert error.field == "catchup"
    assert "expected true or false, found the number '1'" in error.message


# ---------------------------------------------------------------- depends_on


@pytest.mark.parametrize(
    ("value", "deps"),
    [("a", ("a",)), ("[a]", ("a",)), ("[a, b]", ("a", "b")), ("[]", ()), ("''", ()), ("", ())],
)
def test_depends_on_is_a_list_or_a_single_string(value: str, deps: tuple[str, ...]) -> None:
    text = task_dag("command: x", "id: b\ncommand: y", f"id: c\ncommand: z\ndepends_on: {value}")
    assert ok(text).tasks[2].depends_on == deps


def test_depends_on_rejects_a_mapping() -> None:
    error = only_error(task_dag("command: x", "id: b\ncommand: y\ndepends_on: {a: 1}"))
    assert error.field == "tasks[1] (b).depends_on"
    assert "expected a list of strings, found a mapping" in error.message


# ---------------------------------------------------------------- with_items


def test_with_items_clones_the_task_per_item_and_substitutes_item() -> None:
    dag = ok(task_dag("command: sync {{item}} --to {{item}}\nwith_items: [eu, us]\nretries: 2"))
    assert [(t.task_id, t.command, t.retries) for t in dag.tasks] == [
        ("a_eu", "sync eu --to eu", 2),
        ("a_us", "sync us --to us", 2),
    ]


def test_dependants_of_a_with_items_task_depend_on_every_clone() -> None:
    text = task_dag(
        "command: get",
        "id: per\ncommand: sync {{item}}\nwith_items: [eu, us, ap]\ndepends_on: a",
        "id: done\ncommand: report\ndepends_on: [per, a]",
    )
    dag = ok(text)
    assert [t.task_id for t in dag.tasks] == ["a", "per_eu", "per_us", "per_ap", "done"]
    assert [t.depends_on for t in dag.tasks[1:4]] == [("a",), ("a",), ("a",)]
    assert dag.tasks[-1].depends_on == ("per_eu", "per_us", "per_ap", "a")


def test_a_clone_can_be_named_directly() -> None:
    text = task_dag("command: s {{item}}\nwith_items: [x, y]", "id: b\ncommand: t\ndepends_on: a_y")
    assert ok(text).tasks[-1].depends_on == ("a_y",)


@pytest.mark.parametrize("item", ["a b", "x/y", "é", "z" * 99])
def test_with_items_that_make_an_invalid_id_are_rejected(item: str) -> None:
    error = only_error(task_dag(f"command: x\nwith_items: ['{item}']"))
    assert error.line == 5
    assert error.field.endswith("with_items")
    assert f"item '{item}' makes the task id 'a_{item}', which is not valid" in error.message


def test_with_items_with_type_map_is_rejected() -> None:
    text = task_dag("command: src", "id: m\ntype: map\nmap_over: a\ncommand: x\nwith_items: [p]")
    error = only_error(text)
    assert (error.line, error.field) == (9, "tasks[1] (m).with_items")
    assert "with_items cannot be combined with type: map" in error.message


@pytest.mark.parametrize(("value", "found"), [("[]", "non-empty list"), ("eu", "found the string")])
def test_with_items_must_be_a_non_empty_list(value: str, found: str) -> None:
    error = only_error(task_dag(f"command: x\nwith_items: {value}"))
    assert error.field == "tasks[0] (a).with_items"
    assert found in error.message


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("name", ["etl.yaml", "etl.yml"])
def test_load_dag_file_reads_yaml_and_yml(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(task_dag("command: echo hi"))
    dag, errors = load_dag_file(str(path))
    assert errors == []
    assert dag is not None
    assert (dag.dag_id, dag.file) == ("d", name)


def test_load_dag_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(task_dag("command: x\nretries: many"))
    dag, errors = load_dag_file(str(path))
    assert dag is None
    assert [str(e) for e in errors] == [
        "broken.yml:5: tasks[0] (a).retries: expected a whole number >= 0, found the string 'many'"
    ]


def test_load_dag_file_reports_an_unreadable_file(tmp_path: Path) -> None:
    dag, errors = load_dag_file(str(tmp_path / "missing.yaml"))
    assert dag is None
    assert len(errors) == 1
    assert errors[0].file == "missing.yaml"
    assert "cannot read the file" in errors[0].message


def test_load_dag_file_reports_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"id: d\ndescription: caf\xe9\ntasks: [{id: a, command: x}]\n")
    dag, errors = load_dag_file(str(path))
    assert dag is None
    assert "cannot read the file" in errors[0].message


# ---------------------------------------------------------------- webhook trigger


def trigger_dag_text(trigger: str) -> str:
    return f"id: d\ntrigger: {trigger}\ntasks: [{{id: a, command: x}}]\n"


def test_trigger_block_defaults() -> None:
    dag = ok(trigger_dag_text("{type: webhook, path: /api/webhooks/gh}"))
    assert dag.trigger is not None
    assert (dag.trigger.type, dag.trigger.path, dag.trigger.method) == (
        "webhook",
        "/api/webhooks/gh",
        "POST",
    )
    assert dag.trigger.signature_header == "X-Hub-Signature-256"
    assert (dag.trigger.secret, dag.trigger.secret_env, dag.trigger.extract_payload) == ("", "", {})


@pytest.mark.parametrize(("method", "expected"), [("post", "POST"), ("Put", "PUT"), ("GET", "GET")])
def test_trigger_method_is_upper_cased(method: str, expected: str) -> None:
    dag = ok(trigger_dag_text(f"{{type: webhook, path: /api/webhooks/gh, method: {method}}}"))
    assert dag.trigger is not None and dag.trigger.method == expected


def test_trigger_secret_env_and_extract_payload() -> None:
    dag = ok(
        trigger_dag_text(
            "{type: webhook, path: /api/webhooks/gh, secret_env: GH_SECRET, "
            "signature_header: X-Sig, extract_payload: {AUTHOR: .pusher.name}}"
        )
    )
    assert dag.trigger is not None
    assert (dag.trigger.secret_env, dag.trigger.signature_header) == ("GH_SECRET", "X-Sig")
    assert dag.trigger.extract_payload == {"AUTHOR": ".pusher.name"}


@pytest.mark.parametrize(
    ("trigger", "field", "fragment"),
    [
        ("{path: /api/webhooks/x}", "trigger.type", "'type' is required (expected 'webhook')"),
        ("{type: cron, path: /api/webhooks/x}", "trigger.type", "expected 'webhook', found 'cron'"),
        ("{type: webhook}", "trigger.path", "starting with /api/webhooks/, found ''"),
        ("{type: webhook, path: /hooks/x}", "trigger.path", "found '/hooks/x'"),
        ("{type: webhook, path: /api/webhooks/}", "trigger.path", "found '/api/webhooks/'"),
        ("{type: webhook, path: /api/webhooks/x, method: 'GE T'}", "trigger.method", "'GE T'"),
        (
            "{type: webhook, path: /api/webhooks/x, secret: s, secret_env: S}",
            "trigger.secret_env",
            "either 'secret' or 'secret_env', not both",
        ),
        (
            "{type: webhook, path: /api/webhooks/x, secret_env: 1BAD}",
            "trigger.secret_env",
            "'1BAD' is not a valid environment variable name",
        ),
        ("webhook", "trigger", "expected a mapping with 'type: webhook'"),
    ],
)
def test_trigger_block_rules(trigger: str, field: str, fragment: str) -> None:
    error = only_error(trigger_dag_text(trigger))
    assert (error.line, error.field) == (2, field)
    assert fragment in error.message


# ---------------------------------------------------------------- JSON snapshot and order


def test_dag_json_round_trip() -> None:
    dag = replace(ok(SPEC_EXAMPLE), trigger=None)
    text = dag_to_json(dag)
    assert dag_from_json(text) == dag
    assert dag_to_json(dag_from_json(text)) == text
    assert json.loads(text)["tasks"][1]["type"] == "map"


def test_dag_json_is_stable_and_leaves_out_the_webhook_trigger() -> None:
    dag = ok(SPEC_EXAMPLE)
    text = dag_to_json(dag)
    assert text == dag_to_json(ok(SPEC_EXAMPLE))
    assert list(json.loads(text)) == sorted(json.loads(text))
    again = dag_from_json(text)
    assert again.trigger is None
    assert again.tasks == dag.tasks
    assert (again.dag_id, again.schedule, again.env, again.file) == (
        dag.dag_id,
        dag.schedule,
        dag.env,
        dag.file,
    )


def test_topological_order_puts_dependencies_first_and_keeps_file_order() -> None:
    def t(task_id: str, *deps: str) -> TaskDef:
        return TaskDef(task_id=task_id, command="x", depends_on=deps)

    assert topological_order((t("c"), t("b"), t("a"))) == ["c", "b", "a"]
    order = topological_order((t("report", "load"), t("load", "extract"), t("extract"), t("z")))
    assert order.index("extract") < order.index("load") < order.index("report")
    assert order.index("extract") < order.index("z")  # both ready at once: file order
    diamond = topological_order((t("d", "b", "c"), t("c", "a"), t("b", "a"), t("a")))
    assert diamond == ["a", "c", "b", "d"]


def test_topological_order_of_a_parsed_dag_with_clones_and_map() -> None:
    dag = ok(SPEC_EXAMPLE)
    order = topological_order(dag.tasks)
    assert sorted(order) == sorted(t.task_id for t in dag.tasks)
    assert order.index("get_files") < order.index("process_file")
