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

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALID_DAYS = 3650
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
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"corral cluster {cluster_name} CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(paths.ca_key, _key_pem(key), 0o600)
    _write(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def issue_node_cert(paths: PkiPaths, node_name: str, address: str) -> None:
    """Sign a certificate for `node_name` valid for its name and address (server and client)."""
    with open(paths.ca_key, "rb") as fh:
        ca_key = serialization.load_pem_private_key(fh.read(), password=None)
    with open(paths.ca_cert, "rb") as fh:
        ca_cert = x509.load_pem_x509_certificate(fh.read())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName(node_name), x509.IPAddress(ipaddress.ip_address(address))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "corral-node")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=NODE_VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    _write(paths.node_key, _key_pem(key), 0o600)
    _write(paths.node_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def ca_fingerprint(paths: PkiPaths) -> str:
    """SHA-256 of the CA certificate (DER), shown to operators and pinned by join tokens."""
    with open(paths.ca_cert, "rb") as fh:
        der = x509.load_pem_x509_certificate(fh.read()).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def server_context(paths: PkiPaths) -> ssl.SSLContext:
    """TLS server side: present the node cert, require a client cert from the cluster CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=paths.ca_cert)
    ctx.load_cert_chain(paths.node_cert, paths.node_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_context(paths: PkiPaths) -> ssl.SSLContext:
    """TLS client side: trust only the cluster CA and present the node cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=paths.ca_cert)
    ctx.load_cert_chain(paths.node_cert, paths.node_key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
