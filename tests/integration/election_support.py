"""Real etcd members and throwaway TLS certificates for the election integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from election.etcd import EtcdClient
from election.member import EtcdTls, etcd_argv, wait_healthy

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdMember:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    process: asyncio.subprocess.Process | None = None

    async def start(self, initial_cluster: str, state: str, tls: EtcdTls | None) -> None:
        argv = etcd_argv(
            self.name,
            str(self.data_dir),
            self.client_url,
            self.peer_url,
            initial_cluster,
            state,  # type: ignore[arg-type]
            tls,
        )
        with open(self.log_path, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )

    async def kill(self) -> None:
        """SIGKILL this member by its PID and reap it."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.kill()
        await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""


def plan_members(base: Path, count: int, tls: bool) -> list[EtcdMember]:
    scheme = "https" if tls else "http"
    members = []
    for i in range(count):
        directory = base / f"etcd{i}"
        directory.mkdir(parents=True)
        members.append(
            EtcdMember(
                name=f"m{i}",
                client_url=f"{scheme}://{HOST}:{free_port()}",
                peer_url=f"{scheme}://{HOST}:{free_port()}",
                data_dir=directory / "data",
                log_path=directory / "etcd.log",
            )
        )
    return members


def initial_cluster_of(members: list[EtcdMember]) -> str:
    return ",".join(f"{m.name}={m.peer_url}" for m in members)


@contextlib.asynccontextmanager
async def etcd_cluster(
    base: Path, count: int = 1, tls: EtcdTls | None = None, client_ssl: ssl.SSLContext | None = None
) -> AsyncIterator[list[EtcdMember]]:
    """Start `count` members on 127.0.0.1, wait until they serve, kill them all at exit."""
    members = plan_members(base, count, tls is not None)
    try:
        for member in members:
            await member.start(initial_cluster_of(members), "new", tls)
        async with EtcdClient([m.client_url for m in members], ssl=client_ssl) as client:
            try:
                await wait_healthy(client, START_TIMEOUT_S)
            except Exception as e:
                raise AssertionError(f"etcd did not start: {e}\n{members[0].log_tail()}") from e
        yield members
    finally:
        for member in members:
            await member.kill()


@dataclass(frozen=True)
class Pki:
    ca: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path

    def etcd_tls(self) -> EtcdTls:
        return EtcdTls(ca=str(self.ca), cert=str(self.node_cert), key=str(self.node_key))

    def client_context(self, with_cert: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_pki(directory: Path) -> Pki:
    """A throwaway CA, a node certificate (server and peer, IP 127.0.0.1) and a client certificate."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(name: str, usages: list[x509.ObjectIdentifier], ip: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if ip:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    node_cert, node_key = issue(
        "node", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], ip=True
    )
    client_cert, client_key = issue("client", [ExtendedKeyUsageOID.CLIENT_AUTH], ip=False)
    pki = Pki(
        ca=directory / "ca.pem",
        node_cert=directory / "node.pem",
        node_key=directory / "node-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.node_cert.write_bytes(node_cert)
    pki.node_key.write_bytes(node_key)
    pki.client_cert.write_bytes(client_cert)
    pki.client_key.write_bytes(client_key)
    return pki
