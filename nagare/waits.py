"""Steps that wait: `approval` (a person answers), `wait` (an event arrives) and `dag` (a child
run ends). Such a task is `waiting`: its attempt is open, held by the engine, and it takes no
pool slot and no thread; what it waits for is a row in the store, so it survives restarts.

The scheduler begins them (`begin`), asks for the next deadline and expires the past ones; the
API resolves them (approve / reject, events); the end of a child run resolves its parent task.
Every end goes through the same attempt bookkeeping as an executor's (`attempt_finish`: retry
policy, allow_failure, outputs), as a compare-and-set on `waiting` and the attempt number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from nagare.clock import to_iso
from nagare.engine.attempt_end import attempt_finish
from nagare.engine.context import (
    build_context,
    needs_upstream,
    render_value,
    start_assignment,
    upstream_tasks,
)
from nagare.engine.dag_outputs import dag_outputs
from nagare.engine.expressions import ExpressionError, as_text, condition, first_result
from nagare.errors import Conflict, Forbidden, NagareError, NotFound
from nagare.logs import LogFiles
from nagare.models import (
    Claim,
    DagDef,
    Outcome,
    Run,
    RunStatus,
    TaskInstance,
    TaskStatus,
    TaskType,
)
from nagare.patterns import EVENT_NAME
from nagare.store import Store

log = logging.getLogger("nagare.waits")

Finished = Callable[[list[tuple[str, str, int | None]]], None]
MAX_COMMENT_CHARS = 2000
MAX_MATCHED = 1000  # wait tasks one event resolves at most (the rest see the next one)
REJECTED_EXIT_CODE = 1  # a rejected approval fails as if it exited 1 (retry_on_exit_codes)


class ChildRuns(Protocol):
    """How `dag` steps start and stop child runs (app wires the run service)."""

    def start_child(self, claim: Claim, dag_id: str, params: dict[str, Any]) -> str: ...

    def kill_child(self, run_id: str) -> None: ...


class Waits:
    def __init__(
        self,
        store: Store,
        logs: LogFiles,
        clock: Callable[[], int],
        on_finished: Finished,
    ) -> None:
        self.store = store
        self.logs = logs
        self.clock = clock
        self.on_finished = on_finished
        self.children: ChildRuns | None = None  # app wires it (the run service)
        # The earliest `wait_until` as far as known (None with `_deadline_known`: none), so that
        # a scheduler pass reads the deadlines only when one is due or a new one came (a pass
        # runs per batch of ended tasks: two queries each would cost the cluster's throughput).
        self._deadline_lock = threading.Lock()
        self._deadline: int | None = None
        self._deadline_known = False

    # ------------------------------------------------------------ begin

    def begin(self, task_instance_ids: Iterable[str], now: int) -> None:
        """Start waiting: each task moves pending / queued / up_for_retry -> waiting (one that
        moved elsewhere meanwhile is left alone)."""
        for task_instance_id in task_instance_ids:
            try:
                self._begin(task_instance_id, now)
            except Exception:
                log.exception("step %s could not begin waiting", task_instance_id)

    def _begin(self, task_instance_id: str, now: int) -> None:
        found = self.store.tasks.claim_of(task_instance_id)
        if found is None or found.definition is None:
            return
        definition = found.definition
        rows = self.store.tasks.context_rows(found.run.run_id)
        prepared = start_assignment(
            found, definition, {}, rows if needs_upstream(found, definition) else None
        )
        wait: dict[str, Any] = {"type": definition.type.value}
        problem = ""
        if isinstance(prepared, Outcome):
            if prepared.skipped:
                self._skip(found.task, prepared.skipped, now)
                return
            problem = prepared.error
        else:
            wait.update(prepared.step)
            if definition.type in (TaskType.WAIT, TaskType.DAG):
                context = build_context(
                    found.dag,
                    found,
                    definition,
                    upstream_tasks(found.dag, definition.task_id, rows),
                )
                if definition.type is TaskType.WAIT:  # what its `match` sees besides the event
                    problem = _event_name_problem(str(wait.get("event", "")))
                    wait["context"] = {
                        k: v for k, v in context.items() if k in ("dag", "run", "params", "tasks")
                    }
                else:
                    try:
                        wait["dag_id"] = render_value(definition.dag_id, context)
                        wait["params"] = render_value(definition.params, context)
                    except ExpressionError as exc:
                        problem = f"{'params' if 'dag_id' in wait else 'dag_id'}: {exc}"
        timeout = definition.timeout_seconds
        until = now + int(timeout * 1000) if timeout else None
        note = _waiting_note(wait, until)
        claim = self.store.tasks.begin_waiting(
            task_instance_id,
            [TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.UP_FOR_RETRY],
            now,
            wait,
            until,
            note,
        )
        if claim is None:
            return
        if until is not None:
            self._new_deadline(until)
        if problem:
            self._end(claim, Outcome(exit_code=None, error=problem), now)
            return
        self._note(claim, note, resume=False)
        if definition.type is TaskType.DAG:
            self._start_child(claim, wait, now)

    def _skip(self, task: TaskInstance, reason: str, now: int) -> None:
        moved = self.store.tasks.transition(
            [task.id],
            [TaskStatus.PENDING, TaskStatus.QUEUED],
            TaskStatus.SKIPPED,
            now,
            message=reason,
        )
        if moved:
            self.on_finished([(task.run_id, task.id, None)])

    def _start_child(self, claim: Claim, wait: dict[str, Any], now: int) -> None:
        definition = claim.definition
        assert definition is not None
        dag_id = str(wait.get("dag_id") or definition.dag_id)
        if self.children is None:
            self._end(claim, Outcome(exit_code=None, error="sub-DAG calls are not available"), now)
            return
        try:
            child = self.children.start_child(claim, dag_id, wait.get("params", {}))
        except (NagareError, ValueError) as exc:  # unknown DAG, bad params, too deep
            self._end(claim, Outcome(exit_code=None, error=f"cannot call '{dag_id}': {exc}"), now)
            return
        self.store.tasks.set_child_run(claim.task.id, claim.attempt, child)
        self._note(claim, f"started child run {child} of '{dag_id}'")

    def run_outputs(self, run: Run, dag: DagDef) -> tuple[dict[str, str] | None, str]:
        """What a run that succeeded returns (its DAG's `outputs:` rendered), or why it fails
        instead (a template that failed, with jq's message)."""
        try:
            return dag_outputs(dag, run, self.store.tasks.context_rows(run.run_id)), ""
        except ExpressionError as exc:
            return None, str(exc)

    def recover(self) -> None:
        """At start: a `dag` step that waits for a child run which ended while the server was
        down ends now; one whose child was never recorded (a crash while it started) gets the
        child started for it, or a new one."""
        for task, wait in self.store.tasks.waiting():
            if wait.get("type") != TaskType.DAG:
                continue
            try:
                self._recover(task, wait)
            except Exception:
                log.exception("step %s waiting for a child run could not be recovered", task.id)

    def _recover(self, task: TaskInstance, wait: dict[str, Any]) -> None:
        if task.child_run_id:
            self.child_ended(task.child_run_id)
            return
        claim = self.store.tasks.claim_of(task.id)
        if claim is None or claim.task.status is not TaskStatus.WAITING:
            return
        started = self.store.runs.child_of(task.run_id, task.task_id, task.started_at or 0)
        if started is not None:
            self.store.tasks.set_child_run(task.id, claim.attempt, started)
            self.child_ended(started)
        else:
            self._start_child(claim, wait, self.clock())

    # ------------------------------------------------------------ resolve

    def approve(
        self, run_id: str, task_id: str, by: str, comment: str, approved: bool
    ) -> TaskInstance:
        """Answer a waiting approval: who (`by`) and when are recorded in its log, its message
        and (approved) its outputs `approved_by`, `approved_at`, `comment`. Conflict unless the
        task waits for an approval; Forbidden when `approvers` is set and `by` is not one."""
        claim = self._waiting_claim(run_id, task_id, TaskType.APPROVAL, "an approval")
        by, comment = _one_line(by), _one_line(comment)[:MAX_COMMENT_CHARS]  # (one log line)
        _check_approver(self._wait_of(claim), by, task_id)
        now = self.clock()
        verb = "approved" if approved else "rejected"
        text = f"{verb} by {by or 'someone'} at {to_iso(now)}" + (f": {comment}" if comment else "")
        self._note(claim, text)
        outputs = {"approved_by": by, "approved_at": to_iso(now) or "", "comment": comment}
        outcome = (
            Outcome(exit_code=0, outputs=outputs)
            if approved
            else Outcome(exit_code=REJECTED_EXIT_CODE, error=text)
        )
        if not self._end(claim, outcome, now, text):
            raise Conflict(f"task '{task_id}' of run '{run_id}' is no longer waiting")
        task = self.store.tasks.get(run_id, task_id)
        assert task is not None
        return task

    def _wait_of(self, claim: Claim) -> dict[str, Any]:
        """What a waiting task waits for (its rendered step, as `begin` stored it)."""
        found = self.store.tasks.wait_of(claim.task.id)
        return found if found is not None else {}

    def emit(self, name: str, payload: Any) -> list[dict[str, str]]:
        """An event: every `wait` step waiting for `name` whose `match` holds ends with its
        `output_jq` values; returns the tasks it resolved."""
        now = self.clock()
        matched: list[dict[str, str]] = []
        for task, wait in self.store.tasks.waiting(name)[:MAX_MATCHED]:
            claim = self.store.tasks.claim_of(task.id)
            if claim is None or claim.task.status is not TaskStatus.WAITING:
                continue
            outcome = _event_outcome(wait, name, payload)
            if outcome is None:
                continue
            self._note(
                claim,
                f"event '{name}' arrived" + ("" if outcome.succeeded else f": {outcome.error}"),
            )
            if self._end(claim, outcome, now):
                matched.append({"run_id": task.run_id, "task_id": task.task_id})
        return matched

    def child_ended(self, run_id: str) -> None:
        """A run ended: if a `dag` step waits for it, that step ends as the run did."""
        child = self.store.runs.get(run_id, counts=False)
        if child is None or child.parent is None or not child.status.terminal:
            return
        parent_run, parent_task = child.parent
        task = self.store.tasks.get(parent_run, parent_task)
        if task is None or task.status is not TaskStatus.WAITING or task.child_run_id != run_id:
            return
        claim = self.store.tasks.claim_of(task.id)
        if claim is None:
            return
        status = child.status
        if status is RunStatus.SUCCESS:
            outputs = {k: as_text(v) for k, v in (child.outputs or {}).items()}
            outcome = Outcome(exit_code=0, outputs=outputs or None)
        elif status is RunStatus.SKIPPED:
            outcome = Outcome(
                exit_code=None, skipped=f"child run {run_id} was skipped ({child.reason})"
            )
        else:  # (killed: the step fails, and may be retried, as for any other end)
            outcome = Outcome(
                exit_code=None,
                error=f"child run {run_id} {status}"
                + (f": {child.reason}" if child.reason else ""),
            )
        self._note(claim, f"child run {run_id} ended {status}")
        self._end(claim, outcome, self.clock())

    def expire(self, now: int) -> None:
        """The waiting tasks whose `timeout_seconds` passed fail, timed out (the leader's
        scheduler calls this; should two masters both do it, the compare-and-set in `_end`
        lets one of them end each task, note it and announce it)."""
        due = self.next_deadline()
        if due is None or due > now:
            return
        with self._deadline_lock:
            self._deadline_known = False  # re-read once these have ended
        for task in self.store.tasks.past_wait_deadline(now):
            claim = self.store.tasks.claim_of(task.id)
            if claim is None or claim.definition is None:
                continue
            seconds = claim.definition.timeout_seconds
            message = f"timed out after {seconds:g} s waiting"
            if task.child_run_id:
                message += f" (its child run {task.child_run_id} is killed)"
            timed_out = Outcome(exit_code=None, timed_out=True, error=message)
            if self._end(claim, timed_out, now, first_note=message):
                self._stop_child(claim.task)

    def next_deadline(self) -> int | None:
        """The earliest deadline of a waiting step (read from the store only when not known)."""
        with self._deadline_lock:
            if self._deadline_known:
                return self._deadline
            self._deadline_known, self._deadline = True, None
        found = self.store.tasks.next_wait_deadline()
        with self._deadline_lock:  # deadlines that came during the read are kept
            self._deadline = _earliest(self._deadline, found)
            return self._deadline

    def _new_deadline(self, until: int) -> None:
        """A step began waiting until `until` (told once its row is written: a pass reading the
        store before that keeps this hint, one reading after finds the row)."""
        with self._deadline_lock:
            self._deadline = _earliest(self._deadline, until)

    def cancelled(self, tasks: Iterable[TaskInstance]) -> None:
        """Waiting tasks a kill cancelled: their attempts close; their child runs are killed."""
        ids = [t.id for t in tasks]
        self.store.tasks.close_cancelled_waits(ids, self.clock())
        for task in tasks:
            self._stop_child(task)

    # ------------------------------------------------------------ helpers

    def _stop_child(self, task: TaskInstance) -> None:
        current = self.store.tasks.by_id(task.id)
        child = current.child_run_id if current is not None else task.child_run_id
        if child and self.children is not None:
            with contextlib.suppress(Conflict, NotFound):  # it ended already
                self.children.kill_child(child)

    def _waiting_claim(self, run_id: str, task_id: str, kind: TaskType, what: str) -> Claim:
        task = self.store.tasks.get(run_id, task_id)
        if task is None:
            raise NotFound(f"task '{task_id}' not found in run '{run_id}'")
        claim = self.store.tasks.claim_of(task.id)
        if claim is None or claim.definition is None or claim.definition.type is not kind:
            raise Conflict(f"task '{task_id}' of run '{run_id}' does not wait for {what}")
        if task.status is not TaskStatus.WAITING:
            raise Conflict(f"task '{task_id}' of run '{run_id}' is {task.status}, not waiting")
        return claim

    def _end(
        self,
        claim: Claim,
        outcome: Outcome,
        now: int,
        success_note: str = "",
        first_note: str = "",
    ) -> bool:
        """End the waiting attempt (compare-and-set on `waiting` and the attempt): only the
        caller that moved it writes its notes and announces it. Returns whether it moved."""
        started = claim.task.started_at or now
        outcome.metrics.duration_ms = max(0, now - started)
        outcome.metrics.exit_code = outcome.exit_code
        outcome.metrics.executor_type = "engine"
        attempt_log = self.logs.open_attempt(
            claim.run.run_id, claim.task.id, claim.attempt, resume=True
        )
        try:
            finish = attempt_finish(claim, outcome, now, "", attempt_log.tail())
            if success_note and finish.status is TaskStatus.SUCCESS:
                finish = dataclasses.replace(finish, message=success_note)
            moved = self.store.tasks.finish_waiting(finish)
            notes = dict.fromkeys((first_note, finish.message)) if moved else {}
            for note in filter(None, notes):
                attempt_log.note(note)
        finally:
            attempt_log.close()
        if moved:
            self.on_finished([(claim.run.run_id, claim.task.id, finish.retry_at)])
        return moved

    def _note(self, claim: Claim, text: str, resume: bool = True) -> None:
        attempt_log = self.logs.open_attempt(
            claim.run.run_id, claim.task.id, claim.attempt, resume=resume
        )
        try:
            attempt_log.note(text)
        finally:
            attempt_log.close()


def _event_name_problem(name: str) -> str:
    if EVENT_NAME.match(name):
        return ""
    return f"event: '{name[:200]}' is not a valid event name (letters, digits, '_', '.', ':', '-')"


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _waiting_note(wait: dict[str, Any], until: int | None) -> str:
    kind = wait.get("type")
    if kind == TaskType.APPROVAL:
        text = "waiting for approval" + (f": {wait['message']}" if wait.get("message") else "")
    elif kind == TaskType.WAIT:
        text = f"waiting for event '{wait.get('event', '')}'"
        if wait.get("match"):
            text += f" matching {wait['match']}"
    else:
        text = "waiting for its child run"
    if until is not None:
        text += f" (until {to_iso(until)})"
    return text


def _event_outcome(wait: dict[str, Any], name: str, payload: Any) -> Outcome | None:
    """How a `wait` step ends on this event: None when its `match` does not hold."""
    context = {
        **wait.get("context", {}),
        "event": {"name": name, "payload": payload},
        "payload": payload,
    }
    match = wait.get("match", "")
    try:
        if match and not condition(match, context):
            return None
    except ExpressionError as exc:
        return Outcome(exit_code=None, error=f"match: {match}: {exc}")
    outputs: dict[str, str] = {}
    for output, expression in (wait.get("output_jq") or {}).items():
        try:
            outputs[output] = as_text(first_result(expression, payload))
        except ExpressionError as exc:
            return Outcome(exit_code=None, error=f"output_jq.{output}: {expression}: {exc}")
    return Outcome(exit_code=0, outputs=outputs or None)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check_approver(wait: dict[str, Any], by: str, task_id: str) -> None:
    """With `approvers`, only those names may answer: with users (auth_mode builtin, oidc) `by`
    is the signed-in user (or `key:<name>`); without, the name the caller gives."""
    approvers = [a for a in wait.get("approvers") or [] if isinstance(a, str) and a]
    if approvers and by not in approvers:
        raise Forbidden(
            f"'{by}' may not answer the approval '{task_id}': its approvers are "
            + ", ".join(approvers)
        )
