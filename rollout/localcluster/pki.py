"""The local control plane's keys and credentials: a CA, the API server's certificate, the service
account signing key and a bearer token, made once with openssl and kept in the data folder."""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path


class PkiError(RuntimeError):
    """openssl is missing or failed."""


@dataclass(frozen=True)
class Credentials:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    service_account_key: Path
    service_account_public_key: Path
    token_file: Path
    token: str


def _openssl(*arguments: str, cwd: Path) -> None:
    try:
        subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise PkiError("openssl is not installed; install it with `apt-get install openssl`") from error
    except subprocess.CalledProcessError as error:
        raise PkiError(f"openssl {arguments[0]} failed: {error.stderr.strip()}") from error


def ensure_credentials(folder: Path) -> Credentials:
    """Create what is missing in `folder` and return the paths; existing material is kept."""
    folder.mkdir(parents=True, exist_ok=True)
    credentials = Credentials(
        ca_cert=folder / "ca.crt",
        server_cert=folder / "apiserver.crt",
        server_key=folder / "apiserver.key",
        service_account_key=folder / "service-account.key",
        service_account_public_key=folder / "service-account.pub",
        token_file=folder / "tokens.csv",
        token="",
    )
    if not credentials.ca_cert.exists():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                 "-days", "3650", "-subj", "/CN=ringmaster-local-ca", cwd=folder)
    if not credentials.server_cert.exists():
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
                 "-subj", "/CN=kube-apiserver", cwd=folder)
        (folder / "apiserver.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default\n"
            "extendedKeyUsage=serverAuth\n"
        )
        _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "apiserver.crt", "-days", "3650", "-extfile", "apiserver.ext", cwd=folder)
    if not credentials.service_account_key.exists():
        _openssl("genrsa", "-out", "service-account.key", "2048", cwd=folder)
        _openssl("rsa", "-in", "service-account.key", "-pubout", "-out", "service-account.pub", cwd=folder)
    if not credentials.token_file.exists():
        # Clients use a token (1.20 answers anonymous requests with 401); its group system:masters may do anything.
        credentials.token_file.write_text(f'{secrets.token_hex(24)},ringmaster-admin,1,"system:masters"\n')
        credentials.token_file.chmod(0o600)
    token = credentials.token_file.read_text().split(",", 1)[0]
    return Credentials(**{**credentials.__dict__, "token": token})
