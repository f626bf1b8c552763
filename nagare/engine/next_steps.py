"""What happens next in a run, as a pure function: given a run's DAG and the states of its tasks,
decide what follows (queue, expand a map, trigger a DAG, mark upstream_failed or skipped as the
task's `trigger_rule` says) and when the run ends with which status (`run_status`: success when
every task succeeded, was skipped or failed with allow_failure; cancelled when the run was killed,
or when no task failed but some were killed (a user killed a task: the tasks after it are
upstream_failed, the run is cancelled, as if the run had been killed); else failed). A failure
with allow_failure counts as a success everywhere here.

One pass in dependency order settles everything that can be decided now, so a failure
propagates down a whole chain at once and a run finishes in the same pass as its last task.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Reversible, Sequence
from dataclasses import dataclass, field

from nagare.engine.conditions import Verdict, reason_of, trigger_verdict
from nagare.models import (
    ACTIVE_TASK,
    BLOCKING_TASK,
    WAITING_STEPS,
    DagDef,
    InstanceLike,
    RunStatus,
    TaskStatus,
    TaskType,
    TriggerRule,
)

OK_FOR_DEPENDANTS = frozenset({TaskStatus.SUCCESS, TaskStatus.SKIPPED})


@dataclass
class Plan:
    queue: list[InstanceLike] = field(default_factory=list)
    expand: list[InstanceLike] = field(default_factory=list)
    trigger: list[InstanceLike] = field(default_factory=list)
    wait: list[InstanceLike] = field(default_factory=list)  # dag / approval / wait steps to begin
    upstream_failed: list[InstanceLike] = field(default_factory=list)
    skipped: list[InstanceLike] = field(default_factory=list)
    # why, for the upstream_failed and skipped tasks (by instance id) of a trigger rule's own
    reasons: dict[str, str] = field(default_factory=dict)
    map_done: list[tuple[str, TaskStatus, str]] = field(default_factory=list)
    run_status: RunStatus | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.queue
            or self.expand
            or self.trigger
            or self.wait
            or self.upstream_failed
            or self.skipped
            or self.map_done
            or self.run_status
        )


def plan_run(
    dag: DagDef,
    order: list[str],
    tasks: Sequence[InstanceLike],
    child_counts: dict[str, dict[TaskStatus, int]],
    killed: bool,
) -> Plan:
    """`tasks` are the run's non-child instances; `order` is the DAG's topological order."""
    return plan_changes(dag, order, {t.task_id: t for t in tasks}, child_counts, killed, None)


def plan_changes(
    dag: DagDef,
    order: list[str],
    by_task: Mapping[str, InstanceLike],
    child_counts: dict[str, dict[TaskStatus, int]],
    killed: bool,
    changed: Iterable[str] | None,
    waits: dict[str, int] | None = None,
) -> Plan:
    """Like plan_run, but when `changed` names the tasks whose state changed since the last plan
    (which left nothing undecided), only their dependants and running map parents are looked
    at, and only changed dependencies can block: a pass costs what changed, not the size of the
    run. Decisions still propagate down whole chains.

    `waits` (kept by the caller between the passes of one run, dropped when it reloads the run)
    remembers for a pending task which of its dependencies it still waited for: between reloads
    a finished dependency stays finished, so the next pass resumes there instead of checking
    every dependency again (a task after a 1,000-wide fan-out costs O(1) per finished task)."""
    plan = Plan()
    status = _Statuses(by_task)
    moved = None if changed is None else set(changed)
    for task_id in _candidates(dag, order, moved, status):
        instance = by_task.get(task_id)
        definition = dag.task(task_id)
        if instance is None or definition is None:
            continue
        before = status[task_id]
        if before is TaskStatus.PENDING:
            if definition.trigger_rule is TriggerRule.ALL_SUCCESS:
                verdict = _all_success_verdict(
                    instance,
                    definition.depends_on,
                    dag.dependency_sets[task_id],
                    status,
                    moved,
                    waits,
                )
            else:
                verdict = trigger_verdict(
                    definition.trigger_rule,
                    (status.get(d, _ENDED_OK) for d in definition.depends_on),
                )
            if verdict is not Verdict.WAIT:  # (a task that waits stays pending: most passes)
                status[task_id] = _apply_verdict(
                    instance, verdict, definition.trigger_rule, definition.type, plan
                )
        elif before is TaskStatus.RUNNING and definition.type is TaskType.MAP:
            status[task_id] = _decide_map(instance, child_counts.get(task_id, {}), plan)
        if moved is not None and status[task_id] is not before:
            moved.add(task_id)
    plan.run_status = run_status(status, killed)
    return plan


_ENDED_OK = TaskStatus.SUCCESS  # the status of a dependency that is not in the run


def _effective(instance: InstanceLike) -> TaskStatus:
    """A task's status for planning: a failure with allow_failure counts as a success."""
    return TaskStatus.SUCCESS if instance.allowed_failure else instance.status


class _Statuses:
    """Task statuses as planned so far: the instances' own (an allowed failure as a success),
    overlaid by this pass's decisions."""

    def __init__(self, by_task: Mapping[str, InstanceLike]) -> None:
        self._by_task = by_task
        self._decided: dict[str, TaskStatus] = {}

    def __getitem__(self, task_id: str) -> TaskStatus:
        decided = self._decided.get(task_id)
        return decided if decided is not None else _effective(self._by_task[task_id])

    def get(self, task_id: str, default: TaskStatus) -> TaskStatus:
        """(the hottest call of a pass: `_effective` is inlined)"""
        decided = self._decided.get(task_id)
        if decided is not None:
            return decided
        instance = self._by_task.get(task_id)
        if instance is None:
            return default
        return TaskStatus.SUCCESS if instance.allowed_failure else instance.status

    def __setitem__(self, task_id: str, status: TaskStatus) -> None:
        self._decided[task_id] = status

    def values(self) -> Iterator[TaskStatus]:
        for task_id, instance in self._by_task.items():
            decided = self._decided.get(task_id)
            yield decided if decided is not None else _effective(instance)

    def values_last_first(self) -> Iterator[TaskStatus]:
        """In reverse order: the last tasks of a DAG are the ones still waiting. (Callers pass
        dicts; a Mapping that cannot be reversed is read in order.)"""
        items = self._by_task.items()
        ordered = reversed(items) if isinstance(items, Reversible) else items
        for task_id, instance in ordered:
            decided = self._decided.get(task_id)
            yield decided if decided is not None else _effective(instance)


def _candidates(
    dag: DagDef, order: list[str], changed: set[str] | None, status: _Statuses
) -> Iterator[str]:
    """Tasks to decide, in topological order; a decided task brings its dependants along."""
    if changed is None:
        yield from order
        return
    rank = dag.rank
    heap = [(rank[t], t) for t in {*_dependants_of(dag, changed), *dag.map_task_ids} if t in rank]
    heapq.heapify(heap)
    seen: set[str] = set()
    while heap:
        _, task_id = heapq.heappop(heap)
        if task_id in seen:
            continue
        seen.add(task_id)
        before = status.get(task_id, TaskStatus.SUCCESS)
        yield task_id
        if status.get(task_id, TaskStatus.SUCCESS) is not before:
            for dependant in dag.dependants.get(task_id, ()):
                heapq.heappush(heap, (rank[dependant], dependant))


def _dependants_of(dag: DagDef, changed: Iterable[str]) -> set[str]:
    result: set[str] = set()
    for task_id in changed:
        result.update(dag.dependants.get(task_id, ()))
    return result


def _all_success_verdict(
    instance: InstanceLike,
    deps: tuple[str, ...],
    dep_set: frozenset[str],
    status: _Statuses,
    moved: set[str] | None,
    waits: dict[str, int] | None,
) -> Verdict:
    """`trigger_verdict` for the default rule, at the cost of what changed: only changed
    dependencies can block, and a wide fan-in resumes where it waited last time."""
    if moved is None:
        suspects: Iterable[str] = deps
    elif len(moved) < len(deps):  # a wide fan-in: look at what changed, not at every dependency
        suspects = [d for d in moved if d in dep_set]
    else:
        suspects = [d for d in deps if d in moved]
    if any(status.get(d, _ENDED_OK) in BLOCKING_TASK for d in suspects):
        return Verdict.UPSTREAM_FAILED
    start = waits.get(instance.task_id, 0) if waits is not None and moved is not None else 0
    for index in range(start, len(deps)):
        if status.get(deps[index], _ENDED_OK) not in OK_FOR_DEPENDANTS:
            if waits is not None:
                waits[instance.task_id] = index
            return Verdict.WAIT
    if any(status.get(d, _ENDED_OK) is TaskStatus.SKIPPED for d in deps):
        return Verdict.SKIP
    return Verdict.RUN


def _apply_verdict(
    instance: InstanceLike, verdict: Verdict, rule: TriggerRule, kind: TaskType, plan: Plan
) -> TaskStatus:
    """Record a pending task's verdict in the plan; its status as planned."""
    if verdict is Verdict.WAIT:
        return TaskStatus.PENDING
    if verdict is Verdict.UPSTREAM_FAILED or verdict is Verdict.SKIP:
        reason = reason_of(rule, verdict)
        if reason and (rule is not TriggerRule.ALL_SUCCESS or verdict is Verdict.SKIP):
            plan.reasons[instance.id] = reason
        if verdict is Verdict.SKIP:
            plan.skipped.append(instance)
            return TaskStatus.SKIPPED
        plan.upstream_failed.append(instance)
        return TaskStatus.UPSTREAM_FAILED
    if kind is TaskType.MAP:
        plan.expand.append(instance)
        return TaskStatus.RUNNING
    if kind is TaskType.TRIGGER_DAG:
        plan.trigger.append(instance)
        return TaskStatus.RUNNING
    if kind in WAITING_STEPS:
        plan.wait.append(instance)
        return TaskStatus.WAITING
    plan.queue.append(instance)
    return TaskStatus.QUEUED


def _decide_map(instance: InstanceLike, counts: dict[TaskStatus, int], plan: Plan) -> TaskStatus:
    if any(counts.get(s, 0) for s in ACTIVE_TASK):
        return TaskStatus.RUNNING
    total = sum(counts.values())
    bad = sum(counts.get(s, 0) for s in BLOCKING_TASK)
    killed = counts.get(TaskStatus.CANCELLED, 0)
    if bad and bad == killed:  # only killed children: the map was cancelled, not failed
        message = f"{killed} of {total} map children were killed"
        plan.map_done.append((instance.id, TaskStatus.CANCELLED, message))
        return TaskStatus.CANCELLED
    if bad:
        message = f"{bad} of {total} map children did not succeed"
        plan.map_done.append((instance.id, TaskStatus.FAILED, message))
        return TaskStatus.FAILED
    plan.map_done.append((instance.id, TaskStatus.SUCCESS, f"{total} map children succeeded"))
    return TaskStatus.SUCCESS


def run_status(status: _Statuses, killed: bool) -> RunStatus | None:
    if any(s in ACTIVE_TASK for s in status.values_last_first()):
        return None
    if killed:
        return RunStatus.CANCELLED
    return ended_status(status.values())


def ended_status(statuses: Iterable[TaskStatus]) -> RunStatus:
    """How a run whose tasks all ended ends (not killed as a whole): success when every task
    succeeded or was skipped; cancelled when none failed but some were killed (what follows a
    killed task is upstream_failed: killing a task is killing that part of the run); else
    failed. One rule for a killed run and a killed task, so both end `cancelled`."""
    seen = set(statuses)
    if seen <= OK_FOR_DEPENDANTS:
        return RunStatus.SUCCESS
    if TaskStatus.CANCELLED in seen and TaskStatus.FAILED not in seen:
        return RunStatus.CANCELLED
    return RunStatus.FAILED


def descendants(dag: DagDef, task_id: str) -> list[str]:
    """Every task that depends on `task_id`, directly or not."""
    children: dict[str, list[str]] = {}
    for task in dag.tasks:
        for dep in task.depends_on:
            children.setdefault(dep, []).append(task.task_id)
    seen: list[str] = []
    stack = list(children.get(task_id, []))
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.append(current)
            stack.extend(children.get(current, []))
    return seen
