"""Repository locks stored in the repository itself, so they work on any backend.

Each holder writes one JSON object ``locks/<id>``. Shared locks (backup, verify) coexist; an
exclusive lock (prune, check --repair) conflicts with every other lock. Acquiring is
write-then-list in two phases, which is safe as long as a backend lists what was stored before
(local, SFTP and S3 all do):

1. write our object as ``pending``, list ``locks/``: back off if a conflicting lock is ``held``,
   or is ``pending`` with a lower ``(created, id)`` (of two racers the older wins);
2. rewrite our object as ``held``, list again: back off if a conflicting lock is ``held``.

Of two conflicting holders, the one that lists second always sees the other, so at most one
completes. A heartbeat thread refreshes our object; a lock whose heartbeat is too old, or whose
process is gone from this host, is stale and is taken over; so is one whose record cannot
be a live holder's (a time that is not a finite number, a heartbeat from the future). How long a
heartbeat may be missed is capped (``MAX_HEARTBEAT_INTERVAL``), so a record claiming a heartbeat
every 1e308 seconds turns stale like any other. An unreadable object (not JSON, not a lock
record) is never taken over: ``crmmaint repo unlock`` (``break_locks``) removes it, in both lock
namespaces: the repository's ``locks/`` and the scheduler's ``scheduler/lock/``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crmmaint.errors import BackendError, LockError, ObjectNotFound
from crmmaint.interrupts import STOPPING
from crmmaint.processes import pid_alive, pid_namespace
from crmmaint.repository.backends.base import Backend
from crmmaint.units import plural

logger = logging.getLogger(__name__)

LOCKS_PREFIX = "locks/"
#: Where the scheduler's overlap lock lives: its own namespace, so that the exclusive lock
#: one scheduler holds while it runs a playbook never conflicts with the repository locks of
#: that playbook's own backups and prunes.
SCHEDULER_PREFIX = "scheduler/"
#: The scheduler's overlap lock objects (``crmmaint.schedule.scheduler``).
SCHEDULER_LOCKS_PREFIX = SCHEDULER_PREFIX + "lock/"
#: Every namespace of lock objects, by the name ``repo unlock`` reports it under.
LOCK_NAMESPACES = {"repository": LOCKS_PREFIX, "scheduler": SCHEDULER_LOCKS_PREFIX}
#: Suffix of the removal mark ``locks/<id>.removed`` written before a lock object is deleted
#: by someone other than its holder (``repo unlock``, a stale takeover): a holder whose
#: heartbeat wrote its object back in the moment of the deletion sees the mark and lets go,
#: and readers ignore a lock object that has one. Marks older than ``REMOVED_MARK_AGE`` go.
REMOVED_SUFFIX = ".removed"
REMOVED_MARK_AGE = 86400.0
#: A lock is stale when its heartbeat is older than this many heartbeat intervals.
STALE_HEARTBEATS = 5
#: The longest heartbeat interval of another holder believed when judging its lock stale
#: (10 minutes): a record claiming more (planted, or damaged) is judged by this one.
MAX_HEARTBEAT_INTERVAL = 600.0
#: The highest pid a lock record may name (Linux allows at most 2**22).
_MAX_PID = 2**31 - 1
_FIRST_BACKOFF = 0.02
_MAX_BACKOFF = 2.0
#: A wait for a conflicting lock longer than this is announced (a warning on the console).
ANNOUNCE_WAIT = 2.0


@dataclass(frozen=True)
class LockInfo:
    """One lock object as read from ``locks/``; ``raw`` is None when it could not be parsed."""

    name: str
    id: str
    exclusive: bool
    state: str
    host: str
    pid: int
    owner: str | None
    user: str
    created: float
    acquired: float | None
    heartbeat: float
    heartbeat_interval: float
    pid_namespace: str
    raw: dict[str, Any] | None

    @property
    def key(self) -> tuple[float, str]:
        """Tie-break order between racers: the lower key wins."""
        return (self.created, self.id)

    def implausible(self) -> str | None:
        """Why this readable record cannot be a live holder's (planted or damaged): a time or
        heartbeat interval that is not a finite number or is negative, a pid no process has.
        ``None`` when it is plausible (and for an unreadable object: ``raw`` is None)."""
        if self.raw is None:
            return None
        for what, value in (
            ("heartbeat", self.heartbeat),
            ("heartbeat interval", self.heartbeat_interval),
            ("creation time", self.created),
        ):
            if not math.isfinite(value) or value < 0:
                return f"its {what} ({value!r}) is not a valid time"
        if not 0 < self.pid <= _MAX_PID:
            return f"its pid ({self.pid}) is no process id"
        return None

    def describe(self, now: float | None = None) -> str:
        """``backup crm (pid 4242 on db1, exclusive, since 2026-11-20 03:00:01 UTC)``."""
        if self.raw is None:
            return f"unreadable lock object {self.name}"
        now = time.time() if now is None else now
        try:  # a planted record may hold any number
            when = datetime.fromtimestamp(self.acquired or self.created, tz=UTC)
            since = f"{when:%Y-%m-%d %H:%M:%S} UTC"
        except (OverflowError, OSError, ValueError):
            since = "an invalid time"
        who = f"{self.owner} " if self.owner else ""
        kind = "exclusive" if self.exclusive else "shared"
        if self.state == "pending":
            kind += ", still acquiring"
        from crmmaint.journal import redact_value  # a planted record's fields: any text

        beat = now - self.heartbeat
        beat_said = f"{beat:.0f}s ago" if beat >= 0 else f"{-beat:.0f}s in the future"
        return redact_value(
            f"{who}(user {self.user}, pid {self.pid} on {self.host}, {kind}, "
            f"since {since}, last heartbeat {beat_said})"
        )


class RepositoryLock:
    """Context manager holding a shared or exclusive lock on one repository.

    ``timeout`` bounds the wait for conflicting holders (0: try once); ``stale_after`` is the
    heartbeat age after which another holder's lock is taken over (default: 5 heartbeats).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        exclusive: bool,
        owner: str | None = None,
        timeout: float = 60.0,
        heartbeat: float = 30.0,
        stale_after: float | None = None,
        prefix: str = LOCKS_PREFIX,
    ) -> None:
        if heartbeat <= 0:
            raise ValueError(f"heartbeat must be positive, got {heartbeat!r}")
        if stale_after is not None and stale_after <= heartbeat:
            raise ValueError(f"stale_after ({stale_after}) must exceed heartbeat ({heartbeat})")
        self.backend = backend
        self.exclusive = exclusive
        self.owner = owner
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        #: The namespace of lock objects it takes part in (``locks/``: the repository's).
        self.prefix = prefix
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.pid_namespace = pid_namespace()
        self.user = _current_user()
        self.id = ""
        self._record: dict[str, Any] = {}
        self._held = False
        self._lost = False
        self._io = threading.Lock()  # orders heartbeat writes against release
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return f"RepositoryLock({self.backend.url!r}, {kind}, id={self.id or None!r})"

    @property
    def name(self) -> str:
        return self.prefix + self.id

    @property
    def acquired_at(self) -> float:
        """Unix time (this machine's clock) at which the lock was acquired; 0.0 if not held."""
        return float(self._record.get("acquired") or 0.0) if self._held else 0.0

    @property
    def held(self) -> bool:
        return self._held and not self._lost

    def __enter__(self) -> RepositoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> RepositoryLock:
        """Wait until no conflicting lock is held, then hold ours; ``LockError`` on timeout."""
        if self._held:
            raise RuntimeError(f"{self!r} is already held")
        self.id = uuid.uuid4().hex[:16]
        now = time.time()
        self._record = {
            "id": self.id,
            "exclusive": self.exclusive,
            "state": "pending",
            "host": self.host,
            "pid": self.pid,
            "owner": self.owner,
            "user": self.user,
            "created": now,
            "acquired": None,
            "heartbeat": now,
            "heartbeat_interval": self.heartbeat,
            "pid_namespace": self.pid_namespace,
        }
        self._lost = False
        started = time.monotonic()
        deadline = started + self.timeout
        backoff = _FIRST_BACKOFF
        announced = False
        while True:
            try:
                blocker = self._attempt()
            except BaseException:
                self._delete_quietly()
                raise
            if blocker is None:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout_error(blocker)
            logger.debug("%s waits for %s", self, blocker.describe())
            if not announced and time.monotonic() - started >= ANNOUNCE_WAIT:
                announced = True
                logger.warning(
                    "waiting for the %s lock of %s: held by %s; giving up in %.0fs",
                    "exclusive" if self.exclusive else "shared",
                    self.backend.url,
                    blocker.describe(),
                    remaining,
                )
            pause = min(remaining, backoff * random.uniform(0.5, 1.0))
            if not announced:  # wake up in time to announce the wait when it is due
                pause = min(pause, max(0.01, started + ANNOUNCE_WAIT - time.monotonic()))
            if STOPPING.wait(pause):  # the run is being interrupted: stop waiting now
                self._delete_quietly()
                raise LockError(
                    f"stopped waiting for the lock of {self.backend.url}: the run was interrupted",
                    retryable=False,
                )
            backoff = min(backoff * 2, _MAX_BACKOFF)
        self._held = True
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._heartbeat_loop, name=f"lock-heartbeat-{self.id}", daemon=True
        )
        self._thread.start()
        logger.debug("acquired %s", self)
        return self

    def _attempt(self) -> LockInfo | None:
        """One two-phase try; returns the lock that blocks us (ours is then removed)."""
        self._write(state="pending")
        blocker = self._find_blocker(pending_counts=True)
        if blocker is None:
            self._write(state="held", acquired=time.time())
            blocker = self._find_blocker(pending_counts=False)
            if blocker is None:
                return None
        self._delete_own()
        self._record.update(state="pending", acquired=None)
        return blocker

    def _find_blocker(self, *, pending_counts: bool) -> LockInfo | None:
        """The first live conflicting lock that wins over ours; stale ones are taken over."""
        mine = (self._record["created"], self.id)
        for other in read_locks(self.backend, self.prefix):
            if other.id == self.id or not (self.exclusive or other.exclusive):
                continue
            if self._take_over_if_stale(other):
                continue
            if other.state != "pending" or (pending_counts and other.key < mine):
                return other
        return None

    def _take_over_if_stale(self, other: LockInfo) -> bool:
        """Delete ``other`` when its holder is gone; True if it no longer counts."""
        now = time.time()
        if other.raw is None:
            return False  # unreadable: only `crmmaint repo unlock` may remove it
        same_pids = other.host == self.host and other.pid_namespace == self.pid_namespace
        garbage = other.implausible()
        if garbage is not None:
            why = f"not a lock a live process holds: {garbage}"
        elif same_pids and not pid_alive(other.pid):
            why = f"process {other.pid} no longer runs on {self.host}"
        else:
            limit = self.stale_after or STALE_HEARTBEATS * max(
                self.heartbeat, min(other.heartbeat_interval, MAX_HEARTBEAT_INTERVAL)
            )
            age = now - other.heartbeat
            if -limit <= age <= limit:
                return False
            why = (
                f"no heartbeat for {age:.0f}s (limit {limit:.0f}s)"
                if age > 0
                else f"its heartbeat is {-age:.0f}s in the future (limit {limit:.0f}s)"
            )
        try:
            remove_lock(self.backend, other.name)
        except ObjectNotFound:
            return True  # released, or another waiter took it over first
        logger.warning(
            "took over stale repository lock %s of %s in %s: %s",
            other.name,
            other.describe(now),
            self.backend.url,
            why,
        )
        return True

    def _timeout_error(self, blocker: LockInfo) -> LockError:
        kind = "exclusive" if self.exclusive else "shared"
        what = f"repository {self.backend.url} is locked"
        if self.prefix != LOCKS_PREFIX:  # the scheduler's: `repo unlock` removes those too
            namespace = _namespace_of(self.prefix)
            what = f"the {namespace} lock in repository {self.backend.url} is held"
        return LockError(
            f"{what} by {blocker.describe()}; "
            f"gave up waiting for {'an' if kind[0] in 'aeiou' else 'a'} {kind} lock "
            f"after {self.timeout:g}s",
            hint="wait for that process to finish and retry; if it is gone, run "
            "`crmmaint repo unlock` to remove its lock",
        )

    def _write(self, **changes: Any) -> None:
        self._record.update(changes, heartbeat=time.time())
        self.backend.store(self.name, json.dumps(self._record, sort_keys=True).encode())

    def _delete_own(self) -> None:
        with contextlib.suppress(ObjectNotFound):
            self.backend.delete(self.name)

    def _delete_quietly(self) -> None:
        """Best-effort cleanup after a failed attempt; a leftover turns stale on its own."""
        try:
            self._delete_own()
        except BackendError as exc:
            logger.warning("cannot remove lock object %s: %s", self.name, exc)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._io:
                if self._stop.is_set():
                    return
                try:
                    if self._removed():
                        self._let_go()
                        return
                    self._write()
                    if self.backend.exists(self.name + REMOVED_SUFFIX):
                        self._let_go()  # removed while we wrote: our write must not stand
                        return
                except BackendError as exc:
                    logger.warning("cannot refresh repository lock %s: %s", self.name, exc)

    def _removed(self) -> bool:
        """Whether someone else removed our lock object (it is gone, or marked removed)."""
        return not self.backend.exists(self.name) or self.backend.exists(self.name + REMOVED_SUFFIX)

    def _let_go(self) -> None:
        """Our lock was removed by someone else: stop holding it, and delete what our
        heartbeat may have written back, and the removal mark."""
        self._lost = True
        for name in (self.name, self.name + REMOVED_SUFFIX):
            with contextlib.suppress(ObjectNotFound, BackendError):
                self.backend.delete(name)
        logger.error(
            "repository lock %s in %s was removed by someone else (unlock or a stale "
            "takeover); this process no longer holds the lock",
            self.name,
            self.backend.url,
        )

    def check(self) -> None:
        """Raise ``LockError`` unless the lock is still held; call right before committing work.

        Asks the backend, not only the heartbeat's flag: our lock object must still be there
        (an unlock or a stale takeover deletes it). It is then refreshed, so that no other
        process can judge it stale for ``STALE_HEARTBEATS`` heartbeats: the commit that follows
        runs under a lock that is both present and fresh.
        """
        if not self._held:
            raise LockError(f"{self!r} is not held", hint="acquire the lock first")
        with self._io:
            if not self._lost:
                try:
                    present = self.backend.exists(self.name)
                except BackendError as exc:
                    raise LockError(
                        f"cannot confirm repository lock {self.name} in {self.backend.url}: {exc}",
                        hint="nothing was committed; rerun the operation",
                    ) from exc
                if present and not self.backend.exists(self.name + REMOVED_SUFFIX):
                    self._write()
                else:
                    self._let_go()
        if self._lost:
            raise LockError(
                f"repository lock {self.name} in {self.backend.url} was removed while held "
                "(`crmmaint repo unlock`, or taken over as stale after missed heartbeats)",
                hint="nothing was committed under the lost lock; rerun the operation",
            )

    def release(self) -> None:
        """Stop the heartbeat and delete our lock object. Idempotent."""
        if not self._held:
            return
        self._stop.set()
        with self._io:
            self._held = False
            try:
                self._delete_own()
            except BackendError as exc:
                limit = self.stale_after or STALE_HEARTBEATS * self.heartbeat
                logger.warning(
                    "cannot remove repository lock %s from %s (%s); others will take it over "
                    "after %.0fs, or run `crmmaint repo unlock`",
                    self.name,
                    self.backend.url,
                    exc,
                    limit,
                )
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        logger.debug("released %s", self)


def read_locks(backend: Backend, prefix: str = LOCKS_PREFIX) -> list[LockInfo]:
    """Every lock object under ``prefix`` (the repository's locks by default), oldest first;
    vanished ones are skipped."""
    found = []
    names = [obj.name for obj in backend.list(prefix)]
    removed = {name[: -len(REMOVED_SUFFIX)] for name in names if name.endswith(REMOVED_SUFFIX)}
    for name in names:
        if name.endswith(REMOVED_SUFFIX) or name in removed:
            continue  # a mark, or a lock removed whose holder has yet to notice
        try:
            data = backend.load(name)
        except ObjectNotFound:
            continue
        found.append(_parse(name, data, prefix))
    return sorted(found, key=lambda lock: lock.key)


def remove_lock(backend: Backend, name: str) -> None:
    """Delete another process's lock object ``name``: first its removal mark (so a holder
    whose heartbeat writes it back lets go at once), then the object; ``ObjectNotFound``
    when it was gone already."""
    backend.store(name + REMOVED_SUFFIX, json.dumps({"removed": time.time()}).encode())
    backend.delete(name)


def _forget_old_marks(backend: Backend, now: float, prefix: str = LOCKS_PREFIX) -> None:
    """Delete removal marks older than ``REMOVED_MARK_AGE`` (their holders are long gone)."""
    for obj in backend.list(prefix):
        if not obj.name.endswith(REMOVED_SUFFIX):
            continue
        try:
            when = float(json.loads(backend.load(obj.name)).get("removed", 0))
        except (ObjectNotFound, ValueError, TypeError, AttributeError):
            when = 0.0
        if now - when > REMOVED_MARK_AGE:
            with contextlib.suppress(ObjectNotFound):
                backend.delete(obj.name)


def running_here(lock: LockInfo) -> bool:
    """Whether ``lock``'s process runs on this host (same host name and PID namespace), so
    that removing the lock would let another process in beside a live one."""
    return (
        lock.raw is not None
        and lock.implausible() is None
        and lock.host == socket.gethostname()
        and lock.pid_namespace == pid_namespace()
        and pid_alive(lock.pid)
    )


def break_locks(backend: Backend, *, force: bool = False) -> list[dict[str, Any]]:
    """Remove the locks of the repository (``crmmaint repo unlock``), in each namespace
    (``LOCK_NAMESPACES``: the repository's ``locks/``, the scheduler's ``scheduler/lock/``):
    each whose process does not run on this host, every one with ``force`` (a holder
    elsewhere cannot be checked from here), unreadable objects included. Raises ``LockError``
    (exit 7) naming the locks kept because their process runs here, after removing the
    others; returns what was removed: each lock's record (``{"id": …, "unreadable": True}``
    for an unreadable object) with ``namespace`` (``repository``, ``scheduler``) and
    ``object`` (its name) added."""
    removed = []
    kept = []
    now = time.time()
    for namespace, prefix in LOCK_NAMESPACES.items():
        _forget_old_marks(backend, now, prefix)
        for lock in read_locks(backend, prefix):
            if not force and running_here(lock):
                kept.append(lock)
                continue
            with contextlib.suppress(ObjectNotFound):  # its holder saw the mark and let go
                remove_lock(backend, lock.name)
            logger.warning("removed %s lock %s: %s", namespace, lock.name, lock.describe())
            record = lock.raw if lock.raw is not None else {"id": lock.id, "unreadable": True}
            removed.append({**record, "namespace": namespace, "object": lock.name})
    if kept:
        raise LockError(
            f"kept {plural(len(kept), 'lock')} whose process runs on this host: "
            + "; ".join(lock.describe() for lock in kept)
            + (f" (removed {plural(len(removed), 'other')})" if removed else ""),
            hint="let that process finish (or stop it); `crmmaint repo unlock --force` removes "
            "a live process's lock too, which lets another process in beside it",
        )
    return removed


def _namespace_of(prefix: str) -> str:
    """``repository`` or ``scheduler``: the name of the namespace ``prefix`` is."""
    return next((n for n, p in LOCK_NAMESPACES.items() if p == prefix), prefix.rstrip("/"))


def _parse(name: str, data: bytes, prefix: str = LOCKS_PREFIX) -> LockInfo:
    lock_id = name.removeprefix(prefix)
    try:
        raw = json.loads(data)
        return LockInfo(
            name=name,
            id=str(raw["id"]),
            exclusive=bool(raw["exclusive"]),
            state=str(raw.get("state", "held")),
            host=str(raw["host"]),
            pid=int(raw["pid"]),
            owner=raw.get("owner"),
            user=str(raw.get("user", "?")),
            created=float(raw["created"]),
            acquired=_time_or_none(raw.get("acquired")),
            heartbeat=float(raw["heartbeat"]),
            heartbeat_interval=float(raw.get("heartbeat_interval", 0)),
            pid_namespace=str(raw.get("pid_namespace", "")),
            raw=raw,
        )
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):  # int(1e999); [[[…
        # Unparsable: treat as an exclusive lock held by an unknown process.
        return LockInfo(
            name, lock_id, True, "held", "?", 0, None, "?", 0.0, None, 0.0, 0.0, "?", None
        )


def _time_or_none(value: Any) -> float | None:
    """An optional time of a lock record: a number, else ``None``."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
