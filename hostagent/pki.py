"""The cluster's certificate authority and node certificates.

One CA per cluster signs every node's certificate; the same certificate serves
the agent API, etcd client and peer traffic (mutual TLS everywhere). Private
keys are written 0600 and never logged.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALID_DAYS = 3650
NODE_OU = "corral-node"
NODE_VALID_DAYS = 825


@dataclass(frozen=True)
class PkiPaths:
    """Where one node keeps its TLS material."""

    directory: str

    @property
    def ca_cert(self) -> str:
        return os.path.join(self.directory, "ca.crt")

    @property
    def ca_key(self) -> str:
        return os.path.join(self.directory, "ca.key")

    @property
    def node_cert(self) -> str:
        return os.path.join(self.directory, "node.crt")

    @property
    def node_key(self) -> str:
        return os.path.join(self.directory, "node.key")

    @property
    def ca_next_cert(self) -> str:
        """The CA replacing the current one, while `rotate-secrets --new-ca` runs."""
        return os.path.join(self.directory, "ca-next.crt")

    @property
    def ca_next_key(self) -> str:
        return os.path.join(self.directory, "ca-next.key")

    @property
    def crl(self) -> str:
        """The revocation list etcd checks each new client and peer connection against."""
        return os.path.join(self.directory, "crl.pem")


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(paths: PkiPaths, cluster_name: str) -> None:
    """Create the cluster CA (done once, by `cluster init`)."""
    os.makedirs(paths.directory, mode=0o700, exist_ok=True)
    key_pem, cert_pem = _new_ca(cluster_name)
    _write(paths.ca_key, key_pem, 0o600)
    _write(paths.ca_cert, cert_pem, 0o644)


def create_next_ca(paths: PkiPaths, cluster_name: str) -> tuple[bytes, bytes]:
    """The CA that `rotate-secrets --new-ca` moves to (made once: a re-run reuses it). (key, cert) PEM."""
    if not os.path.exists(paths.ca_next_key):
        key_pem, cert_pem = _new_ca(cluster_name)
        _write(paths.ca_next_key, key_pem, 0o600)
        _write(paths.ca_next_cert, cert_pem, 0o644)
    with open(paths.ca_next_key, "rb") as k, open(paths.ca_next_cert, "rb") as c:
        return k.read(), c.read()


def split_pems(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, each as its own PEM block."""
    end = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" + end + b"\n" for part in bundle.split(end) if part.strip()]


def write_trust(paths: PkiPaths, pems: list[bytes]) -> None:
    """The CAs this node trusts (the first one is the cluster's, pinned by join tokens)."""
    unique = list(dict.fromkeys(p.strip() + b"\n" for p in pems))
    _write(paths.ca_cert, b"".join(unique), 0o644)


def _new_ca(cluster_name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    # A name of its own per CA: while old and new are both trusted, TLS libraries pick a
    # certificate's issuer by name first (and by key identifier, added below).
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"corral cluster {cluster_name} CA "
                                                                f"{now:%Y-%m-%d %H:%M:%S}")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def issue_node_cert(paths: PkiPaths, node_name: str, address: str) -> None:
    """Sign a certificate for this node (the one holding the CA key, e.g. at cluster init)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert_pem = sign_node_key(paths, key.public_key(), node_name, address)
    _write(paths.node_key, _key_pem(key), 0o600)
    _write(paths.node_cert, cert_pem, 0o644)


def sign_node_key(paths: PkiPaths, public_key: Any, node_name: str, address: str,
                  next_ca: bool = False) -> bytes:
    """A node certificate (server and client) for `node_name` at `address`, signed by the CA
    (or by the CA replacing it, during `rotate-secrets --new-ca`).

    The names come from the master's own records, never from the request, so a
    joining node cannot ask for someone else's identity.
    """
    with open(paths.ca_next_key if next_ca else paths.ca_key, "rb") as fh:
        ca_key = serialization.load_pem_private_key(fh.read(), password=None)
    with open(paths.ca_next_cert if next_ca else paths.ca_cert, "rb") as fh:
        ca_cert = x509.load_pem_x509_certificate(fh.read())  # the first of a bundle: the cluster's CA
    now = datetime.datetime.now(datetime.timezone.utc)
    ip = ipaddress.ip_address(address)
    sans: list[x509.GeneralName] = [x509.DNSName(node_name), x509.IPAddress(ip)]
    if ip.is_loopback and ip != ipaddress.ip_address("127.0.0.1"):
        # Several nodes on one machine (tests, demo) connect out from 127.0.0.1, and
        # etcd checks a peer's certificate against the address it connects from.
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, NODE_OU)]))
            .issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=NODE_VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM)


def new_node_key(paths: PkiPaths) -> bytes:
    """Create this node's private key (0600) and return a CSR carrying its public half."""
    os.makedirs(paths.directory, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    _write(paths.node_key, _key_pem(key), 0o600)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral-join")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def new_pending_key(paths: PkiPaths) -> bytes:
    """A new key for certificate renewal, kept aside until its certificate arrives; returns a CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    _write(paths.node_key + ".pending", _key_pem(key), 0o600)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral-renew")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def install_pending(paths: PkiPaths, cert_pem: bytes) -> None:
    """Switch to the pending key and its new certificate, after checking that they belong together."""
    pending = paths.node_key + ".pending"
    with open(pending, "rb") as fh:
        key = serialization.load_pem_private_key(fh.read(), password=None)
    cert = x509.load_pem_x509_certificate(cert_pem)
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise ValueError("the renewed certificate does not match this node's pending key")
    # Both files are complete before either is switched; the two renames follow each other
    # directly, and our own TLS contexts are reloaded only after both are in place.
    _write(paths.node_cert + ".pending", cert_pem, 0o644)
    os.replace(pending, paths.node_key)
    os.replace(paths.node_cert + ".pending", paths.node_cert)


def csr_public_key(csr_pem: bytes) -> Any:
    """The public key of a CSR whose signature is valid (proof the requester holds the key)."""
    csr = x509.load_pem_x509_csr(csr_pem)
    if not csr.is_signature_valid:
        raise ValueError("the certificate request's signature is not valid")
    return csr.public_key()


def write_pem(path: str, data: bytes, secret: bool = False) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    _write(path, data, 0o600 if secret else 0o644)


def read_secret(paths: PkiPaths, name: str) -> str:
    """A shared secret kept beside the certificates (gossip.key, serf-rpc.key)."""
    with open(os.path.join(paths.directory, name)) as fh:
        return fh.read().strip()


def write_secret(paths: PkiPaths, name: str, value: str) -> None:
    write_pem(os.path.join(paths.directory, name), value.encode(), secret=True)


def fingerprint_of(ca_pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def serial_of(cert_pem: bytes) -> str:
    """A certificate's serial number as the config records it (lower-case hex, no leading zeros)."""
    return format(x509.load_pem_x509_certificate(cert_pem).serial_number, "x")


def own_serial(paths: PkiPaths) -> str:
    with open(paths.node_cert, "rb") as fh:
        return serial_of(fh.read())


def peer_serial(peercert: dict[str, Any] | None) -> str | None:
    """The serial of a verified peer certificate (ssl's getpeercert() gives upper-case hex)."""
    raw = (peercert or {}).get("serialNumber")
    try:
        return format(int(raw, 16), "x") if raw else None
    except ValueError:
        return None


def write_crl(paths: PkiPaths, serials: list[str]) -> None:
    """Sign a revocation list of these serials with the cluster CA (candidates hold its key).

    etcd 3.4 reads the file on every new connection (measured), so a rewrite
    takes effect without restarting it. It never expires on its own: it is
    rewritten whenever the set changes.
    """
    with open(paths.ca_key, "rb") as fh:
        ca_key = serialization.load_pem_private_key(fh.read(), password=None)
    with open(paths.ca_cert, "rb") as fh:
        ca_cert = x509.load_pem_x509_certificate(fh.read())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - datetime.timedelta(minutes=5)).next_update(ca_cert.not_valid_after_utc))
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(now).build())
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    _write(paths.crl, crl.public_bytes(serialization.Encoding.PEM), 0o644)


def peer_node_name(peercert: dict[str, Any] | None) -> str | None:
    """The node name of a verified peer certificate (ssl's getpeercert() form), or None."""
    if not peercert:
        return None
    subject = dict(pair[0] for pair in peercert.get("subject", ()))
    if subject.get("organizationalUnitName") != NODE_OU:
        return None
    return subject.get("commonName")


def ca_fingerprint(paths: PkiPaths) -> str:
    """SHA-256 of the CA certificate (DER), shown to operators and pinned by join tokens."""
    with open(paths.ca_cert, "rb") as fh:
        return fingerprint_of(fh.read())


# TLS 1.2 suites with forward secrecy and authenticated encryption only (no CBC); TLS 1.3's are all AEAD.
AEAD_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(paths: PkiPaths) -> ssl.SSLContext:
    """TLS server side: present the node cert; verify a client cert if one is offered.

    Optional because people (bearer tokens) and joining nodes (join tokens) have
    none; each route then decides who may call it (hostagent.api.auth).
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=paths.ca_cert)
    ctx.load_cert_chain(paths.node_cert, paths.node_key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(AEAD_CIPHERS)
    return ctx


def swap_server_context(live: ssl.SSLContext, fresh: ssl.SSLContext) -> None:
    """Make every new connection to a listening site use `fresh` (its certificate and its CAs).

    A listening site keeps the context it started with; the handshake callback
    hands each new connection the fresh one instead (measured: client
    certificates are then verified against the fresh context's CAs only), so a
    retired CA stops being trusted without closing the site.
    """
    def pick(conn: Any, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        conn.context = fresh

    live.sni_callback = pick


def client_context(paths: PkiPaths) -> ssl.SSLContext:
    """TLS client side: trust only the cluster CA and present the node cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=paths.ca_cert)
    ctx.load_cert_chain(paths.node_cert, paths.node_key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(AEAD_CIPHERS)
    return ctx
