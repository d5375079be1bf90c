"""A node certificate opens agents and etcd only while its node is a member, and only the one recorded for it.

Attacks the real agents and the real etcd with real certificates signed by
the cluster CA: a removed node's, one forged by whoever holds the CA key for a
member's name, and a member's own old one after `rotate-secrets`.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import AgentNode, formed, wait_for
from hostagent import pki


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    with formed(tmp_path_factory.mktemp("trust"), 3) as cluster:
        yield cluster


def _context(node: AgentNode, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(node.root / "state" / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def agent_get(target: AgentNode, cert: Path, key: Path, path: str = "/v1/node/qemus") -> tuple[int, dict]:
    req = urllib.request.Request(f"https://{target.api}{path}")
    try:
        with urllib.request.urlopen(req, context=_context(target, cert, key), timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def etcd_read(target: AgentNode, cert: Path, key: Path) -> str:
    """'200' when etcd served a read of /corral/nodes/ with this certificate, else why not."""
    body = json.dumps({"key": base64.b64encode(b"/corral/nodes/").decode(),
                       "range_end": base64.b64encode(b"/corral/nodes0").decode()}).encode()
    url = f"https://{target.address}:{target.ports['etcd_client']}/v3/kv/range"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"),
                                    context=_context(target, cert, key), timeout=10) as resp:
            return str(resp.status)
    except urllib.error.HTTPError as err:
        return str(err.code)
    except (urllib.error.URLError, OSError) as err:
        return f"refused: {err}"


def own(node: AgentNode) -> tuple[Path, Path]:
    pki_dir = node.root / "state" / "pki"
    return pki_dir / "node.crt", pki_dir / "node.key"


def test_a_ca_signed_certificate_not_recorded_for_its_node_is_refused(trio, tmp_path):
    """Whoever got the CA key to sign a second certificate for n2 still cannot act as n2."""
    n1, n2 = trio["n1"], trio["n2"]
    assert agent_get(n1, *own(n2))[0] == 200
    paths = pki.PkiPaths(str(n1.root / "state" / "pki"))
    key = ec.generate_private_key(ec.SECP256R1())
    cert, key_file = tmp_path / "n2-forged.crt", tmp_path / "n2-forged.key"
    cert.write_bytes(pki.sign_node_key(paths, key.public_key(), "n2", n2.address))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    for target in (n1, trio["n3"]):
        status, answer = agent_get(target, cert, key_file)
        assert status == 403 and "is not the one the cluster recorded" in answer["message"], (status, answer)


def test_rotate_secrets_revokes_the_old_certificates_on_agents_and_etcd(trio, tmp_path):
    n1, n2 = trio["n1"], trio["n2"]
    old_cert, old_key = tmp_path / "n2-old.crt", tmp_path / "n2-old.key"
    old_cert.write_bytes(own(n2)[0].read_bytes())
    old_key.write_bytes(own(n2)[1].read_bytes())
    assert etcd_read(n1, old_cert, old_key) == "200"
    trio["n3"].ok("cluster", "rotate-secrets")
    status, answer = agent_get(n1, old_cert, old_key)
    assert status == 403 and "not the one the cluster recorded" in answer["message"]
    assert agent_get(n1, *own(n2))[0] == 200
    wait_for(lambda: etcd_read(n1, old_cert, old_key).startswith("refused"), 15, "etcd to refuse n2's old cert")
    assert etcd_read(n1, *own(n2)) == "200"
    n2.ok("user", "add", "after-rotation", "--role", "read")  # forwarded to the master with the new certificate
    trio.wait_replicas_agree()


def _forge(ca_dir: Path, name: str, address: str, serial: int, out: Path) -> tuple[Path, Path]:
    """A node certificate for `name` with a chosen serial, signed by the CA whose files are in `ca_dir`."""
    ca_cert = x509.load_pem_x509_certificate(pki.split_pems((ca_dir / "ca.crt").read_bytes())[0])
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, pki.NODE_OU)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    (out / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return out / f"{name}.crt", out / f"{name}.key"


def refused(call) -> bool:
    try:
        status, _ = call()
    except (urllib.error.URLError, OSError):
        return True  # the handshake failed: the certificate's CA is not trusted
    return status in (401, 403)


def test_rotate_secrets_new_ca_retires_the_old_ca_everywhere_while_changes_keep_working(trio, tmp_path):
    n1, n2, n3 = trio["n1"], trio["n2"], trio["n3"]
    old_ca = tmp_path / "old-ca"
    old_ca.mkdir()
    for f in ("ca.crt", "ca.key"):
        (old_ca / f).write_bytes((n1.root / "state" / "pki" / f).read_bytes())
    serial = x509.load_pem_x509_certificate(own(n2)[0].read_bytes()).serial_number
    forged = _forge(old_ca, "n2", n2.address, serial, tmp_path)
    assert agent_get(n1, *forged)[0] == 200  # the old CA's key with a recorded serial: the attack to stop
    failures: list[str] = []
    stop = threading.Event()

    def keep_changing() -> None:  # forwarded from n3 to the master over TLS the whole time
        i = 0
        while not stop.is_set() and i < 500:
            result = n3.corral("user", "add", f"during-{i}", "--role", "read")
            if result.returncode != 0:
                failures.append(result.stderr.strip())
            i += 1
            time.sleep(0.2)

    writer = threading.Thread(target=keep_changing)
    writer.start()
    try:
        out = n2.ok("cluster", "rotate-secrets", "--new-ca")
    finally:
        stop.set()
        writer.join(60)
    assert "the old cluster CA is retired everywhere" in out, out
    assert failures == [], failures
    cas = {n.name: (n.root / "state" / "pki" / "ca.crt").read_bytes() for n in trio.nodes}
    assert len(set(cas.values())) == 1 and len(pki.split_pems(cas["n1"])) == 1
    assert cas["n1"] != (old_ca / "ca.crt").read_bytes()
    for node in trio.nodes:
        assert not (node.root / "state" / "pki" / "ca-next.key").exists()
    new_serial = x509.load_pem_x509_certificate(own(n2)[0].read_bytes()).serial_number
    forged = _forge(old_ca, "n2", n2.address, new_serial, tmp_path)
    for target in (n1, n3):
        assert refused(lambda: agent_get(target, *forged)), target.name
        assert etcd_read(target, *forged).startswith("refused"), target.name
        assert agent_get(target, *own(n2))[0] == 200 and etcd_read(target, *own(n2)) == "200"
    n2.ok("user", "add", "after-new-ca", "--role", "read")
    trio.wait_replicas_agree()


def test_a_removed_node_is_refused_by_every_agent_and_by_etcd(trio, tmp_path):
    n1, n2, n3 = trio["n1"], trio["n2"], trio["n3"]
    cert, key = tmp_path / "n3.crt", tmp_path / "n3.key"
    cert.write_bytes(own(n3)[0].read_bytes())
    key.write_bytes(own(n3)[1].read_bytes())
    assert agent_get(n1, cert, key)[0] == 200 and etcd_read(n1, cert, key) == "200"
    master = n1.json("cluster", "info")["master"]
    remover = n1 if master != "n3" else n2
    if master == "n3":
        n3.ok("cluster", "master-failover")
        wait_for(lambda: n1.json("cluster", "info")["master"] not in (None, "n3"), 60, "a master other than n3")
    remover.ok("node", "remove", "n3")
    for target in (n1, n2):
        status, answer = agent_get(target, cert, key)
        assert status == 403 and "not a member of this cluster" in answer["message"], (target.name, answer)
        status, answer = agent_get(target, cert, key, "/v1/cluster")
        assert status == 403, (target.name, status, answer)
    survivor = trio[remover.json("cluster", "info")["master"]]  # an etcd member whatever the pool does next
    wait_for(lambda: etcd_read(survivor, cert, key).startswith("refused"), 15, "etcd to refuse n3's certificate")
    assert etcd_read(survivor, *own(n1)) == "200"
    n1.ok("user", "add", "after-removal", "--role", "read")
