"""File sets: a POSIX tar stream made with tar on the owning host, restored into a new directory.

The dump's facts (per-file sha256 and size) are computed from the tar stream itself as it
passes, so they describe exactly what the backup holds, including files that changed while tar
read them. A restore's checksums are computed on the host from the extracted files.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from crmmaint.engines.base import (
    DumpStream,
    Facts,
    NewTarget,
    Reader,
    RestoreRequest,
    RestoreRoutine,
    closing_dump,
    feed,
    transport_failure,
)
from crmmaint.engines.base import compare_checksums as compare_checksums  # its former home
from crmmaint.errors import (
    FORCE,
    CommandTimeout,
    EngineError,
    RestoreError,
    TransportError,
)
from crmmaint.inventory import FileSet
from crmmaint.transport.base import CommandResult, Transport

log = logging.getLogger(__name__)

BLOCK = 512

# Each argument (an absolute path) as a NUL-terminated record: M (missing, a dangling link
# too), D (a link to a directory), F (a link to anything else, followed by its resolved
# target), P (a path to read as it is).
_ROOTS = r"""
for p; do
  if [ -L "$p" ]; then
    if [ -d "$p" ]; then printf 'D%s\0' "$p"
    elif [ -e "$p" ]; then printf 'F%s\0' "$p"; readlink -fz -- "$p"
    else printf 'M%s\0' "$p"; fi
  elif [ -e "$p" ]; then printf 'P%s\0' "$p"
  else printf 'M%s\0' "$p"; fi
done
"""
#: Separates the parts of a tar ``--transform`` expression: a byte no real path holds.
_DELIM = "\x1f"
#: tar's messages kept as warnings when it exits 1 ("some files differ"), at most this many.
MAX_TAR_WARNINGS = 50


@dataclass(frozen=True)
class Root:
    """One configured path of a file set as found on its host: ``kind`` is ``path`` (read as it
    is), ``directory link`` or ``file link`` (followed; ``target`` is the file's real path)."""

    path: str
    kind: str
    target: str | None = None


def _rename(target: str, path: str) -> str:
    """A tar ``--transform`` that stores the file read at ``target`` under ``path``."""
    if _DELIM in target or _DELIM in path:
        raise EngineError(f"file set path {path!r} holds a control character tar cannot rename")
    literal = re.sub(r"([\\.\[\]*^$])", r"\\\1", "./" + target.lstrip("/"))
    replacement = ("./" + path.lstrip("/")).replace("\\", "\\\\").replace("&", "\\&")
    return f"--transform=s{_DELIM}^{literal}${_DELIM}{replacement}{_DELIM}S"


def tar_differences(result: CommandResult) -> list[str] | None:
    """What tar's exit status 1 ("some files differ": changed or vanished while read) reported,
    one entry per message line, at most ``MAX_TAR_WARNINGS`` (then a count of the rest); None
    for any other status, which stays a failure."""
    if result.exit_status != 1:
        return None
    text = result.stderr.decode("utf-8", "replace")
    lines = [line.removeprefix("tar: ").strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ["tar reported that some files differ (exit 1) without naming them"]
    if len(lines) > MAX_TAR_WARNINGS:
        rest = len(lines) - MAX_TAR_WARNINGS
        lines = [*lines[:MAX_TAR_WARNINGS], f"and {rest} more"]
    return lines


def root_totals(roots: list[str], files: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Files and bytes below each configured root (a file below two roots counts for both)."""
    totals = {root: {"files": 0, "bytes": 0} for root in roots}
    for root in roots:
        prefix = root.rstrip("/") + "/"
        for path, info in files.items():
            if path == root or path.startswith(prefix) or root == "/":
                totals[root]["files"] += 1
                totals[root]["bytes"] += int(info["size"])
    return totals


# $1 = target: make and print a new private directory beside it, for a restore with force.
_STAGE = 'umask 077; mktemp -d "$(dirname -- "$1")/.$(basename -- "$1").crmmaint-restore.XXXXXXXX"'
# $1 = complete staging directory, $2 = target: the staging directory takes the target's place,
# the old content is removed once it is out of the way.
_SWAP = (
    'set -e; old=$(mktemp -d "$2.crmmaint-old.XXXXXXXX"); mv -- "$2" "$old/t"; '
    'mv -- "$1" "$2"; rm -rf -- "$old"'
)
# $1 = directory: prints new (absent), empty, busy (holds something) or other (not a directory).
_TARGET_STATE = (
    'if [ ! -e "$1" ] && [ ! -L "$1" ]; then echo new; elif [ -d "$1" ] && [ ! -L "$1" ]; then '
    'if [ -n "$(ls -A -- "$1")" ]; then echo busy; else echo empty; fi; else echo other; fi'
)
# $1 = directory to restore into, its parent made: makes it (0700: the archive's paths below it
# come with their own modes, but the folders above them, which the archive does not hold, are
# made world-readable, and a private folder's files must not become readable through them) and
# prints new, or prints empty when an (empty) directory is already there.
_MAKE_TARGET = (
    'if [ -d "$1" ] && [ ! -L "$1" ]; then echo empty; else mkdir -m 700 -- "$1" && echo new; fi'
)
# $1 = directory: every regular file below it as "size<TAB>./path<NUL>", then their sha256sums
# (NUL-terminated with -z, GNU coreutils 8.27+) after a lone NUL separator.
_CHECKSUMS = (
    'cd "$1" && find . -type f -printf "%s\\t%m\\t%p\\0" && printf "\\0" && '
    'find . -type f -print0 | xargs -0 -r sha256sum -z && printf "\\0" && '
    'find . -type l -printf "%l\\t%p\\0"'
)


def _octal_mode(field: bytes) -> str:
    """A tar header's mode field as ``find -printf %m`` prints it: the permission bits in
    octal without leading zeros (``b"0000644\\0"`` -> ``"644"``); ``""`` when unreadable."""
    try:
        return format(int(field.strip(b" \0") or b"0", 8) & 0o7777, "o")
    except ValueError:
        return ""


def _member_path(name: str) -> str:
    """A tar member name (``./etc/x``, ``etc/x``, ``./srv/link/./x`` read through a linked
    root) as the absolute path it came from."""
    return posixpath.normpath("/" + name.lstrip("/")).replace("//", "/", 1)


class TarDigest:
    """Per-file sha256 and size of a tar stream (ustar, pax or GNU), fed chunk by chunk."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        #: Symbolic links: path -> target, as the archive holds them.
        self.links: dict[str, str] = {}
        self._mode = ""
        self._leftover = b""
        self._state = "header"
        self._remaining = 0
        self._pad = 0
        self._pax: dict[str, str] = {}
        self._pax_data = bytearray()
        self._pax_kind = b""
        self._member: str | None = None
        self._hasher: Any = None
        self._size = 0
        self.ended = False

    def feed(self, chunk: bytes) -> None:
        data = self._leftover + chunk if self._leftover else chunk
        self._leftover = b""
        pos, end = 0, len(data)
        while pos < end:
            if self._state == "header":
                if end - pos < BLOCK:
                    self._leftover = data[pos:]
                    return
                self._header(data[pos : pos + BLOCK])
                pos += BLOCK
            elif self._state == "pad":
                n = min(self._pad, end - pos)
                self._pad -= n
                pos += n
                if not self._pad:
                    self._state = "header"
            else:
                n = min(self._remaining, end - pos)
                piece = data[pos : pos + n]
                if self._state == "data":
                    self._hasher.update(piece)
                elif self._state == "pax":
                    self._pax_data += piece
                self._remaining -= n
                pos += n
                if not self._remaining:
                    self._end_member()

    def _header(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self.ended = True
            return
        field = block[124:136]
        if field[0] & 0x80:
            size = int.from_bytes(field[1:], "big")
        else:
            size = int(field.strip(b" \0") or b"0", 8)
        kind = block[156:157]
        name = block[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if prefix and block[257:262] == b"ustar":
            name = f"{prefix}/{name}"
        linkname = block[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if kind not in (b"x", b"g", b"L", b"K"):
            name = self._pax.get("path", name)
            linkname = self._pax.get("linkpath", linkname)
            size = int(self._pax.get("size", size))
            self._pax = {}
        self._remaining, self._pad = size, (-size) % BLOCK
        if kind in (b"x", b"g", b"L", b"K"):
            self._state, self._pax_data, self._pax_kind = "pax", bytearray(), kind
        elif kind in (b"0", b"\0", b"7"):
            self._state, self._member, self._hasher = "data", _member_path(name), hashlib.sha256()
            self._size = size
            self._mode = _octal_mode(block[100:108])
        else:
            if kind == b"1" and _member_path(linkname) in self.files:  # hard link: same content
                self.files[_member_path(name)] = dict(self.files[_member_path(linkname)])
            elif kind == b"2":
                self.links[_member_path(name)] = linkname
            self._state, self._member = "skip", None
        if not size:
            self._end_member()

    def _end_member(self) -> None:
        if self._state == "data":
            self.files[self._member] = {
                "sha256": self._hasher.hexdigest(),
                "size": self._size,
                "mode": self._mode,
            }
        elif self._state == "pax":
            if self._pax_kind == b"x":
                self._pax.update(_parse_pax(bytes(self._pax_data)))
            elif self._pax_kind in (b"L", b"K"):  # GNU long name / long link name
                value = bytes(self._pax_data).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                self._pax["path" if self._pax_kind == b"L" else "linkpath"] = value
        self._state = "pad" if self._pad else "header"


def _parse_pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


class _DigestingReader:
    """Passes a reader through while a ``TarDigest`` watches the bytes."""

    def __init__(self, stream: Reader) -> None:
        self.stream = stream
        self.digest = TarDigest()

    def read(self, size: int = 1 << 20) -> bytes:
        data = self.stream.read(size)
        self.digest.feed(data)
        return data


@dataclass(kw_only=True)
class FilesRestoreTarget(NewTarget):
    """A directory a restore extracts into: ``work`` is where tar writes (the target, or with
    force a staging directory beside it), ``state`` whether the restore made it (``new``) or
    found it ``empty``."""

    work: str
    state: str


class FileSetSource(RestoreRoutine[FilesRestoreTarget]):
    """A file set from the inventory, read and restored with tar on its host."""

    def __init__(self, fileset: FileSet, transport: Transport) -> None:
        self.fileset = fileset
        self.transport = transport

    @property
    def where(self) -> str:
        return f"file set {self.fileset.name!r} on host {self.transport.host}"

    def error(
        self, what: str, *, hint: str | None = None, retryable: bool | None = None
    ) -> EngineError:
        return EngineError(f"{self.where}: {what}", hint=hint, retryable=retryable)

    def roots(self, *, timeout: float = 60.0) -> list[Root]:
        """How each configured path is read: as it is, or, when it is a symlink, what it points
        to (a configured root is what the user means; links inside the tree stay links).

        Raises a non-retryable ``EngineError`` naming every path that does not exist (a
        dangling link included).
        """
        for path in self.fileset.paths:
            if not path.startswith("/"):
                raise self.error(f"path {path!r} is not absolute")
        command = ["sh", "-c", _ROOTS, "sh", *self.fileset.paths]
        try:
            result = self.transport.run(command, timeout=timeout)
        except TransportError as exc:
            raise transport_failure(exc, f"{self.where}: checking the paths") from exc
        if not result.ok:
            raise self.error(f"checking the paths failed: {result.stderr_tail()}")
        fields = result.stdout.decode("utf-8", "surrogateescape").split("\0")
        found: dict[str, Root] = {}
        missing: list[str] = []
        position = 0
        while position < len(fields) - 1:
            record = fields[position]
            kind, path = record[:1], record[1:]
            position += 1
            if kind == "M":
                missing.append(path)
            elif kind == "D":
                found[path] = Root(path, "directory link")
            elif kind == "F":
                found[path] = Root(path, "file link", target=fields[position])
                position += 1
        if missing:
            raise self.error(
                f"{'path' if len(missing) == 1 else 'paths'} {', '.join(missing)} "
                f"{'does' if len(missing) == 1 else 'do'} not exist",
                hint="fix the file set's paths in the inventory, or restore what is missing",
                retryable=False,
            )
        return [found.get(path, Root(path, "path")) for path in self.fileset.paths]

    def tar_command(self, roots: list[Root] | None = None) -> list[str]:
        """``tar`` reading the file set relative to ``/`` (paths and excludes are argv items).

        ``roots`` (from ``roots()``) says which configured paths are symlinks to follow;
        without it every path is archived as it is.
        """
        # atime and ctime change without the content (relatime updates atime on a read once a
        # day): left in the pax headers they would make every header new and defeat dedup.
        command = ["tar", "-cf", "-", "--format=posix", "--pax-option=delete=atime,delete=ctime"]
        command += ["--sparse", "-C", "/"]
        command += [f"--exclude={pattern}" for pattern in self.fileset.exclude]
        if roots is None:
            roots = [Root(path, "path") for path in self.fileset.paths]
        for root in roots:
            if not root.path.startswith("/"):
                raise self.error(f"path {root.path!r} is not absolute")
        # A linked file is read at its target and renamed back to the configured path.
        command += [_rename(r.target, r.path) for r in roots if r.kind == "file link" and r.target]
        for root in roots:
            relative = "./" + root.path.lstrip("/")
            if root.kind == "directory link":
                relative += "/."  # through the link: tar reads the directory it points to
            elif root.kind == "file link" and root.target:
                relative = "./" + root.target.lstrip("/")
            command.append(relative)
        return command

    @contextlib.contextmanager
    def dump(self, *, timeout: float | None = None) -> Iterator[DumpStream]:
        """A tar stream of the file set; facts: files, bytes and per-file sha256 from the stream."""
        digest = TarDigest()

        def complete(facts: Facts) -> None:
            if not digest.ended:
                raise self.error("the tar stream ended without its end-of-archive marker")
            facts["checksums"] = dict(sorted(digest.files.items()))
            facts["links"] = dict(sorted(digest.links.items()))
            facts["files"] = len(digest.files)
            facts["file_bytes"] = sum(f["size"] for f in digest.files.values())
            facts["roots"] = root_totals(list(self.fileset.paths), digest.files)

        facts = {"engine": "files", "format": "tar-posix", "paths": list(self.fileset.paths)}
        roots = self.roots()
        if followed := [r.path for r in roots if r.kind != "path"]:
            facts["followed_links"] = followed
        try:
            with self.transport.start(self.tar_command(roots), stdout="stream") as proc:
                stream = DumpStream(
                    proc,
                    describe=self.error,
                    facts=facts,
                    observe=digest.feed,
                    complete=complete,
                    timeout=timeout,
                    tolerate=tar_differences,
                )
                with closing_dump(stream):
                    yield stream
        except TransportError as exc:
            raise transport_failure(exc, f"{self.where}: tar") from exc

    def restore(
        self,
        stream: Reader,
        target_dir: str,
        force: bool = False,
        *,
        timeout: float | None = None,
    ) -> Facts:
        """Extract a tar stream into ``target_dir`` (new, or empty, or ``force``).

        Returns checksums of the restored files, keyed by their original absolute paths.
        With ``force`` a directory that holds something is replaced: the archive is extracted
        into a new directory beside it, which then takes its place (extracting over it would
        write through symlinks already there, to anywhere they point). A restore that fails
        leaves the target as it was: what was extracted is removed. ``timeout`` bounds the
        extraction (seconds). Raises ``RestoreError`` for an unusable target (not absolute,
        ``/``, not a directory), ``RestoreTargetExists`` for one that holds something without
        ``force``, ``EngineError`` for a target that is or holds one of the file set's own
        paths, or when extraction fails (``RestoreRoutine.run_restore``).
        """
        return self.run_restore(RestoreRequest(stream, target_dir, force=force, timeout=timeout))

    # --- restore hooks: a new directory, or a staged one swapped in (force) -------------------

    target_noun = "directory"
    target_exists_hint = f"it holds files: choose a new directory, or replace it with {FORCE}"

    def shown(self, target: str) -> str:
        return target

    def restore_target(self, name: str) -> str:
        """An absolute path other than ``/``, normalised (``/.`` and ``/tmp/..`` are ``/``)."""
        target = name
        if target.startswith("/"):
            target = posixpath.normpath(target).replace("//", "/", 1)
        if not target.startswith("/") or target == "/":
            raise RestoreError(
                f"{self.where}: restore target {name!r} must be an absolute path other than /",
                hint="name a new directory, e.g. --to /srv/restore/attachments",
            )
        return target

    def is_source(self, target: str) -> bool:
        """The target is one of the file set's paths, or holds one, or is a directory inside
        one that holds files (a forced restore would replace part of the source). A new or
        empty directory inside a path may be used: a file set of ``/`` restores somewhere."""
        for path in self.fileset.paths:
            root = posixpath.normpath(path).replace("//", "/", 1)
            if root == target or root.startswith(target.rstrip("/") + "/"):
                return True
            if target.startswith(root.rstrip("/") + "/") and self.target_exists(target):
                return True
        return False

    def target_exists(self, target: str) -> bool:
        """Whether the directory holds something (an empty one is used as it is); anything
        but a directory raises ``RestoreError``."""
        state = self.transport.run(["sh", "-c", _TARGET_STATE, "sh", target], timeout=60)
        found = state.text.strip()
        if found not in ("new", "empty", "busy"):
            raise RestoreError(
                f"{self.where}: restore target {target} is not a directory",
                hint="name a new directory",
            )
        return found == "busy"

    def create_target(
        self, target: str, request: RestoreRequest, *, replacing: bool
    ) -> FilesRestoreTarget:
        """The directory (and its parents), or with force a new private directory beside the
        old one, which takes its place once the extraction is complete."""
        parent = self.transport.run(["mkdir", "-p", "--", posixpath.dirname(target)], timeout=60)
        if not parent.ok:
            raise self._unusable(target, f"mkdir -p {posixpath.dirname(target)}", parent)
        if replacing:
            staged = self.transport.run(["sh", "-c", _STAGE, "sh", target], timeout=60)
            work = staged.text.strip()
            if not staged.ok or not work.startswith(posixpath.dirname(target) + "/"):
                raise self._unusable(target, "a staging directory beside it", staged)
            return FilesRestoreTarget(target, work=work, state="new")
        made = self.transport.run(["sh", "-c", _MAKE_TARGET, "sh", target], timeout=60)
        state = made.text.strip()
        if not made.ok or state not in ("new", "empty"):
            raise self._unusable(target, f"mkdir {target}", made)
        return FilesRestoreTarget(target, work=target, state=state)

    def _unusable(self, target: str, what: str, result: CommandResult) -> RestoreError:
        """A restore target directory that cannot be made (exit 6, as a target in use)."""
        return RestoreError(
            f"{self.where}: restore target {target} cannot be made: {what} failed: "
            f"{result.stderr_tail() or f'exit {result.exit_status}'}",
            hint="name a directory on a writable filesystem that crmmaint's user may create",
        )

    def load_target(self, made: FilesRestoreTarget, request: RestoreRequest) -> int:
        """Extract the whole stream (``_extract``), then swap a staged directory in."""
        size = self._extract(request.stream, made.work, timeout=request.timeout)
        if made.work != made.name:
            self._run(["sh", "-c", _SWAP, "sh", made.work, made.name], what="replacing the target")
        return size

    def discard_target(self, made: FilesRestoreTarget) -> None:
        self._discard(made.work, made.state)

    def restored_facts(self, made: FilesRestoreTarget, request: RestoreRequest) -> Facts:
        """Checksums, modes and link targets of the restored files, read on the host."""
        checksums, links = self.tree(made.name, timeout=request.timeout)
        return {
            "checksums": checksums,
            "links": links,
            "files": len(checksums),
            "file_bytes": sum(f["size"] for f in checksums.values()),
            "path": made.name,
        }

    def remove_scratch(self, target_dir: str, *, quietly: bool = False) -> None:
        """Remove a directory a drill restored into (``rm -rf``, never following links out
        of it); ``quietly``: a failure is logged, not raised (``EngineError``)."""
        try:
            self._run(["rm", "-rf", "--", target_dir], what=f"removing {target_dir}")
        except EngineError as exc:
            if not quietly:
                raise
            log.warning("could not remove the drill's copy in %s: %s", target_dir, exc)

    def _discard(self, target_dir: str, state: str) -> None:
        """Remove what a failed restore extracted: the directory it made, or what it put into
        an empty one."""
        script = 'rm -rf -- "$1"' if state == "new" else 'find "$1" -mindepth 1 -delete'
        try:
            self._run(["sh", "-c", script, "sh", target_dir], what="removing the partial restore")
            log.info("removed the partial restore in %s", target_dir)
        except EngineError as exc:
            log.warning("could not remove the partial restore in %s: %s", target_dir, exc)

    def _extract(self, stream: Reader, target_dir: str, *, timeout: float | None) -> int:
        """Extract the whole stream into ``target_dir``; returns the bytes fed to tar."""
        # -p: modes as the archive has them, whoever restores (not less the umask)
        command = ["tar", "-xpf", "-", "-C", target_dir]
        checked = _DigestingReader(stream)
        try:
            with self.transport.start(command, stdout="collect") as proc:
                if timeout is not None:
                    proc.set_timeout(timeout)
                size, problem = feed(checked, proc)
                result = proc.wait(timeout=timeout)
        except CommandTimeout as exc:
            raise self.error(f"restore timed out after {timeout}s") from exc
        except TransportError as exc:
            raise transport_failure(exc, f"{self.where}: tar -x") from exc
        if not result.ok or problem:
            raise self.error(
                f"extracting into {target_dir} failed: {problem or ''} {result.stderr_tail()}".strip()
            )
        if not checked.digest.ended:
            # GNU tar accepts an archive cut at a member boundary; the end marker proves it whole.
            raise self.error(
                f"the restore stream into {target_dir} is truncated (no end-of-archive marker)"
            )
        return size

    def checksums(self, directory: str, *, timeout: float | None = None) -> dict[str, dict]:
        """sha256, size and mode of every regular file under ``directory`` (``tree``)."""
        return self.tree(directory, timeout=timeout)[0]

    def tree(
        self, directory: str, *, timeout: float | None = None
    ) -> tuple[dict[str, dict], dict[str, str]]:
        """``(files, links)`` under ``directory``, read on the host: every regular file's
        sha256, size and mode (permission bits in octal, as ``find -printf %m``), and every
        symbolic link's target. Keys are paths relative to ``directory``, written as absolute
        (``/etc/crm/app.conf``). Raises ``EngineError`` (or the transport's error)."""
        sizes: dict[str, int] = {}
        modes: dict[str, str] = {}
        sums: dict[str, str] = {}
        links: dict[str, str] = {}
        pending = b""
        section = 0
        try:
            with self.transport.start(
                ["sh", "-c", _CHECKSUMS, "sh", directory], stdout="stream"
            ) as proc:
                if timeout is not None:
                    proc.set_timeout(timeout)
                while chunk := proc.read():
                    records = (pending + chunk).split(b"\0")
                    pending = records.pop()
                    for record in records:
                        if not record:
                            section += 1
                        elif section == 0:
                            size, _, rest = record.partition(b"\t")
                            mode, _, name = rest.partition(b"\t")
                            path = _member_path(name.decode("utf-8", "surrogateescape"))
                            sizes[path], modes[path] = int(size), mode.decode()
                        elif section == 1:
                            digest, _, name = record.partition(b"  ")
                            sums[_member_path(name.decode("utf-8", "surrogateescape"))] = (
                                digest.decode()
                            )
                        else:  # a link's target may hold a tab: the path is after the last
                            target, _, name = record.rpartition(b"\t")
                            links[_member_path(name.decode("utf-8", "surrogateescape"))] = (
                                target.decode("utf-8", "surrogateescape")
                            )
                result = proc.wait()
        except TransportError as exc:
            raise transport_failure(exc, f"{self.where}: checksums of {directory}") from exc
        if not result.ok:
            raise self.error(f"checksums of {directory} failed: {result.stderr_tail()}")
        files = {
            path: {"sha256": sums.get(path, ""), "size": sizes[path], "mode": modes[path]}
            for path in sorted(sizes)
        }
        return files, dict(sorted(links.items()))

    def _run(self, command: list[str], *, what: str) -> None:
        try:
            result = self.transport.run(command, timeout=60)
        except TransportError as exc:
            raise transport_failure(exc, f"{self.where}: {what}") from exc
        if not result.ok:
            raise self.error(f"{what} failed: {result.stderr_tail()}")
