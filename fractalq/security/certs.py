"""``fractalq certs``: a new CA, a server and a client certificate, for local use.

Keys are ECDSA P-256 (small and fast to make and to verify). The server
certificate names ``localhost``, ``127.0.0.1`` and every extra host (DNS name
or IP address); the client certificate is for mutual TLS. Key files are
created 0600, and existing files are never overwritten unless asked
(``--force``): a CA replaced by mistake would silently invalidate every
certificate handed out before.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fractalq import config

LOCAL_NAMES = ("localhost", "127.0.0.1")
FILES = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")

Key = ec.EllipticCurvePrivateKey


@dataclasses.dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: Key

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fractalq"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _validity(days: float, now: datetime.datetime | None) -> tuple[datetime.datetime, ...]:
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    return start, start + datetime.timedelta(days=days)


def _builder(
    subject: str, issuer: x509.Name, key: Key, days: float, now: datetime.datetime | None, ca: bool
) -> x509.CertificateBuilder:
    """What both kinds of certificate share: names, validity, and the key's usage."""
    start, end = _validity(days, now)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=not ca,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def make_ca(
    common_name: str = "fractalq local CA",
    days: float = config.CA_DAYS,
    now: datetime.datetime | None = None,
) -> Issued:
    key = _new_key()
    builder = _builder(common_name, _name(common_name), key, days, now, ca=True)
    return Issued(builder.sign(key, hashes.SHA256()), key)


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue(
    ca: Issued,
    common_name: str,
    names: Sequence[str] = (),
    client: bool = False,
    days: float = config.CERT_DAYS,
    now: datetime.datetime | None = None,
) -> Issued:
    """A certificate signed by ``ca``: for a server (valid for ``names``) or a client."""
    key = _new_key()
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        _builder(common_name, ca.cert.subject, key, days, now, ca=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def check_host(name: str) -> str:
    """A DNS name or an IP address for a certificate, or a ValueError."""
    try:
        ipaddress.ip_address(name.strip("[]"))
        return name
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    valid = (
        0 < len(name) <= 253
        and all(
            0 < len(label) <= 63
            and label[0] != "-"
            and label[-1] != "-"
            and all(c.isascii() and (c.isalnum() or c == "-") for c in label.lstrip("*"))
            for label in labels
        )
        and "*" not in "".join(labels[1:])
    )
    if not valid:
        raise ValueError(f"{name!r} is not a DNS name or an IP address")
    return name


def write_file(path: Path, data: bytes, private: bool, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as stream:
        if private:
            os.fchmod(stream.fileno(), 0o600)  # also when --force reuses a looser file
        stream.write(data)


def write_bundle(
    folder: Path, hosts: Sequence[str] = (), force: bool = False, days: float = config.CERT_DAYS
) -> list[Path]:
    """DIR/ca.crt, server.crt/.key, client.crt/.key; a FileExistsError unless ``force``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in FILES]
    if not force:
        taken = [path.name for path in paths if path.exists()]
        if taken:
            raise FileExistsError(f"{folder} already holds {', '.join(taken)} (--force replaces)")
    ca = make_ca()
    server = issue(ca, "fractalq coordinator", [*LOCAL_NAMES, *hosts], days=days)
    client = issue(ca, "fractalq client", client=True, days=days)
    contents = [
        (ca.cert_pem(), False),
        (server.cert_pem(), False),
        (server.key_pem(), True),
        (client.cert_pem(), False),
        (client.key_pem(), True),
    ]
    for path, (data, private) in zip(paths, contents, strict=True):
        write_file(path, data, private, force)
    return paths
