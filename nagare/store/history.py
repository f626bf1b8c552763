"""The DAG page's history views in SQLite: the grid (the last runs x their tasks' states), the
calendar (runs per day by status) and the stored versions of a DAG. Read-only, one query each
(plus one for the grid's runs), on the indexes the run list already has."""

from __future__ import annotations

from dataclasses import dataclass, field

from nagare.store.db import Database

DAY_MS = 86_400_000


@dataclass
class GridRun:
    run_id: str
    status: str
    trigger: str
    execution_date: int
    created_at: int
    started_at: int | None
    completed_at: int | None
    dag_version: str


@dataclass
class GridCell:
    """One task of one run: a plain task's state, or a map's own state and its children's."""

    status: str
    allowed_failure: bool = False
    children: dict[str, int] = field(default_factory=dict)  # status -> count (map tasks)


@dataclass
class Grid:
    runs: list[GridRun]  # newest first
    tasks: list[str]  # base task ids, in DAG order (the newest run's, then older ones')
    cells: dict[tuple[str, str], GridCell]  # (base task id, run id) -> cell


@dataclass
class DayCount:
    day: int  # days since the epoch, in the caller's UTC offset
    status: str
    count: int


@dataclass
class VersionRow:
    digest: str
    first_seen: int  # epoch ms the version was first stored
    runs: int  # runs that followed it
    last_run_at: int | None
    last_run_id: str | None


class HistoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def grid(self, dag_id: str, limit: int) -> Grid:
        """The newest `limit` runs of a DAG and the state of each of their tasks."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT run_id, status, trigger, execution_date, created_at, started_at, "
                "completed_at, dag_version FROM runs INDEXED BY runs_dag_created "
                "WHERE dag_id=? ORDER BY created_at DESC, run_id DESC LIMIT ?",
                (dag_id, limit),
            ).fetchall()
            runs = [GridRun(*tuple(r)) for r in rows]
            if not runs:
                return Grid([], [], {})
            marks = ",".join("?" * len(runs))
            cells = conn.execute(
                "SELECT run_id, base_task_id, map_index IS NOT NULL AS child, status, "
                "max(allowed_failure), count(*), min(position) FROM task_instances "
                f"WHERE run_id IN ({marks}) GROUP BY run_id, base_task_id, child, status",
                [r.run_id for r in runs],
            ).fetchall()
        return _grid(runs, [tuple(c) for c in cells])

    def per_day(self, dag_id: str, since: int, offset_ms: int) -> list[DayCount]:
        """Runs of a DAG by day of their execution date (shifted by `offset_ms`) and status."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT (execution_date + ?) / ? AS day, status, count(*) FROM runs "
                "INDEXED BY runs_dag_created WHERE dag_id=? AND execution_date >= ? "
                "GROUP BY day, status ORDER BY day",
                (offset_ms, DAY_MS, dag_id, since),
            ).fetchall()
        return [DayCount(int(r[0]), str(r[1]), int(r[2])) for r in rows]

    def versions(self, dag_id: str) -> list[VersionRow]:
        """Every stored version of a DAG, newest first, with the runs that followed it."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT v.hash, v.created_at, count(r.run_id), max(r.created_at), "
                "(SELECT run_id FROM runs WHERE dag_id=v.dag_id AND dag_version=v.hash "
                "ORDER BY created_at DESC LIMIT 1) "
                "FROM dag_versions v LEFT JOIN runs r "
                "ON r.dag_id=v.dag_id AND r.dag_version=v.hash "
                "WHERE v.dag_id=? GROUP BY v.hash ORDER BY v.created_at DESC, v.hash",
                (dag_id,),
            ).fetchall()
        return [VersionRow(r[0], int(r[1]), int(r[2]), r[3], r[4]) for r in rows]

    def version_of(self, dag_id: str, digest: str) -> tuple[str, int] | None:
        """The stored definition (JSON text) of a version of a DAG and when it was first seen."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT definition, created_at FROM dag_versions WHERE hash=? AND dag_id=?",
                (digest, dag_id),
            ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))


def _grid(runs: list[GridRun], rows: list[tuple[object, ...]]) -> Grid:
    """Cells from (run id, base task id, is a map child, status, allowed, count, position)."""
    cells: dict[tuple[str, str], GridCell] = {}
    order: dict[str, tuple[int, int]] = {}  # base task id -> (newest run it is in, position)
    rank = {r.run_id: i for i, r in enumerate(runs)}
    for run_id, base, child, status, allowed, count, position in rows:
        key = (str(base), str(run_id))
        cell = cells.get(key)
        if child:
            if cell is None:
                cell = cells[key] = GridCell("")
            cell.children[str(status)] = int(str(count))
        elif cell is None:
            cells[key] = GridCell(str(status), bool(allowed))
        else:
            cell.status, cell.allowed_failure = str(status), bool(allowed)
        seen = (rank[str(run_id)], int(str(position)))
        order[key[0]] = min(order.get(key[0], seen), seen)
    tasks = sorted(order, key=lambda t: (order[t][0] > 0, order[t][1], t))
    return Grid(runs, tasks, cells)
