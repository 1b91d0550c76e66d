"""TLS for NATS (README "TLS"): the server's certificate files, the clients' CA.

``nats.server.tls.enabled``: nats-server requires TLS from clients and routes
(``natsd.tls_block``). Its certificate is ``nats.server.tls.cert_file`` +
``key_file`` (+ ``ca_file`` for routes), or, when those are empty, generated
once into ``<state_dir>/secrets/`` by ``ensure_generated``:

* ``ca.key`` + ``ca.pem``: a CA made on first use and never made again over an
  existing one (the control-plane nodes of a cluster share it: the operator
  copies ``secrets/`` from the first node to the others);
* ``server.key`` + ``server.pem``: the server certificate, signed by that CA,
  valid for the node's listen addresses (``nats.server.host``,
  ``nats.server.cluster.host``; every local address when one listens on
  0.0.0.0 or ::), 127.0.0.1, ::1, ``localhost`` and the hostname. It is issued
  again from the same CA (same key) when it no longer covers them, no longer
  verifies against ``ca.pem``, or expires within ``RENEW_BEFORE``.

Generation runs the ``openssl`` command (the pyz needs nothing but python3's
standard library); without it, ``ConfigError`` (exit 2) names the package and
the keys that avoid it. Files are written the way ``osapi supervise`` writes
every secret (``process.create_secret``: mode 0600, never over an existing
file), under an exclusive lock (``secrets/.tls.lock``) so two starts at once
agree on one CA; the state dir is checked first (``config.check_state_dir``).

Clients (``client_ca``) trust ``nats.tls.ca`` (PEM text or a file), else
``<state_dir>/secrets/ca.pem`` when it exists (read with ``config.read_secret``).
``ca_pem`` is the CA text a fleet host's bundle carries in ``nats.tls.ca``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets as _secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from osapi.errors import ConfigError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
LOCK_NAME = ".tls.lock"
CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = 30 * 86400  # seconds: a server certificate this close to its end is issued again
LOCK_WAIT = 60.0  # seconds
OPENSSL_TIMEOUT = 60.0  # seconds, per openssl command
CA_MAX_BYTES = 1024 * 1024
INSTALL_HINT = ("install openssl (apt-get install openssl), or set nats.server.tls.cert_file, "
                "nats.server.tls.key_file and nats.server.tls.ca_file to certificates you made")


class ServerFiles(NamedTuple):
    """What nats-server's ``tls {}`` blocks name."""

    cert_file: str
    key_file: str
    ca_file: str  # "" for none: routes verify against the system's CAs


def enabled(cfg) -> bool:
    return bool(cfg.nats.server.tls.enabled)


def generated(cfg) -> bool:
    """Whether TLS is on with certificates osapi generates (``cert_file``/``key_file`` empty)."""
    return enabled(cfg) and not cfg.nats.server.tls.cert_file


def _secret(cfg, name: str) -> Path:
    from osapi import config

    return config.secret_path(cfg, name).absolute()


# ---------------------------------------------------------------- the server's files


def server_files(cfg) -> ServerFiles | None:
    """The certificate files nats-server uses; None when TLS is off.

    Configured files are checked (``check``); generated ones are made or reused
    by ``ensure_generated``.
    """
    configured = check(cfg)
    if configured is not None or not enabled(cfg):
        return configured
    return ensure_generated(cfg)


def check(cfg) -> ServerFiles | None:
    """Refuse (``ConfigError``, exit 2) what cannot work, before anything is written.

    ``cert_file`` and ``key_file`` go together and must be readable files
    (returned as absolute paths); ``ca_file`` only with them; with none of the
    three the ``openssl`` command is needed. Returns the configured files, or
    None (TLS off, or generated certificates).
    """
    if not enabled(cfg):
        return None
    tls = cfg.nats.server.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("nats.server.tls.cert_file and nats.server.tls.key_file go together: one is set, "
                          "the other is empty",
                          "set both, or neither to have osapi generate a CA and a certificate")
    if not tls.cert_file:
        if tls.ca_file:
            raise ConfigError("nats.server.tls.ca_file is set but cert_file and key_file are empty",
                              "set cert_file and key_file too, or leave all three empty to have osapi generate them")
        openssl()
        return None
    files = []
    for key in ("cert_file", "key_file", "ca_file"):
        value = getattr(tls, key)
        if not value:
            files.append("")
            continue
        path = Path(value).expanduser().absolute()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(f"nats.server.tls.{key}: {path} is not a readable file",
                              f"check nats.server.tls.{key}")
        files.append(str(path))
    return ServerFiles(*files)


def openssl() -> str:
    found = shutil.which("openssl")
    if not found:
        raise ConfigError("nats.server.tls.enabled with empty cert_file/key_file needs the openssl command "
                          "to generate a CA and a server certificate, and there is none on PATH", INSTALL_HINT)
    return found


def _run(args: list[str], what: str) -> str:
    try:
        result = subprocess.run([openssl(), *args], capture_output=True, text=True, timeout=OPENSSL_TIMEOUT,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot {what}: openssl: {exc}", INSTALL_HINT) from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["exit status %d" % result.returncode])[-1]
        raise ConfigError(f"cannot {what}: openssl {args[0]}: {detail}")
    return result.stdout


def _ok(args: list[str]) -> bool:
    try:
        return subprocess.run([openssl(), *args], capture_output=True, timeout=OPENSSL_TIMEOUT,
                              stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def hostname() -> str | None:
    import socket

    from osapi import config

    name = socket.gethostname()
    return name if config.is_hostname(name) else None


def local_addresses() -> set[str]:
    """Every address of this host's interfaces (for a server listening on 0.0.0.0 or ::), from /proc."""
    found: set[str] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for previous, line in zip(lines, lines[1:]):
        if line.strip() == "/32 host LOCAL":
            candidate = previous.strip().split()[-1]
            try:
                found.add(str(ipaddress.IPv4Address(candidate)))
            except ValueError:
                pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 4 and int(fields[3], 16) in (0x00, 0x10):  # global or loopback, not link-local
                found.add(str(ipaddress.IPv6Address(int(fields[0], 16))))
    except (OSError, ValueError):
        pass
    return found


def required_names(cfg) -> tuple[set[str], set[str]]:
    """``(dns names, ip addresses)`` the server certificate must hold (see the module docstring)."""
    server = cfg.nats.server
    hosts = [server.host] + ([server.cluster.host] if server.cluster.name else [])
    dns: set[str] = {"localhost"}
    ips: set[str] = {"127.0.0.1", "::1"}
    name = hostname()
    if name:
        dns.add(name)
    for host in hosts:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            dns.add(host.lower())
            continue
        if address.is_unspecified:
            ips |= local_addresses()
        else:
            ips.add(str(address))
    return dns, ips


def certificate_names(path: Path) -> tuple[set[str], set[str]]:
    """``(dns names, ip addresses)`` in the certificate's subjectAltName."""
    text = _run(["x509", "-in", str(path), "-noout", "-ext", "subjectAltName"], f"read {path}")
    dns, ips = set(), set()
    for line in text.splitlines()[1:]:
        for entry in line.split(","):
            kind, _, value = entry.strip().partition(":")
            if kind == "DNS":
                dns.add(value.lower())
            elif kind == "IP Address":
                try:
                    ips.add(str(ipaddress.ip_address(value)))
                except ValueError:
                    pass
    return dns, ips


def _covers(cert: Path, key: Path, ca: Path, dns: set[str], ips: set[str]) -> str | None:
    """None when ``cert`` can be kept; else why it is to be issued again."""
    if not _ok(["verify", "-CAfile", str(ca), "-purpose", "sslserver", str(cert)]):
        return f"it does not verify against {ca}"
    if not _ok(["x509", "-in", str(cert), "-noout", "-checkend", str(RENEW_BEFORE)]):
        return "it expires soon"
    if _run(["x509", "-in", str(cert), "-noout", "-pubkey"], f"read {cert}") != \
            _run(["pkey", "-in", str(key), "-pubout"], f"read {key}"):
        return f"it is not the certificate of {key}"
    have_dns, have_ips = certificate_names(cert)
    missing = sorted(dns - have_dns) + sorted(ips - have_ips)
    if missing:
        return "it does not cover " + ", ".join(missing)
    return None


def _openssl_config(common_name: str, dns: set[str], ips: set[str]) -> str:
    alt = [f"DNS.{i} = {name}" for i, name in enumerate(sorted(dns), 1)]
    alt += [f"IP.{i} = {ip}" for i, ip in enumerate(sorted(ips), 1)]
    return "\n".join([
        "[req]", "distinguished_name = dn", "prompt = no", "",
        "[dn]", f"CN = {common_name}", "",
        "[ca_ext]", "basicConstraints = critical, CA:TRUE", "keyUsage = critical, keyCertSign, cRLSign",
        "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid:always", "",
        "[server_ext]", "basicConstraints = critical, CA:FALSE",
        "keyUsage = critical, digitalSignature, keyEncipherment",
        "extendedKeyUsage = serverAuth, clientAuth",  # clientAuth: a route presents it to the other node
        "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid", "subjectAltName = @alt", "",
        "[alt]", *alt, "",
    ])


def ensure_generated(cfg) -> ServerFiles:
    """Make (once) or reuse the CA and the server certificate in ``<state_dir>/secrets/``; their paths."""
    from osapi import config
    from osapi.process import make_dir, tighten_dir

    state = config.state_dir(cfg).absolute()
    config.check_state_dir(state, lax_ok=True)  # another user's state dir or secrets: refused before any write
    secrets_dir = state / config.SECRETS_DIR
    for directory in (state, secrets_dir):
        make_dir(directory)
        tighten_dir(directory)
    config.check_state_dir(state)
    openssl()
    fd = _lock(secrets_dir / LOCK_NAME)
    try:
        _generate(cfg, secrets_dir)
    finally:
        os.close(fd)
    return ServerFiles(str(secrets_dir / SERVER_CERT), str(secrets_dir / SERVER_KEY), str(secrets_dir / CA_CERT))


def _lock(path: Path) -> int:
    import errno
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                os.close(fd)
                raise ConfigError(f"cannot lock {path} to generate TLS certificates: {exc.strerror or exc}") from None
            time.sleep(0.1)


def _generate(cfg, secrets_dir: Path) -> None:
    import logging
    import tempfile

    from osapi.process import create_secret, write_private

    log = logging.getLogger("osapi.tls")
    ca_key, ca_cert = secrets_dir / CA_KEY, secrets_dir / CA_CERT
    key, cert = secrets_dir / SERVER_KEY, secrets_dir / SERVER_CERT
    dns, ips = required_names(cfg)
    name = hostname() or "osapi"
    work = Path(tempfile.mkdtemp(prefix=".tls-", dir=secrets_dir))  # a dot name: readers skip it
    try:
        conf = work / "openssl.cnf"
        conf.write_text(_openssl_config(f"osapi NATS CA {name}", dns, ips))

        def new_key(path: Path) -> str:
            _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)],
                 "generate a private key")
            return path.read_text().strip()

        if not ca_cert.exists():
            if ca_key.exists():
                raise ConfigError(f"{ca_key} exists without {ca_cert}: refusing to make a new CA over it",
                                  f"put the CA's certificate back as {ca_cert}, or remove {ca_key} to start over")
            create_secret(ca_key, lambda: new_key(work / CA_KEY))
            _run(["req", "-x509", "-new", "-config", str(conf), "-extensions", "ca_ext", "-key", str(ca_key),
                  "-sha256", "-days", str(CA_DAYS), "-out", str(work / CA_CERT)], "generate the CA certificate")
            create_secret(ca_cert, lambda: (work / CA_CERT).read_text().strip())
        create_secret(key, lambda: new_key(work / SERVER_KEY))
        why = _covers(cert, key, ca_cert, dns, ips) if cert.exists() else "there is none"
        if why is None:
            return
        if not ca_key.exists():
            raise ConfigError(f"the server certificate {cert} is to be issued again ({why}), and {ca_key} is missing",
                              f"copy {ca_key} from the node that made {ca_cert}, or set nats.server.tls.cert_file")
        conf.write_text(_openssl_config(name, dns, ips))
        _run(["req", "-new", "-config", str(conf), "-key", str(key), "-out", str(work / "server.csr")],
             "make the server certificate request")
        _run(["x509", "-req", "-in", str(work / "server.csr"), "-CA", str(ca_cert), "-CAkey", str(ca_key),
              "-set_serial", "0x" + _secrets.token_hex(16), "-days", str(SERVER_DAYS), "-sha256",
              "-extfile", str(conf), "-extensions", "server_ext", "-out", str(work / SERVER_CERT)],
             "sign the server certificate")
        write_private(cert, (work / SERVER_CERT).read_text())
        log.info("issued %s for %s (%s)", cert, ", ".join(sorted(dns) + sorted(ips)), why)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- clients and bundles


def client_ca(cfg) -> tuple[str, str] | None:
    """``(PEM text, where it came from)`` of the CA clients verify nats-server against; None: none.

    ``nats.tls.ca`` as PEM text or as a file (``ConfigError`` when the file is
    missing, unreadable or holds no certificate), else ``<state_dir>/secrets/ca.pem``
    when it exists.
    """
    from osapi import config

    value = cfg.nats.tls.ca
    if value.strip().startswith(config.PEM_CERT_BEGIN):
        return value.strip() + "\n", "nats.tls.ca"
    if value:
        path = Path(value).expanduser()
        hint = "set nats.tls.ca to the PEM text of the CA or to the path of a file holding it"
        try:
            with open(path, "rb") as handle:
                data = handle.read(CA_MAX_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"nats.tls.ca: cannot read {path}: {exc.strerror or exc}", hint) from None
        text = data.decode("utf-8", "replace")
        if len(data) > CA_MAX_BYTES or config.PEM_CERT_BEGIN not in text:
            raise ConfigError(f"nats.tls.ca: {path} holds no PEM certificate", hint)
        return text, f"nats.tls.ca ({path})"
    text = config.read_secret(cfg, CA_CERT)
    if text:
        return text + "\n", str(config.secret_path(cfg, CA_CERT))
    return None


def ca_pem(cfg) -> str | None:
    """The CA's PEM text for a fleet host's bundle (``nats.tls.ca``); None when TLS is off.

    With ``nats.server.tls.enabled``: the CA of this node's nats-server
    (``ca_file``, or the generated ``<state_dir>/secrets/ca.pem``). Otherwise (an
    API node that does not run nats-server itself) the CA its own clients trust.
    """
    if enabled(cfg):
        if cfg.nats.server.tls.ca_file:
            path = Path(cfg.nats.server.tls.ca_file).expanduser()
            try:
                return path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"nats.server.tls.ca_file: cannot read {path}: {exc}") from None
        from osapi import config

        text = config.read_secret(cfg, CA_CERT)
        return text + "\n" if text else None
    found = client_ca(cfg)
    return found[0] if found else None
