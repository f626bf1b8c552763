"""Webhook triggers: match a request to the DAG whose `trigger` names its path, verify the
HMAC-SHA256 signature of the raw body (before parsing it), extract run parameters with `jq`,
de-duplicate deliveries, and start a run through the callback that `app` wires. A trigger with
`emit_event: NAME` starts no run: its verified payload is emitted as that event (`wait` steps)
through the `emit` callback (`app` wires nagare.waits), and is not de-duplicated.

jq itself runs in `engine/expressions.py`. Extraction errors do not reject a delivery: the run
starts and its conf carries `NAGARE_WEBHOOK_ERRORS` (one line per failed expression), also logged.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from nagare.clock import now_ms
from nagare.dag_folder import DagFolder
from nagare.engine.assignment import env_value
from nagare.engine.expressions import ExpressionError, first_result
from nagare.engine.expressions import compile_errors as compile_errors  # re-exported
from nagare.errors import BadRequest, Conflict, Forbidden, InvalidParams, NotFound
from nagare.models import DagDef, Run, TriggerDef
from nagare.store import DagState

log = logging.getLogger("nagare.webhooks")
ERRORS_KEY = "NAGARE_WEBHOOK_ERRORS"
DEDUPE_WINDOW_MS = 24 * 3_600_000
MAX_DELIVERY_ID = 200


@dataclass(frozen=True)
class Delivery:
    method: str
    path: str  # decoded URL path
    headers: Mapping[str, str]  # lower-case names
    body: bytes


# ---------------------------------------------------------------- pure parts


def stringify(value: Any) -> str:
    """A jq result as an environment value (strings as-is, numbers without a trailing .0,
    booleans true/false, null empty, objects and arrays compact JSON)."""
    return env_value(value)


def extract(expressions: Mapping[str, str], payload: Any) -> tuple[dict[str, str], list[str]]:
    """Each expression's first result -> string. No result gives an empty value; an error is
    returned as a message (the variable is then left empty too)."""
    conf: dict[str, str] = {}
    errors: list[str] = []
    for name, expression in expressions.items():
        try:
            first = first_result(expression, payload)
        except ExpressionError as exc:
            errors.append(f"{name}: jq expression '{expression}' failed: {exc}")
            conf[name] = ""
            continue
        conf[name] = stringify(first)
    return conf, errors


def extract_params(trigger: TriggerDef, payload: Any) -> dict[str, Any]:
    """The run parameters a payload gives a DAG with `params:`: each expression's first result
    as a JSON value (no result or null: the parameter's default). A failing expression answers
    the sender with 422 (InvalidParams) and starts no run; the values are then checked by the
    run service as a `conf` is (a string is converted to the declared type, "10" -> 10)."""
    values: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for name, expression in trigger.extract_payload.items():
        try:
            values[name] = first_result(expression, payload)
        except ExpressionError as exc:
            problems.append((name, f"jq expression '{expression}' failed: {exc}"))
    if problems:
        listed = "; ".join(f"{name}: {message}" for name, message in problems)
        raise InvalidParams(f"the payload does not give valid parameters: {listed}", problems)
    return values


def signature_ok(secret: str, supplied: str, body: bytes) -> bool:
    """`sha256=<hex>` or bare `<hex>` of HMAC-SHA256(secret, body), compared in constant time."""
    import hashlib  # OpenSSL's libcrypto comes with them: at the first signed delivery
    import hmac

    value = supplied.strip()
    if value.lower().startswith("sha256="):
        value = value[len("sha256=") :]
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(value.lower().encode(), expected.encode())


def resolve_secret(trigger: TriggerDef, environ: Mapping[str, str]) -> str:
    if trigger.secret_env:
        return environ.get(trigger.secret_env, "")
    return trigger.secret


# ---------------------------------------------------------------- the service


if TYPE_CHECKING:  # structural types for mypy, never needed at run time

    class _WebhookDags(Protocol):
        def states(self) -> dict[str, DagState]: ...

    class _WebhookDeliveries(Protocol):
        def find(self, key: str, since: int) -> str | None: ...

        def record(self, key: str, run_id: str, now: int, forget_before: int) -> None: ...

    class WebhookStore(Protocol):
        """The parts of the store the webhook service reads and writes, and what of them."""

        @property
        def dags(self) -> _WebhookDags: ...

        @property
        def deliveries(self) -> _WebhookDeliveries: ...


class WebhookService:
    def __init__(
        self,
        store: WebhookStore,
        folder: DagFolder,
        start_run: Callable[[str, dict[str, Any]], Run],
        delivery_header: str = "X-GitHub-Delivery",
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], int] = now_ms,
        emit: Callable[[str, Any], list[dict[str, str]]] | None = None,
    ) -> None:
        self.store = store
        self.emit = emit
        self.folder = folder
        self.start_run = start_run
        self.delivery_header = delivery_header.lower()
        self._secrets: set[str] = set()
        self._secrets_of: object = None  # the folder snapshot `_secrets` was computed from
        self.environ = os.environ if environ is None else environ
        self.clock = clock
        self._dedupe_lock = threading.Lock()

    def secret_variables(self) -> set[str]:
        """Server environment variables that hold webhook secrets (kept out of task env);
        computed once per DAG-folder snapshot, since every task start asks."""
        snapshot = self.folder.snapshot
        if snapshot is not self._secrets_of:
            dags = snapshot.dags.values()
            self._secrets = {
                d.trigger.secret_env for d in dags if d.trigger and d.trigger.secret_env
            }
            self._secrets_of = snapshot
        return self._secrets

    def find(self, path: str) -> DagDef | None:
        for dag in self.folder.snapshot.dags.values():
            if dag.trigger is not None and dag.trigger.path == path:
                return dag
        return None

    def receive(self, delivery: Delivery) -> str:
        """Start (or find, for a repeated delivery id) the run; returns its run id."""
        answer = self.deliver(delivery)
        if not isinstance(answer, str):
            raise Conflict("this webhook emits an event; it starts no run")
        return answer

    def deliver(self, delivery: Delivery) -> str | list[dict[str, str]]:
        """A delivery: the run id it started (or found, for a repeated delivery id), or, for a
        trigger with `emit_event`, the `wait` tasks the event resolved."""
        dag = self.find(delivery.path)
        trigger = dag.trigger if dag is not None else None
        if dag is None or trigger is None or trigger.method.upper() != delivery.method.upper():
            raise NotFound(f"no webhook trigger for {delivery.method.upper()} {delivery.path}")
        self._verify(trigger, delivery)
        payload = _parse(delivery.body)
        state = self.store.dags.states().get(dag.dag_id)
        if state is not None and state.paused:
            raise Conflict(f"dag paused: DAG '{dag.dag_id}' is paused; activate it first")
        if trigger.emit_event:
            if self.emit is None:
                raise Conflict("events are not available")
            log.info("DAG '%s': webhook emits event '%s'", dag.dag_id, trigger.emit_event)
            return self.emit(trigger.emit_event, payload)
        delivery_id = delivery.headers.get(self.delivery_header, "").strip()[:MAX_DELIVERY_ID]
        if not delivery_id:
            return self._start(dag, trigger, payload)
        key = f"{dag.dag_id}\n{delivery_id}"
        with self._dedupe_lock:
            now = self.clock()
            first = self.store.deliveries.find(key, now - DEDUPE_WINDOW_MS)
            if first is not None:
                log.info("DAG '%s': repeated delivery %s -> run %s", dag.dag_id, delivery_id, first)
                return first
            run_id = self._start(dag, trigger, payload)
            self.store.deliveries.record(key, run_id, now, now - DEDUPE_WINDOW_MS)
            return run_id

    def _verify(self, trigger: TriggerDef, delivery: Delivery) -> None:
        secret = resolve_secret(trigger, self.environ)
        if trigger.secret_env and not secret:
            log.error(
                "webhook %s: the environment variable %s holding its secret is not set",
                trigger.path,
                trigger.secret_env,
            )
            raise Forbidden("invalid signature")  # fail closed, never open
        if not secret:
            return
        supplied = delivery.headers.get(trigger.signature_header.lower(), "")
        if not supplied.strip():
            raise Forbidden("missing signature")
        if not signature_ok(secret, supplied, delivery.body):
            raise Forbidden("invalid signature")

    def _start(self, dag: DagDef, trigger: TriggerDef, payload: Any) -> str:
        if dag.params:
            return self.start_run(dag.dag_id, extract_params(trigger, payload)).run_id
        conf, errors = extract(trigger.extract_payload, payload)
        if errors:
            conf[ERRORS_KEY] = "\n".join(errors)
            log.warning("DAG '%s': webhook extraction errors: %s", dag.dag_id, "; ".join(errors))
        return self.start_run(dag.dag_id, conf).run_id


def _parse(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the webhook payload is not valid JSON") from None
