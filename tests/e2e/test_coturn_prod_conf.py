"""turn/turnserver.prod.conf, run by the real coturn: it parses, serves TLS 1.2+ with our ciphers,
authenticates with the shared secret, and refuses to relay to private, loopback, link-local and
metadata addresses (coturn's own `turnutils_uclient` gets 403 Forbidden IP).

The file is rendered the way a deployment would (placeholders replaced, a test certificate) and only
listening addresses and ports are moved to loopback; every security directive is used as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import UDP_TRANSPORT, TurnClientUdpProtocol, create_turn_endpoint

from server.stack import free_port
from tests.e2e.conftest import sign, uclient

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("uclient_available")]

PROD_CONF = Path(__file__).resolve().parents[2] / "turn" / "turnserver.prod.conf"
SECRET = "prod-conf-test-secret"
REALM = "turn.napalm.test"
CIPHERS = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
           "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"}


def parse_conf(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip().strip('"'))
    return out


def denied_ranges(conf: dict[str, list[str]]) -> list[tuple[ipaddress._BaseAddress, ipaddress._BaseAddress]]:
    ranges = []
    for value in conf["denied-peer-ip"]:
        first, _, last = value.partition("-")
        ranges.append((ipaddress.ip_address(first), ipaddress.ip_address(last or first)))
    return ranges


def is_denied(addr: str, ranges) -> bool:  # type: ignore[no-untyped-def]
    ip = ipaddress.ip_address(addr)
    return any(lo.version == ip.version and lo <= ip <= hi for lo, hi in ranges)


# ------------------------------------------------------------------ the file itself
def test_prod_conf_has_the_hardening_directives():
    conf = parse_conf(PROD_CONF.read_text())
    for flag in ("use-auth-secret", "fingerprint", "no-cli", "no-multicast-peers", "no-tlsv1", "no-tlsv1_1",
                 "no-tcp-relay", "no-rfc5780", "no-software-attribute", "no-dtls"):
        assert flag in conf, flag
    for key in ("static-auth-secret", "realm", "cert", "pkey", "cipher-list", "stale-nonce", "user-quota",
                "total-quota", "max-bps", "listening-port", "tls-listening-port"):
        assert key in conf, key
    assert conf["listening-port"] == ["3478"] and conf["tls-listening-port"] == ["443"]
    assert int(conf["user-quota"][0]) > 0 and int(conf["total-quota"][0]) > 0 and int(conf["max-bps"][0]) > 0
    assert 0 < int(conf["stale-nonce"][0]) <= 3600
    assert set(conf["cipher-list"][0].split(":")) == CIPHERS
    # Never in production: loopback peers, anonymous access, the telnet CLI, a committed secret.
    for forbidden in ("allow-loopback-peers", "no-auth", "cli-password", "lt-cred-mech", "web-admin"):
        assert forbidden not in conf, forbidden
    assert conf["static-auth-secret"] == ["REPLACE_WITH_TURN_SECRET"]


@pytest.mark.parametrize("addr", [
    "0.0.0.0", "10.0.0.1", "10.255.255.255", "100.64.0.1", "100.100.100.200", "127.0.0.1", "127.255.0.1",
    "169.254.169.254", "169.254.0.1", "172.16.0.1", "172.31.255.254", "192.0.0.192", "192.168.1.1",
    "198.18.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255",
    "::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "64:ff9b::a00:1", "2002:a00:1::", "fd00:ec2::254",
    "fc00::1", "fe80::1", "ff02::1",
])
def test_prod_conf_denies_private_loopback_link_local_and_metadata(addr):
    assert is_denied(addr, denied_ranges(parse_conf(PROD_CONF.read_text()))), addr


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111",
                                  "2a00:1450:4001:81c::200e"])
def test_prod_conf_allows_public_peers(addr):
    assert not is_denied(addr, denied_ranges(parse_conf(PROD_CONF.read_text()))), addr


# ------------------------------------------------------------------ coturn running it
@dataclass
class ProdTurn:
    port: int
    tls_port: int
    root: Path
    ipv6: bool

    @property
    def log(self) -> str:
        return (self.root / "turn.log").read_bytes().decode(errors="replace")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _self_signed(root: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, REALM)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = root / "fullchain.pem", root / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def render(text: str, *, port: int, tls_port: int, relay: tuple[int, int], cert: Path, key: Path,
           pidfile: Path, ipv6: bool) -> str:
    """What a deployment does to the file, plus loopback addresses/ports for this machine."""
    lines = []
    for line in text.splitlines():
        key_ = line.split("=", 1)[0].strip()
        replacement = {
            "listening-port": f"listening-port={port}",
            "tls-listening-port": f"tls-listening-port={tls_port}",
            "min-port": f"min-port={relay[0]}",
            "max-port": f"max-port={relay[1]}",
            "cert": f"cert={cert}",
            "pkey": f"pkey={key}",
        }.get(key_)
        lines.append(replacement if replacement is not None else line)
    out = "\n".join(lines).replace("REPLACE_WITH_TURN_SECRET", SECRET).replace("REPLACE_TURN_REALM", REALM)
    addrs = ["127.0.0.1", *(["::1"] if ipv6 else [])]
    out += "\n# test overrides\n" + "".join(f"listening-ip={a}\nrelay-ip={a}\n" for a in addrs)
    out += f"pidfile={pidfile}\n"
    assert "REPLACE" not in "\n".join(x for x in out.splitlines() if not x.lstrip().startswith("#"))
    return out


@pytest.fixture(scope="module")
def prod_turn() -> Iterator[ProdTurn]:
    root = Path(tempfile.mkdtemp(prefix="napalm-prodturn-"))
    base = 31000 + (os.getpid() % 40) * 40  # relay ports of our own, below the ephemeral range
    ipv6 = _ipv6_loopback()
    cert, key = _self_signed(root)
    port, tls_port = free_port(), free_port()
    conf = root / "turnserver.conf"
    conf.write_text(render(PROD_CONF.read_text(), port=port, tls_port=tls_port, relay=(base, base + 39),
                           cert=cert, key=key, pidfile=root / "turnserver.pid", ipv6=ipv6))
    log = open(root / "turn.log", "wb")  # handed to the child
    proc = subprocess.Popen([shutil.which("turnserver") or "/usr/bin/turnserver", "-c", str(conf)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=root)
    log.close()
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (root / "turn.log").read_text(errors="replace")[-3000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", tls_port)) == 0:
                    break
            assert time.monotonic() < deadline, "coturn did not start with the production config"
            time.sleep(0.05)
        yield ProdTurn(port=port, tls_port=tls_port, root=root, ipv6=ipv6)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(root, ignore_errors=True)


def fresh(user: str = "prod-user", ttl: int = 600) -> tuple[str, str]:
    username = f"{int(time.time()) + ttl}:{user}"
    return username, sign(SECRET, username)


async def test_coturn_loads_the_prod_config(prod_turn):
    log = prod_turn.log
    conf = parse_conf(PROD_CONF.read_text())
    assert log.count("Black listing:") >= len(conf["denied-peer-ip"])
    assert "RFC5780 disabled" in log
    assert "TCP relay endpoints are not allowed" in log
    assert "500000 bytes per second allowed per session" in log
    startup = "\n".join(line for line in log.splitlines() if "denied in the range" not in line)
    assert "Bad configuration" not in startup and "ERROR" not in startup, startup[-3000:]


# REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.11), which aioice does not know: needed for IPv6 relays.
_RAF = (0x0017, "REQUESTED-ADDRESS-FAMILY", stun.pack_unsigned, stun.unpack_unsigned)
stun.ATTRIBUTES_BY_NAME.setdefault(_RAF[1], _RAF)
stun.ATTRIBUTES_BY_TYPE.setdefault(_RAF[0], _RAF)


async def permission(port: int, peer: str, username: str, password: str) -> str:
    """Allocate a relay of the peer's address family, then ask for a permission to the peer.
    Returns "allowed" or the STUN error ("403 Forbidden IP"). Only STUN requests to the TURN server
    are sent: no data ever goes to the peer."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(("127.0.0.1", port), username=username, password=password,
                                      lifetime=600, channel_refresh_time=500),
        remote_addr=("127.0.0.1", port))
    try:
        alloc = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
        alloc.attributes["LIFETIME"] = 600
        alloc.attributes["REQUESTED-TRANSPORT"] = UDP_TRANSPORT
        alloc.attributes["REQUESTED-ADDRESS-FAMILY"] = (2 if ipaddress.ip_address(peer).version == 6 else 1) << 24
        await asyncio.wait_for(proto.request_with_retry(alloc), 10)
        perm = stun.Message(message_method=stun.Method.CREATE_PERMISSION, message_class=stun.Class.REQUEST)
        perm.attributes["XOR-PEER-ADDRESS"] = (peer, 9)
        try:
            await asyncio.wait_for(proto.request_with_retry(perm), 10)
        except stun.TransactionFailed as exc:
            code, reason = exc.response.attributes["ERROR-CODE"]
            return f"{code} {reason}"
        return "allowed"
    finally:
        transport.close()


async def test_shared_secret_auth_and_expiry_under_prod_config(prod_turn):
    async def allocate(username: str, password: str, **kw: object) -> int | None:
        try:
            transport, _ = await asyncio.wait_for(create_turn_endpoint(
                asyncio.DatagramProtocol, ("127.0.0.1", prod_turn.port), username, password, **kw), 10)
        except stun.TransactionFailed as exc:
            return int(exc.response.attributes["ERROR-CODE"][0])
        transport.close()
        return None

    assert await allocate(*fresh()) is None
    expired = f"{int(time.time()) - 1}:prod-user"
    assert await allocate(expired, sign(SECRET, expired)) == 401
    forged, _ = fresh()
    assert await allocate(forged, sign("REPLACE_WITH_TURN_SECRET", forged)) == 401  # the placeholder


async def test_turn_over_tls_allocates(prod_turn):
    """TURN over TLS on the TLS port (what turns:HOST:443 reaches), with Python's OpenSSL client.
    (turnutils_uclient's TLS mode stalls intermittently against coturn 4.6.1 even with a minimal
    config, so it is not used here.)"""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    username, password = fresh()
    transport, _ = await asyncio.wait_for(create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", prod_turn.tls_port), username, password, ssl=ctx,
        transport="tcp"), 10)
    try:
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
    finally:
        transport.close()


DENIED_V4 = ["127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "100.100.100.200",
             "100.64.0.1", "0.0.0.0", "198.18.0.1", "192.0.0.192", "224.0.0.1", "255.255.255.255"]
DENIED_V6 = ["::1", "fd00:ec2::254", "fc00::1", "fe80::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1",
             "64:ff9b::a00:1", "2002:a00:1::", "2001:db8::1", "ff02::1"]
PUBLIC_V4 = ["8.8.8.8", "1.1.1.1", "93.184.216.34"]
PUBLIC_V6 = ["2606:4700:4700::1111", "2a00:1450:4001:81c::200e"]


async def test_internal_peers_are_forbidden_and_public_ones_allowed(prod_turn):
    """The positive half matters as much: a bad denied-peer-ip line (e.g. a bare "::") makes coturn
    refuse every peer, which breaks all relayed calls without any error at start-up."""
    username, password = fresh()
    peers = DENIED_V4 + PUBLIC_V4 + ((DENIED_V6 + PUBLIC_V6) if prod_turn.ipv6 else [])
    results = await asyncio.gather(*(permission(prod_turn.port, p, username, password) for p in peers))
    got = dict(zip(peers, results, strict=True))
    for peer, result in got.items():
        want = "allowed" if peer in PUBLIC_V4 + PUBLIC_V6 else "403 Forbidden IP"
        assert result == want, (peer, got)


async def test_uclient_is_refused_internal_peers(prod_turn):
    """The same with coturn's own client: allocation succeeds, the channel to the peer gets 403."""
    username, password = fresh()
    peers = ["10.1.2.3", "169.254.169.254", "192.168.1.1"]
    results = await asyncio.gather(*(uclient(prod_turn.port, username, password, "-c", "-e", p, messages=1)
                                     for p in peers))
    for peer, res in zip(peers, results, strict=True):
        assert "403 (Forbidden IP)" in res.output, (peer, res.output[-2000:])
        assert res.messages_received == 0, peer


async def test_two_relays_on_loopback_cannot_talk(prod_turn):
    """The session's coturn needs allow-loopback-peers for local calls; production must not have it."""
    username, password = fresh()
    res = await uclient(prod_turn.port, username, password, "-y", "-c", messages=1)
    assert res.returncode != 0 and "403 (Forbidden IP)" in res.output, res.output[-2000:]


def _handshake(port: int, *, version: ssl.TLSVersion | None = None, ciphers: str | None = None,
               wait: float = 5) -> tuple[str, str]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as raw, \
            ctx.wrap_socket(raw, server_hostname=REALM) as tls:
        cipher = tls.cipher()
        assert cipher is not None
        return tls.version() or "", cipher[0]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_versions_and_ciphers(prod_turn):
    version, cipher = _handshake(prod_turn.tls_port)
    assert version in ("TLSv1.2", "TLSv1.3")
    if version == "TLSv1.2":
        assert cipher in CIPHERS
    version, cipher = _handshake(prod_turn.tls_port, version=ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2" and cipher in CIPHERS
    # TLS 1.2 without forward secrecy / AEAD: refused.
    with pytest.raises(ssl.SSLError):
        _handshake(prod_turn.tls_port, version=ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA:@SECLEVEL=0")
    # TLS 1.1 (the client is allowed to offer it here) never completes: coturn answers nothing
    # (timeout) or an alert. Defence in depth: OpenSSL 3 at its default level refuses it as well.
    with pytest.raises((ssl.SSLError, TimeoutError, ConnectionError)):
        _handshake(prod_turn.tls_port, version=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0", wait=2)
