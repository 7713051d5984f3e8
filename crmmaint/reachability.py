"""Reaching everything the inventory names, changing nothing: ``inventory check --connect``.

One ``Reach`` per host, database, cache and repository, in inventory order, each ok or failed
with one line that says why and names the credential at fault by its source (``password from
env CRM_DB_PASS refused for user 'crm'``), never its value:

- a host runs ``true`` over its transport (SSH: host key, login, ``become``; local: the shell);
- a database connects and runs ``SELECT 1`` and its read-only facts query, as ``health.database``
  does, through the transport of the host that owns it;
- a cache answers ``PING`` (with its password) and its cache directories exist;
- a repository's location exists, its write key is 0600 and well formed, its recipients parse
  and a configured identity is one of them (``check_keys``, as ``keys check``), its config
  reads and authenticates with that write key, and a configured identity or passphrase
  unwraps the key of the newest backup.

Nothing is written: no repository is created or locked, no host key saved, SQLite opened without
creating a file. Items are checked in parallel, at most ``workers`` at once; each command gets
its host's ``connect_timeout`` (``REPOSITORY_TIMEOUT`` for a repository without one), and an item
still unanswered after ``guard_seconds`` of it is reported failed while the others finish.

The exit code of a check (``exit_code``): 0 when every item is ok; the code of the failures
when they share one (4 transport, 5 database or cache, 6 repository, 8 keys, 9 integrity, 3
configuration); 2 when they differ (README "Exit codes").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from crmmaint.engines import engine_for
from crmmaint.engines.redis import RedisCache
from crmmaint.errors import (
    INTERNAL_ERROR_EXIT,
    CommandTimeout,
    ConnectError,
    CrmMaintError,
    EngineError,
    TransportError,
)
from crmmaint.inventory import Cache, Database, Host, Inventory, RepositorySettings, SecretSource
from crmmaint.transport.base import Transport
from crmmaint.transport.pool import TransportFactory, TransportPool
from crmmaint.units import plural

log = logging.getLogger(__name__)

#: The kinds of item, in the order they are listed.
KINDS = ("host", "database", "cache", "repository")
#: Seconds each repository request may take when its entry sets no ``connect_timeout``.
REPOSITORY_TIMEOUT = 10.0
#: Exit code when failures of different kinds are found (README: "at least one target failed").
MIXED_FAILURES_EXIT = 2


@dataclass(frozen=True)
class Reach:
    """What checking one item found: ``ok``, and ``detail``: what answered, or why not (one
    line, no secret); ``hint``: what to do about a failure; ``exit_code``: the code of its
    error (0 when ok); ``seconds``: how long the check took."""

    kind: str
    name: str
    ok: bool
    detail: str
    hint: str | None = None
    exit_code: int = 0
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """``ok`` or ``failed``."""
        return "ok" if self.ok else "failed"

    def as_dict(self) -> dict[str, Any]:
        """The item as plain data (``--json``), with its ``status``."""
        return {**asdict(self), "seconds": round(self.seconds, 3), "status": self.status}


def exit_code(results: Iterable[Reach]) -> int:
    """0 when every item is ok; the failures' exit code when they share one; else 2."""
    codes = {r.exit_code for r in results if not r.ok}
    if not codes:
        return 0
    return codes.pop() if len(codes) == 1 else MIXED_FAILURES_EXIT


def guard_seconds(timeout: float) -> float:
    """How long an item whose commands each get ``timeout`` seconds may take in all: SSH spends
    up to ``timeout`` on each of connecting, key exchange and login before a command runs."""
    return 4 * timeout + 10.0


# --- the items ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    kind: str
    name: str
    timeout: float
    probe: Callable[[TransportPool], str]
    #: The item's password source, when it has one.
    secret: SecretSource | None = None

    def no_answer(self, within: float, seconds: float) -> Reach:
        """The item's line when it gave no answer within ``within`` seconds (exit 4)."""
        return Reach(
            self.kind,
            self.name,
            False,
            f"no answer within {within:g}s",
            hint=self.silence_hint(),
            exit_code=TransportError.exit_code,
            seconds=seconds,
        )

    def silence_hint(self) -> str:
        """What to check when the item gave no answer within its guard."""
        if self.secret is not None and str(self.secret.spec).startswith("cmd:"):
            return (
                "its password comes from a cmd: command, which runs first: run that command "
                "by hand to see whether it is what waits; else check the network path and "
                "the load of the host or service"
            )
        return "check the network path and the load of the host or service"


def plan(inv: Inventory) -> list[_Item]:
    """What ``reach_all`` checks, in listing order: hosts, databases, caches, repositories."""
    items: list[_Item] = []
    for name, host in inv.hosts.items():
        items.append(_Item("host", name, host.connect_timeout, _host_probe(host)))
    for name, db in inv.databases.items():
        owner = inv.target("database", name).host
        items.append(
            _Item("database", name, owner.connect_timeout, _database_probe(db, owner), db.password)
        )
    for name, cache in inv.caches.items():
        owner = inv.target("cache", name).host
        items.append(
            _Item("cache", name, owner.connect_timeout, _cache_probe(cache, owner), cache.password)
        )
    for name, repo in inv.repositories.items():
        timeout = float(repo.options.get("connect_timeout") or REPOSITORY_TIMEOUT)
        items.append(_Item("repository", name, timeout, _repository_probe(repo, timeout)))
    return items


def _host_probe(host: Host) -> Callable[[TransportPool], str]:
    def probe(pool: TransportPool) -> str:
        transport = pool.get(host)
        try:
            result = transport.run(["true"], timeout=host.connect_timeout)
        except TransportError as exc:
            refused = _login_refused(exc, host)
            if refused is None:
                raise
            raise refused from exc
        if not result.ok:
            how = "through sudo -n " if host.become else ""
            raise TransportError(
                f"`true` run {how}on {host.name} exited {result.exit_status}: "
                f"{result.stderr_tail() or '(no stderr)'}",
                hint="sudo must run without a password (NOPASSWD) for crmmaint's user"
                if host.become
                else "check the login shell of the user on the host",
            )
        if host.is_local:
            return "local commands run"
        user = f"{host.user}@" if host.user else ""
        via = " (sudo)" if host.become else ""
        return f"ssh {user}{host.address}:{host.port}{via}: host key known, login and command ok"

    return probe


def _login_refused(exc: TransportError, host: Host) -> ConnectError | None:
    """The SSH login failure of ``exc`` restated with the key that was refused, or None."""
    import paramiko

    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and not isinstance(cause, paramiko.AuthenticationException):
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
        if cause is not None and id(cause) in seen:
            return None
    if cause is None:
        return None
    key = f"key {host.identity_file}" if host.identity_file else "the default keys ~/.ssh/id_*"
    return ConnectError(
        f"SSH login as {host.user or 'the current user'!r} with {key} refused by "
        f"{host.name} ({host.address}:{host.port})",
        hint=exc.hint,
    )


def _database_probe(db: Database, owner: Host) -> Callable[[TransportPool], str]:
    def probe(pool: TransportPool) -> str:
        engine = engine_for(db, pool.get(owner))
        try:
            latency = engine.ping(timeout=owner.connect_timeout)
            facts = engine.facts(timeout=owner.connect_timeout)
        except EngineError as exc:
            raise _credential_refused(
                exc, engine.login_refusals, engine.where, db.password, db.user
            ) from exc
        version = f" {facts['version']}" if facts.get("version") else ""
        return f"{db.engine}{version}, SELECT 1 in {latency * 1000:.0f} ms"

    return probe


def _cache_probe(cache: Cache, owner: Host) -> Callable[[TransportPool], str]:
    def probe(pool: TransportPool) -> str:
        transport = pool.get(owner)
        said: list[str] = []
        if cache.redis:
            redis = RedisCache(cache, transport)
            try:
                latency = redis.ping(timeout=owner.connect_timeout)
            except EngineError as exc:
                raise _credential_refused(
                    exc, redis.login_refusals, redis.where, cache.password, None
                ) from exc
            said.append(f"redis PING in {latency * 1000:.0f} ms")
        if cache.directories:
            _directories_exist(transport, cache, owner.connect_timeout)
            said.append(f"{len(cache.directories)} cache directories present")
        return ", ".join(said)

    return probe


#: Prints the first argument that is not a directory and exits 1; exits 0 when all are.
_FIRST_MISSING_DIR = 'for d do [ -d "$d" ] || { printf "%s\\n" "$d"; exit 1; }; done'


def _directories_exist(transport: Transport, cache: Cache, timeout: float) -> None:
    where = f"cache {cache.name!r} on host {transport.host}"
    try:
        result = transport.run(
            ["sh", "-c", _FIRST_MISSING_DIR, "sh", *cache.directories], timeout=timeout
        )
    except CommandTimeout as exc:
        raise EngineError(f"{where}: {exc.message}") from exc
    if not result.ok:
        missing = result.text.strip() or result.stderr_tail()
        raise EngineError(
            f"{where}: cache directory {missing} does not exist",
            hint="create it, or correct 'directories' in the inventory",
        )


def source_phrase(secret: SecretSource | None) -> str:
    """How a report names where a password comes from: ``env CRM_DB_PASS``, ``file /path``,
    ``a command (cmd:…)``; never the command line or the value."""
    if secret is None:
        return "no password"
    kind, _, ref = secret.spec.partition(":")
    return "a command (cmd:…)" if kind == "cmd" else f"{kind} {ref}"


def _credential_refused(
    exc: EngineError,
    refusals: tuple[str, ...],
    where: str,
    password: SecretSource | None,
    user: str | None,
) -> EngineError:
    """``exc``, restated to name the password's source when the server refused the login."""
    if not any(words in exc.message for words in refusals):
        return exc
    said = exc.message.removeprefix(f"{where}: ")
    as_user = f" for user {user!r}" if user else ""
    if password is None:
        what = f"login{as_user} refused with no password configured"
        hint = "add 'password: env:NAME' (or file:, cmd:) to the inventory entry"
    else:
        what = f"password from {source_phrase(password)} refused{as_user}"
        hint = "check the password that source gives" + (
            f", and that user {user!r} may log in on the server" if user else ""
        )
    return EngineError(f"{where}: {what}: {said}", hint=hint, retryable=False)


def _repository_probe(cfg: RepositorySettings, timeout: float) -> Callable[[TransportPool], str]:
    def probe(pool: TransportPool) -> str:
        from crmmaint.repository import Repository
        from crmmaint.repository.configured import (
            backend_for,
            check_keys,
            identities_for,
            load_write_key,
        )

        backend = backend_for(cfg)
        try:
            backend.open()  # the location exists (never created here)
            check_keys(cfg)  # write key 0600 and well formed, recipients, identity among them
            repo = Repository.open(backend, load_write_key(cfg.write_key or ""))
            ids = repo.backup_ids()
            said = f"{cfg.url}: config authenticated by the write key, {plural(len(ids), 'backup')}"
            if ids and (cfg.identity or cfg.passphrase is not None):
                repo.manifest(ids[-1], identities_for(cfg))  # unwraps that backup's data key
                said += ", identity opens the newest"
            return said
        finally:
            backend.close()

    return probe


# --- running them ---------------------------------------------------------------------------


def reach_all(
    inv: Inventory, *, workers: int = 10, factory: TransportFactory | None = None
) -> list[Reach]:
    """Check every host, database, cache and repository of ``inv``, at most ``workers`` at a
    time, and return one ``Reach`` each in listing order. Never raises for an item: its error
    becomes its line (an unexpected one too, with exit code 70). ``factory`` makes the hosts'
    transports (default: local or SSH as the inventory says)."""
    return _Checks(plan(inv), workers).run(factory)


class _Checks:
    """The items of one check, each in its own daemon thread once one of ``workers`` slots is
    free. An item past its guard is reported failed and gives up its slot, so one that hangs
    holds up neither the items waiting nor the exit."""

    #: Seconds between looks at the items under way.
    POLL = 0.05

    def __init__(self, items: list[_Item], workers: int) -> None:
        self.items = items
        self.slots = threading.Semaphore(max(1, workers))
        self.lock = threading.Lock()
        self.started: list[float | None] = [None] * len(items)
        self.results: list[Reach | None] = [None] * len(items)

    def run(self, factory: TransportFactory | None) -> list[Reach]:
        with TransportPool(factory) as pool:
            for index, item in enumerate(self.items):
                threading.Thread(
                    target=self._run_one,
                    args=(index, pool),
                    name=f"reach {item.kind} {item.name}",
                    daemon=True,
                ).start()
            while not all(self.results):
                time.sleep(self.POLL)
                self._expire()
        return [r for r in self.results if r is not None]

    def _finish(self, index: int, found: Reach) -> None:
        """Record ``found`` unless the item was already reported, and free its slot once."""
        with self.lock:
            if self.results[index] is None:
                self.results[index] = found
                self.slots.release()

    def _expire(self) -> None:
        now = time.monotonic()
        for index, item in enumerate(self.items):
            began = self.started[index]
            guard = guard_seconds(item.timeout)
            if self.results[index] is None and began is not None and now - began > guard:
                self._finish(index, item.no_answer(guard, now - began))

    @staticmethod
    def _failed(item: _Item, exc: CrmMaintError, seconds: float) -> Reach:
        """The line of an item whose probe raised ``exc``; a probe's command that ran out of
        time is said as no answer (its message would show the probe's command and a
        playbook step's remedy)."""
        if isinstance(exc, CommandTimeout) or isinstance(exc.__cause__, CommandTimeout):
            return item.no_answer(item.timeout, seconds)
        return Reach(
            item.kind,
            item.name,
            False,
            _one_line(exc.message),
            hint=exc.hint,
            exit_code=exc.exit_code,
            seconds=seconds,
        )

    def _run_one(self, index: int, pool: TransportPool) -> None:
        item = self.items[index]
        self.slots.acquire()
        started = self.started[index] = time.monotonic()
        try:
            detail = item.probe(pool)
            found = Reach(item.kind, item.name, True, detail, seconds=time.monotonic() - started)
        except CrmMaintError as exc:
            found = self._failed(item, exc, time.monotonic() - started)
        except Exception as exc:  # a bug: this item's line says so, the others go on
            log.debug("checking %s %s failed", item.kind, item.name, exc_info=True)
            found = Reach(
                item.kind,
                item.name,
                False,
                f"internal error: {exc!r} (run again with --debug and report it)",
                exit_code=INTERNAL_ERROR_EXIT,
                seconds=time.monotonic() - started,
            )
        self._finish(index, found)


def _one_line(text: str) -> str:
    return " ".join(text.split())
