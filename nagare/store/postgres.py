"""PostgreSQL connections behind the same interface as `db.Database` (SQLite): `write()` lends
the one writer connection inside a READ COMMITTED transaction, `read()` one of at most READERS
reader connections (autocommit), rows answer `row["name"]` and `row[0]` like `sqlite3.Row`.

The only module that imports the driver, pg8000 (pure Python, vendored into nagare.pyz); it is
imported when a PostgreSQL store is opened, so a SQLite server never loads it. Statements are
written in SQLite's dialect and translated once (`pg_sql.translate`); each connection keeps
them prepared (one round trip per execution).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from nagare.db_url import PgTarget, parse_postgres_url, resolve_password
from nagare.errors import ConfigError
from nagare.store.db import DatabaseError, StorageFull
from nagare.store.pg_sql import PRELUDE, translate
from nagare.store.schema import MIGRATIONS, migration_script

log = logging.getLogger("nagare.store")
READERS = 8
PREPARED_PER_CONNECTION = 512  # statements kept prepared on one connection (least recent go)
SEEN_PER_CONNECTION = 4096  # statements remembered as run once (then forgotten at once)
PIPELINE_ROWS = 256  # at most this many answers of an executemany wait to be read
MIGRATION_LOCK = 7_467_361  # advisory lock key: one process migrates at a time
WAKE_CHANNEL = "nagare_wake"  # LISTEN/NOTIFY channel of the masters' wake-ups
NOTIFY_BYTES = 7000  # a notification's payload stays under PostgreSQL's 8000-byte cap
LISTEN_POLL_SECONDS = 1.0  # the listener reads its connection at least this often
LEADER_LOCK = 7_467_362  # advisory lock key: held by the leading master, on a connection of its own
NUMERIC_OID = 1700
DISK_FULL = "53100"  # SQLSTATE disk_full
CONNECTION_LOST = ("08", "57P")  # SQLSTATE classes: connection exception, operator intervention


class Row:
    """One result row, read like `sqlite3.Row`: by position, by column name, `keys()`."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: Mapping[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return list(self._values) == list(other._values)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=False))!r})"


class Cursor:
    """The result of one execute: rows already read (statements are short), `rowcount`."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rows = self._rows[self._next :]
        self._next = len(self._rows)
        return rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class Deferred:
    """The result of a statement sent but not waited for (`Connection.defer`): its answer is
    read with the next request's (the transaction's COMMIT, say), or here on first use."""

    def __init__(self, conn: Connection, context: Any, index: Mapping[str, int] | None) -> None:
        self._conn = conn
        self._context = context
        self._index = index
        self._cursor: Cursor | None = None

    def _read(self) -> Cursor:
        if self._cursor is None:
            context = self._context
            if not getattr(context, "done", False) and context in self._conn._unread:
                with self._conn._errors():
                    self._conn._drain()
            if not getattr(context, "done", False):  # an earlier answer failed first
                raise DatabaseError("PostgreSQL: a statement's answer was lost with its connection")
            index = self._index
            if index is None:  # (sent unprepared: its columns came with its answer)
                index = {c["name"]: i for i, c in enumerate(context.columns or ())}
            rows = [Row(index, values) for values in context.rows or ()]
            self._cursor = Cursor(rows, context.row_count)
        return self._cursor

    @property
    def rowcount(self) -> int:
        return self._read().rowcount

    def fetchone(self) -> Any:
        return self._read().fetchone()

    def fetchall(self) -> list[Any]:
        return self._read().fetchall()


class PlainCursor:
    """What the store reads in bulk: tuples, no names (`row_factory` is accepted, unused)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.row_factory: Any = None

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Cursor:
        return self._conn._run(translate(sql), params, plain=True)


class Connection:
    """One pg8000 connection speaking the SQLite dialect: `execute`, `executemany`,
    `in_transaction`; driver errors come out as DatabaseError (StorageFull on a full disk)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._prepared: dict[str, tuple[bytes, Any, Any, dict[str, int]]] = {}
        self._unread: list[Any] = []  # contexts of requests sent whose answers are unread
        self._seen: set[str] = set()  # statements run once, unprepared
        self.in_transaction = False
        self.broken = False
        self._begin_pending = False
        self._last = ""
        self.round_trips = 0  # requests sent and answered (what a statement costs here)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Cursor:
        return self._run(translate(sql), params)

    def defer(self, sql: str, params: Iterable[Any] = ()) -> Deferred:
        """Send a statement without waiting for its answer: inside a transaction it is read
        with the next request's answers (statements sent together, or with the COMMIT, share
        one round trip), or when the result is first used; an error still fails the
        transaction before its COMMIT. Outside a transaction it is read at once."""
        from pg8000.converters import make_params

        statement = translate(sql)
        self._last = statement
        values = make_params(
            self._raw.py_types, [int(v) if v.__class__ is bool else v for v in params]
        )
        with self._errors():
            if statement not in self._prepared and self._first_time(statement):
                context = self._send_once(statement, values)
                index: Mapping[str, int] | None = None
            else:
                name, columns, funcs, index = self._prepare(statement)
                self._send(name, [values])
                context = self._expect(statement, columns, funcs)
            if not self.in_transaction:
                self._drain()
        return Deferred(self, context, index)

    def cursor(self) -> PlainCursor:
        """Like sqlite3's `conn.cursor()` whose `row_factory` is set to None: plain rows."""
        return PlainCursor(self)

    def executemany(self, sql: str, seq: Iterable[Iterable[Any]]) -> Cursor:
        """The statement once per parameter row. Inside a transaction its answers are read
        with the next request's (write-behind: no caller reads an executemany's result, and an
        error still fails the transaction before its COMMIT); the row count is unknown (-1)."""
        from pg8000.converters import make_params

        statement = translate(sql)
        self._last = statement
        rows = [[int(v) if v.__class__ is bool else v for v in params] for params in seq]
        with self._errors():
            name, columns, funcs, _ = self._prepare(statement)
            for start in range(0, len(rows), PIPELINE_ROWS):
                part = rows[start : start + PIPELINE_ROWS]
                self._send(name, [make_params(self._raw.py_types, r) for r in part])
                self._expect(statement, columns, funcs)
            if not self.in_transaction or len(self._unread) > PIPELINE_ROWS:
                self._drain()
        return Cursor([], -1)

    def execute_plain(self, sql: str) -> None:
        """A statement without parameters, untranslated (DDL)."""
        from pg8000.core import Context

        with self._errors():
            self._send_begin()
            self._raw.send_QUERY(sql)
            self._unread.append(Context(sql))
            self._drain()

    def begin(self) -> None:
        """Open a transaction. Its BEGIN travels with the transaction's first statement (one
        round trip for both); a transaction that runs nothing sends nothing."""
        self.in_transaction = True
        self._begin_pending = True

    def commit(self) -> None:
        self._end("COMMIT")

    def rollback(self) -> None:
        self._end("ROLLBACK")

    def _end(self, word: str) -> None:
        self.in_transaction = False
        if self._begin_pending:  # nothing was sent
            self._begin_pending = False
            return
        self.execute_plain(word)

    def _send_begin(self) -> None:
        from pg8000.core import Context

        if self._begin_pending:
            self._begin_pending = False
            self._raw.send_QUERY("BEGIN")
            self._unread.append(Context("BEGIN"))

    def _run(self, statement: str, params: Iterable[Any], plain: bool = False) -> Cursor:
        from pg8000.converters import make_params

        values = [int(v) if v.__class__ is bool else v for v in params]
        self._last = statement
        with self._errors():
            if statement not in self._prepared and self._first_time(statement):
                context = self._run_once(statement, make_params(self._raw.py_types, values))
                index = {c["name"]: i for i, c in enumerate(context.columns or ())}
            else:
                name, columns, funcs, index = self._prepare(statement)
                self._send(name, [make_params(self._raw.py_types, values)])
                context = self._expect(statement, columns, funcs)
                self._drain()
        if plain:
            return Cursor([tuple(values) for values in context.rows or ()], context.row_count)
        return Cursor([Row(index, values) for values in context.rows or ()], context.row_count)

    def _first_time(self, statement: str) -> bool:
        """Statements are prepared from their second execution on: one seen once (an `IN`
        list of a new length, say) costs one round trip, not a prepare and an execute."""
        if statement in self._seen:
            return False
        if len(self._seen) >= SEEN_PER_CONNECTION:
            self._seen.clear()
        self._seen.add(statement)
        return True

    def _run_once(self, statement: str, params: Any) -> Any:
        """Parse (unnamed), bind, describe, execute and sync in one round trip."""
        context = self._send_once(statement, params)
        self._drain()
        return context

    def _send_once(self, statement: str, params: Any) -> Any:
        """Write (not yet flush) a pending BEGIN, then parse (unnamed), bind, describe, execute
        and sync."""
        from pg8000.core import (
            DESCRIBE,
            EXECUTE_MSG,
            NULL_BYTE,
            PARSE,
            PORTAL,
            SYNC_MSG,
            Context,
            _write,
        )

        raw = self._raw
        self._send_begin()
        raw._send_message(PARSE, NULL_BYTE + statement.encode(raw._client_encoding) + ZERO_OIDS)
        _write_bind(raw, NULL_BYTE, params)
        raw._send_message(DESCRIBE, PORTAL + NULL_BYTE)
        _write(raw._sock, EXECUTE_MSG)
        _write(raw._sock, SYNC_MSG)
        context = Context(statement)
        self._unread.append(context)
        return context

    def _send(self, name: bytes, batch: list[Any]) -> None:
        """Write (not yet flush) a pending BEGIN, then the prepared statement once per
        parameter row (bind, execute) and one sync."""
        from pg8000.core import EXECUTE_MSG, SYNC_MSG, _write

        self._send_begin()
        raw = self._raw
        for params in batch:
            _write_bind(raw, name, params)
            _write(raw._sock, EXECUTE_MSG)
        _write(raw._sock, SYNC_MSG)

    def _expect(self, statement: str, columns: Any, funcs: Any) -> Any:
        from pg8000.core import Context

        context = Context(statement, columns=columns, input_funcs=funcs)
        self._unread.append(context)
        return context

    def _drain(self) -> None:
        """Send what is written and read every answer in order (one round trip). An error
        with answers still unread leaves the connection unusable: it is dropped."""
        from pg8000.core import _flush

        pending, self._unread = self._unread, []
        if not pending:
            return
        self.round_trips += 1
        _flush(self._raw._sock)
        for number, context in enumerate(pending):
            try:
                self._raw.handle_messages(context)
            except BaseException:
                self.broken = self.broken or number < len(pending) - 1 or context.error is None
                raise
            context.done = True  # (a deferred statement's answer is there)

    def _prepare(self, statement: str) -> tuple[bytes, Any, Any, dict[str, int]]:
        found = self._prepared.pop(statement, None)
        if found is None:
            self._drain()  # preparing is a round trip of its own: earlier answers first
            if len(self._prepared) >= PREPARED_PER_CONNECTION:
                oldest = next(iter(self._prepared))
                self._raw.close_prepared_statement(self._prepared.pop(oldest)[0])
                self.round_trips += 1
            name, columns, funcs = self._raw.prepare_statement(statement, ())
            self.round_trips += 1
            index = {c["name"]: i for i, c in enumerate(columns or ())}
            found = (name, columns, funcs, index)
        self._prepared[statement] = found  # most recent last
        return found

    @contextmanager
    def _errors(self) -> Iterator[None]:
        from pg8000.exceptions import DatabaseError as DriverError
        from pg8000.exceptions import InterfaceError

        try:
            yield
        except DriverError as exc:
            detail = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
            code = str(detail.get("C", ""))
            if code.startswith(CONNECTION_LOST):
                self.broken = True
            message = f"{detail.get('M', exc)} (SQLSTATE {code})" if detail else str(exc)
            if code == DISK_FULL:
                raise StorageFull(f"the database cannot be written: {message}") from None
            log.debug("PostgreSQL refused: %s", self._last)
            raise DatabaseError(f"PostgreSQL: {message}") from None
        except (InterfaceError, OSError) as exc:
            self.broken = True
            raise DatabaseError(f"PostgreSQL connection lost: {exc}") from None

    def fileno(self) -> int:
        """The socket's descriptor (a listener waits on it)."""
        return int(self._raw._usock.fileno())

    def notifications(self) -> list[str]:
        """Payloads of the notifications read with the last answers (taken)."""
        queued = self._raw.notifications
        payloads = []
        while queued:
            payloads.append(str(queued.popleft()[2]))
        return payloads

    def close(self) -> None:
        try:
            self._raw.close()
        except Exception:  # the socket may be gone already; nothing more to release
            log.debug("closing a PostgreSQL connection failed", exc_info=True)


def connect(target: PgTarget, password: str) -> Connection:
    """A new connection (autocommit: `write()` opens its transactions itself)."""
    from pg8000.exceptions import DatabaseError as DriverError
    from pg8000.exceptions import InterfaceError
    from pg8000.native import Connection as Native

    sock: socket.socket | None = None
    try:  # our own socket: closed here when the server refuses us (pg8000 would leave it open)
        sock = socket.create_connection((target.host, target.port), target.connect_timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # requests go out whole, at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw = Native(
            target.user,
            host=target.host,
            database=target.database,
            password=password or None,
            ssl_context=ssl_context(target),
            application_name=target.application_name,
            sock=sock,
        )
    except (DriverError, InterfaceError, OSError) as exc:
        if sock is not None:
            sock.close()
        raise DatabaseError(f"cannot open database '{target.describe()}': {_reason(exc)}") from None
    raw.register_in_adapter(NUMERIC_OID, _number)
    raw._usock.settimeout(None)  # the connect timeout bounds connecting, not a long statement
    return Connection(raw)


ZERO_OIDS = b"\x00\x00\x00"  # a Parse message's end: the statement's NUL, no parameter types


def _write_bind(raw: Any, name: bytes, params: Sequence[Any]) -> None:
    """A Bind message (text parameters, text results), as pg8000's `send_BIND` writes it but
    without the Flush it adds: the server sends its answers at the request's Sync, in one
    piece, rather than a piece per message (each a wake-up of this process)."""
    from pg8000.core import BIND, NULL_BYTE, H_pack, i_pack

    message = bytearray(NULL_BYTE + name + H_pack(0) + H_pack(len(params)))
    encoding = raw._client_encoding
    for value in params:
        if value is None:
            message.extend(i_pack(-1))
        else:
            data = value.encode(encoding)
            message.extend(i_pack(len(data)))
            message.extend(data)
    message.extend(H_pack(0))
    raw._send_message(BIND, message)


def _reason(exc: BaseException) -> str:
    detail = exc.args[0] if exc.args else None
    if isinstance(detail, dict):
        return str(detail.get("M", detail))
    cause = exc.__cause__
    return f"{exc} ({cause})" if cause else str(exc)


def _number(text: str) -> int | float:
    """NUMERIC (what sum() and avg() of integers give) as the int or float SQLite gives."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def ssl_context(target: PgTarget) -> ssl.SSLContext | bool | None:
    """sslmode -> what pg8000 takes: False (disable), None (prefer/allow: TLS if offered),
    or a context (require: encrypted; verify-ca: and a trusted certificate; verify-full: and
    the host's name in it). `sslrootcert` names the CA file (else the system's)."""
    mode = target.sslmode
    if mode == "disable":
        return False
    if mode in ("allow", "prefer"):
        return None
    context = ssl.create_default_context(cafile=target.sslrootcert or None)
    if mode == "require" and not target.sslrootcert:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = mode == "verify-full"
    return context


class PgDatabase:
    """A PostgreSQL database with `db.Database`'s interface (see the module's docstring)."""

    dialect = "postgresql"
    checkpointer = None  # PostgreSQL writes its WAL back itself
    incremental_vacuum_enabled = True  # autovacuum gives deleted rows' space back

    def __init__(self, url: str, readers: int = READERS, password_env: str = "") -> None:
        self.target = parse_postgres_url(url, password_env)
        self.path = self.target.describe()  # never the password
        try:
            self._password = resolve_password(self.target)
        except ConfigError as exc:
            raise DatabaseError(str(exc)) from None
        self._lock = threading.RLock()
        self._writer: Connection | None = self._connect()
        self._readers: queue.LifoQueue[Connection | None] = queue.LifoQueue()
        for _ in range(readers):
            self._readers.put(None)
        self._lent = threading.local()
        self._closed = False
        self._pool_lock = threading.Lock()  # the readers' pool and `_closed`
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> Connection:
        return connect(self.target, self._password)

    def _migrate(self) -> None:
        with self.write() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            conn.execute_plain("CREATE TABLE IF NOT EXISTS nagare_schema (version BIGINT NOT NULL)")
            version = _version(conn)
            if version > len(MIGRATIONS):
                raise DatabaseError(
                    f"database '{self.path}' has schema version {version}, newer than this "
                    f"Nagare knows ({len(MIGRATIONS)}): upgrade Nagare or use another --db"
                )
            if version == len(MIGRATIONS):
                return
            for statement in PRELUDE:
                conn.execute_plain(statement)
            for number in range(version + 1, len(MIGRATIONS) + 1):
                for statement in _statements(migration_script(number, self.dialect)):
                    conn.execute_plain(translate(statement))
            conn.execute("DELETE FROM nagare_schema")
            conn.execute("INSERT INTO nagare_schema(version) VALUES (?)", (len(MIGRATIONS),))

    @property
    def schema_version(self) -> int:
        with self.read() as conn:
            return _version(conn)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction on the writer connection (READ COMMITTED: every compare-and-set
        `UPDATE ... WHERE status IN (...)` re-checks its condition on the row it locks). A
        lost connection is opened again by the next write."""
        with self._lock:
            if self._closed:
                raise DatabaseError("the database is closed (the server is stopping)")
            conn = self._writer = self._writer or self._connect()
            try:
                conn.begin()
                yield conn
                conn.commit()
            except BaseException:
                self._abandon(conn)
                raise

    def _abandon(self, conn: Connection) -> None:
        if conn.broken:
            conn.close()
            self._writer = None
            return
        if conn.in_transaction:
            try:
                conn.rollback()
            except DatabaseError:
                conn.close()
                self._writer = None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        held: Connection | None = getattr(self._lent, "conn", None)
        if held is not None:
            yield held
            return
        token = self._readers.get()
        if self._closed:
            if token is not None:
                token.close()
            self._readers.put(None)
            raise DatabaseError("the database is closed (the server is stopping)")
        try:
            conn = token or self._connect()
        except BaseException:
            self._readers.put(None)
            raise
        self._lent.conn = conn
        try:
            yield conn
        finally:
            self._lent.conn = None
            self._give_back(conn)

    def _give_back(self, conn: Connection) -> None:
        """A lent reader returns to the pool; a broken one, or any once the database closed,
        is closed here by the thread that used it (`_pool_lock`: never after `close` emptied
        the pool, where it would stay open)."""
        with self._pool_lock:
            if not (conn.broken or self._closed):
                self._readers.put(conn)
                return
            self._readers.put(None)
        conn.close()

    def leader_lock(self) -> AdvisoryLock:
        """The masters' leader lock (a session-level advisory lock on a connection of its own:
        it is freed when that connection dies, the master's process with it)."""
        return AdvisoryLock(self._connect, LEADER_LOCK)

    def wake_channel(self, sender: str) -> PgWakeChannel:
        """The masters' wake-ups (LISTEN/NOTIFY) on a connection of its own."""
        return PgWakeChannel(self._connect, sender)

    def release_free_pages(self) -> None:
        """Nothing to do: autovacuum makes deleted rows' space reusable."""

    def enable_incremental_vacuum(self) -> bool:
        return False

    def close(self) -> None:
        with self._lock, self._pool_lock:
            self._closed = True
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            idle: list[Connection] = []
            tokens = 0
            while not self._readers.empty():
                conn = self._readers.get_nowait()
                tokens += 1
                if conn is not None:
                    idle.append(conn)
            for _ in range(tokens):
                self._readers.put(None)
            for conn in idle:
                conn.close()


class AdvisoryLock:
    """A session-level advisory lock held on a dedicated connection (`store.db.LeaderLock`).
    PostgreSQL frees it when the connection ends: a master that dies or loses its database
    connection stops leading, and the next `hold()` of another master takes it."""

    shared = True

    def __init__(self, open_connection: Callable[[], Connection], key: int) -> None:
        self._open = open_connection
        self._key = key
        self._conn: Connection | None = None
        self._held = False

    def hold(self) -> bool:
        """Take the lock if it is free; while held, check that its connection still answers
        (a lost connection lost the lock). False on any database error."""
        try:
            if self._conn is None:
                self._conn = self._open()
                self._held = False
            if self._held:
                self._conn.execute("SELECT 1")
            else:
                row = self._conn.execute("SELECT pg_try_advisory_lock(?)", (self._key,)).fetchone()
                self._held = bool(row[0])
        except DatabaseError as exc:
            log.warning("the leader lock's connection failed: %s", exc)
            self.release()
        return self._held

    def release(self) -> None:
        """Close the connection (which frees the lock)."""
        self._held = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PgWakeChannel:
    """Wake-ups between the masters sharing a database (`store.db.WakeChannel`): `publish`
    queues an event (a kind and string arguments) from any thread; `run(stop)`, a loop of its
    own, LISTENs on WAKE_CHANNEL, sends what was published as few NOTIFYs as fit (JSON,
    `{"from": sender, "events": [[kind, arg, ...], ...]}`) and hands every event another master
    sent to `on_event(kind, args)`. Delivery is best effort: what a wake-up would have done
    happens anyway at the receiver's next safety sweep."""

    def __init__(self, open_connection: Callable[[], Connection], sender: str) -> None:
        self._open = open_connection
        self.sender = sender
        self.on_event: Callable[[str, list[str]], None] = lambda kind, args: None
        self._pending: list[list[str]] = []
        self._lock = threading.Lock()
        self._listening: Connection | None = None  # LISTENing since `listen`, for `run`
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def publish(self, kind: str, *args: str) -> None:
        with self._lock:
            self._pending.append([kind, *args])
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the loop is awake already
            os.write(self._wake_w, b"w")

    def listen(self) -> None:
        """LISTEN now, before this master registers or claims anything: whatever another
        master announces from then on reaches it (`run` goes on on this connection)."""
        conn = self._open()
        try:
            conn.execute_plain(f"LISTEN {WAKE_CHANNEL}")
        except BaseException:
            conn.close()
            raise
        self._listening = conn

    def run(self, stop: threading.Event) -> None:
        """Listen until `stop` (a lost connection raises: the supervisor runs this again)."""
        conn, self._listening = self._listening, None
        if conn is None:
            conn = self._open()
        try:
            conn.execute_plain(f"LISTEN {WAKE_CHANNEL}")
            while not stop.is_set():
                ready, _, _ = select.select(
                    [conn.fileno(), self._wake_r], [], [], LISTEN_POLL_SECONDS
                )
                if self._wake_r in ready:
                    _drain_pipe(self._wake_r)
                sent = self._send(conn)
                if not sent:  # answers bring notifications in; else ask (cheaply) for them
                    conn.execute("SELECT 1")
                self._deliver(conn.notifications())
        finally:
            conn.close()

    def _send(self, conn: Connection) -> bool:
        with self._lock:
            events, self._pending = self._pending, []
        for payload in _payloads(self.sender, events):
            conn.execute("SELECT pg_notify(?, CAST(? AS TEXT))", (WAKE_CHANNEL, payload))
        return bool(events)

    def _deliver(self, payloads: list[str]) -> None:
        for payload in payloads:
            try:
                message = json.loads(payload)
                if message.get("from") == self.sender:
                    continue
                events = [[str(part) for part in event] for event in message["events"]]
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("ignored a malformed wake-up: %.200s", payload)
                continue
            for event in events:
                if event:
                    self.on_event(event[0], event[1:])

    def close(self) -> None:
        if self._listening is not None:  # listened, never run
            self._listening.close()
            self._listening = None
        os.close(self._wake_r)
        os.close(self._wake_w)


def _payloads(sender: str, events: list[list[str]]) -> list[str]:
    """The events as JSON payloads of at most NOTIFY_BYTES each (ASCII: what pg8000 reads)."""
    payloads: list[str] = []
    batch: list[list[str]] = []
    empty = len(json.dumps({"from": sender, "events": []}))
    size = empty
    for event in events:
        length = len(json.dumps(event)) + 2  # and its separator
        if batch and size + length > NOTIFY_BYTES:
            payloads.append(json.dumps({"from": sender, "events": batch}))
            batch, size = [], empty
        batch.append(event)
        size += length
    if batch:
        payloads.append(json.dumps({"from": sender, "events": batch}))
    return payloads


def _drain_pipe(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _version(conn: Connection) -> int:
    row = conn.execute("SELECT max(version) FROM nagare_schema").fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
