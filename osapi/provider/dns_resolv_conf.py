"""DNS through a resolv.conf file (``job.worker.dns.resolv_conf``), for hosts
without systemd-resolved.

The file is host-wide: glibc has no per-interface name servers. The interface
named in a request must exist (so a typo fails the same way on every provider),
but the answer and the change apply to the whole host.

Reading follows glibc's parser (resolv.conf(5)): a keyword counts only at the
start of a line; ``#`` and ``;`` start a comment line; ``search`` and ``domain``
are the same setting and the last such line wins (``domain x`` means
``search x``); a ``nameserver`` whose address does not parse is ignored.

Rewriting changes only what was asked for and keeps every other line, comment
and blank line in place and in order:

- servers: every ``nameserver`` line goes; the new ones take the place of the
  first old one (at the end of the file if there was none).
- search domains: every ``search`` and ``domain`` line goes (a leftover
  ``domain`` line after our ``search`` would override it); one ``search`` line
  takes the place of the first old one, else goes before the first
  ``nameserver``, else at the end. An empty list leaves no search line.

When the file already says what was asked, nothing is written and the result is
``{"changed": false}``. Otherwise the new text goes to a temp file in the same
directory, gets the old file's mode (and owner, when running as root), is
fsynced and renamed over the old one, and the directory is fsynced: a reader
sees the old file or the new one, never a mix, and any error leaves the old
file as it was with no temp file behind. A symlinked resolv.conf (such as
``/etc/resolv.conf -> ../run/resolvconf/resolv.conf``) is written through: the
link stays, its target is replaced. A resolv.conf that is itself a mount point
(Docker and Kubernetes bind-mount it into containers) cannot be renamed over
(EBUSY); then, and only then, the already fsynced new text is copied into the
file in place with one write — still never a half-written file on any error
before that point, but a concurrent reader could in theory see the rewrite.

Two updates at once (several jobs in one worker, several workers on one host)
would lose one of them in the read-modify-write: each update holds an exclusive
flock(2) on the file's directory while it reads, compares and writes. Locking
the directory needs no extra lock file; readers are not blocked.

glibc reads at most 3 name servers (MAXNS); asking for more is refused rather
than silently ignored.

A dry run reads the file (without the lock: it writes nothing) and answers what
glibc reads now and would read from the rewritten text; the file is not opened
for writing, so its bytes and mtime stay as they were.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import stat
import tempfile

from osapi.domain.operations import check_hostname, check_ip
from osapi.provider import ProviderError, checked_word

MAXNS = 3


def check_values(servers: list[str] | None, domains: list[str] | None) -> tuple[list[str] | None, list[str] | None]:
    """Servers as IP addresses, domains as hostnames, each one word: a newline or blank
    in a value would add lines or words to the file (defence in depth; see ``check_word``)."""
    if servers is not None:
        servers = [checked_word(check_ip, s, f"servers[{i}]") for i, s in enumerate(servers)]
    if domains is not None:
        domains = [checked_word(check_hostname, d, f"search_domains[{i}]") for i, d in enumerate(domains)]
    return servers, domains


def _is_comment(line: str) -> bool:
    return line.startswith(("#", ";"))


def _keyword(line: str) -> tuple[str, list[str]]:
    """glibc-style: the keyword must start the line and be followed by blanks."""
    if not line or line[0].isspace() or _is_comment(line):
        return "", []
    words = line.split()
    args = []
    for word in words[1:]:
        if word.startswith(("#", ";")):
            break
        args.append(word)
    return words[0], args


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse(text: str) -> tuple[list[str], list[str]]:
    """``(servers, search_domains)`` as glibc would read them."""
    servers: list[str] = []
    domains: list[str] = []
    for line in text.splitlines():
        key, args = _keyword(line)
        if key == "nameserver" and args:
            address = _ip(args[0])
            if address is not None:
                servers.append(address)
        elif key == "search":
            domains = [d.rstrip(".") for d in args]
        elif key == "domain" and args:
            domains = [args[0].rstrip(".")]
    return servers, domains


def render(text: str, servers: list[str] | None = None, domains: list[str] | None = None) -> str:
    """``text`` with its nameserver and/or search lines replaced (None = keep)."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    out: list[str | None] = []  # None marks where removed lines were
    first_ns = first_search = None
    for line in lines:
        key, _args = _keyword(line.rstrip("\r\n"))
        if servers is not None and key == "nameserver":
            if first_ns is None:
                first_ns = len(out)
                out.append(None)
            continue
        if domains is not None and key in ("search", "domain"):
            if first_search is None:
                first_search = len(out)
                out.append(None)
            continue
        if key == "nameserver" and first_ns is None and servers is None:
            first_ns = len(out)  # an existing server line: new search goes before it
        out.append(line)

    ns_lines = [f"nameserver {s}\n" for s in servers] if servers is not None else []
    search_lines = [f"search {' '.join(domains)}\n"] if domains else []

    result: list[str] = []
    ns_placed = servers is None
    search_placed = domains is None
    for index, line in enumerate(out):
        if index == first_search and not search_placed:
            result.extend(search_lines)
            search_placed = True
        if index == first_ns:
            if not search_placed and first_search is None:  # no old search line: before the servers
                result.extend(search_lines)
                search_placed = True
            if not ns_placed:
                result.extend(ns_lines)
                ns_placed = True
        if line is not None:
            result.append(line)
    if not search_placed:
        result.extend(search_lines)
    if not ns_placed:
        result.extend(ns_lines)
    return "".join(result)


# ---------------------------------------------------------------- writing


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rewrite_in_place(path: str, data: bytes) -> None:
    """For a file that is a mount point: overwrite it, cut it to length, fsync."""
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, text: str) -> None:
    """Replace the file at ``path`` (through symlinks) with ``text``; see the module doc."""
    target = os.path.realpath(path)
    directory = os.path.dirname(target) or "."
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", target)
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o644
    data = text.encode("utf-8", "surrogateescape")

    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.osapi-", dir=directory)
    try:
        try:
            if st is not None and os.geteuid() == 0:
                os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, mode)
            view = memoryview(data)
            offset = 0
            while offset < len(data):
                offset += os.write(fd, view[offset:])
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            _rewrite_in_place(target, data)  # target is a mount point (bind-mounted file)
            os.unlink(tmp)
        _fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextlib.contextmanager
def _directory_lock(path: str):
    """Exclusive flock on the directory of ``path``'s target, if it can be opened."""
    directory = os.path.dirname(os.path.realpath(path)) or "."
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield  # cannot open the directory: writing there will fail with a clear error anyway
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------- the provider


class ResolvConfProvider:
    """Reads and rewrites one resolv.conf file."""

    name = "resolv_conf"

    def __init__(self, path: str):
        self.path = path

    def _read(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise ProviderError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def get(self, interface: str) -> dict:
        servers, domains = parse(self._read())
        return {"servers": servers, "search_domains": domains}

    def update(self, interface: str, servers: list[str] | None, domains: list[str] | None,
               dry_run: bool = False) -> dict:
        servers, domains = check_values(servers, domains)
        if servers is not None and len(servers) > MAXNS:
            raise ProviderError(
                f"{self.path} can hold at most {MAXNS} name servers (glibc reads no more); "
                f"got {len(servers)}: {', '.join(servers)}"
            )
        if dry_run:
            text = self._read()
            before = parse(text)
            after = parse(render(text, servers, domains)) if self._differs(before, servers, domains) else before
            return dry_run_result(before, after)
        with _directory_lock(self.path):
            return self._update_locked(servers, domains)

    @staticmethod
    def _differs(old: tuple[list[str], list[str]], servers: list[str] | None, domains: list[str] | None) -> bool:
        """Whether the asked values differ from ``old`` (``(servers, domains)`` as read)."""
        want_servers = old[0] if servers is None else servers
        want_domains = old[1] if domains is None else [d.rstrip(".") for d in domains]
        return (want_servers, want_domains) != old

    def _update_locked(self, servers: list[str] | None, domains: list[str] | None) -> dict:
        text = self._read()
        if not self._differs(parse(text), servers, domains):
            return {"changed": False}
        new_text = render(text, servers, domains)
        try:
            write_atomically(self.path, new_text)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            where = exc.filename or self.path
            raise ProviderError(f"cannot write {self.path}: {reason} ({where}); the file was left unchanged") from None
        return {"changed": True}


def dry_run_result(before: tuple[list[str], list[str]], after: tuple[list[str], list[str]]) -> dict:
    """The answer of a dry run: ``(servers, search_domains)`` now and as the update would leave them."""
    return {
        "changed": before != after,
        "dry_run": True,
        "before": {"servers": list(before[0]), "search_domains": list(before[1])},
        "after": {"servers": list(after[0]), "search_domains": list(after[1])},
    }
