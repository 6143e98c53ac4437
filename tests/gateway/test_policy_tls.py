"""TLS on the hop to one service of GATEWAY_CONFIG: its own CA (``ca_file``) instead of the
system's trust store, and the gateway's client certificate for mutual TLS (``client_cert_file``,
``client_key_file``); a service over https on a real socket, the gateway in process."""

from __future__ import annotations

import contextlib
import datetime
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from internal_auth import PrivateKey

from gateway.app import create_app
from gateway.policy import PolicyFileError, parse_policy
from gateway.settings import Settings
from tests.gateway.test_policy_proxy import EchoService
from tests.support.asgi_server import serve
from tests.support.stack import free_port


def _issue(
    folder: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = _issue(tmp_path, "ca", None)
    _issue(tmp_path, "service", ca)
    _issue(tmp_path, "gateway", ca)
    return tmp_path


def _config(port: int, tls: str) -> str:
    return f"""
version = 1
[services.backend]
url = "https://127.0.0.1:{port}"
audience = "tokengate-backend"
{tls}
[[route]]
prefix = "/"
service = "backend"
[[rule]]
name = "all"
effect = "allow"
authenticated = true
"""


@contextlib.asynccontextmanager
async def _gateway(
    env: dict[str, str], key: PrivateKey, pki: Path, tls: str, *, client_certs: bool
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    port = free_port()
    config = pki / "gateway.toml"
    config.write_text(_config(port, tls))
    environ = {k: v for k, v in env.items() if k != "BACKEND_URL"}
    settings = Settings.from_env({**environ, "GATEWAY_CONFIG": str(config)})
    app = create_app(settings)
    options: dict[str, object] = {
        "ssl_certfile": str(pki / "service.pem"),
        "ssl_keyfile": str(pki / "service.key"),
    }
    if client_certs:
        options |= {"ssl_ca_certs": str(pki / "ca.pem"), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            serve(EchoService("backend", "tokengate-backend", key).app, port, **options)
        )
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://gw.test")
        )
        yield client, settings


def _auth(client: httpx.AsyncClient, settings: Settings) -> dict[str, str]:
    from gateway.auth.tokens import TokenService

    token, _ = TokenService(settings).issue_access(
        sub=str(uuid.uuid4()), sid=str(uuid.uuid4()), roles=("user",)
    )
    return {"Authorization": f"Bearer {token}"}


async def test_the_service_s_own_ca_is_trusted_and_only_it(
    env: dict[str, str], internal_key: PrivateKey, pki: Path
) -> None:
    tls = f'ca_file = "{pki / "ca.pem"}"'
    async with _gateway(env, internal_key, pki, tls, client_certs=False) as (client, settings):
        response = await client.get("/api/v1/me", headers=_auth(client, settings))
        assert response.status_code == 200, response.text
        # the gateway's own calls to the identity service (readiness, epochs) trust it too
        assert (await client.get("/readyz")).json()["checks"]["backend"] is True
    # without ca_file the file is refused: the system's trust store is never used for the hop
    with pytest.raises(PolicyFileError) as failed:
        parse_policy(_config(1, "").encode())
    assert any("has no ca_file" in p for p in failed.value.problems)


async def test_mutual_tls_presents_the_gateway_s_certificate(
    env: dict[str, str], internal_key: PrivateKey, pki: Path
) -> None:
    ca = f'ca_file = "{pki / "ca.pem"}"'
    with_cert = (
        f'{ca}\nclient_cert_file = "{pki / "gateway.pem"}"\n'
        f'client_key_file = "{pki / "gateway.key"}"'
    )
    async with _gateway(env, internal_key, pki, with_cert, client_certs=True) as (client, s):
        assert (await client.get("/api/v1/me", headers=_auth(client, s))).status_code == 200
    async with _gateway(env, internal_key, pki, ca, client_certs=True) as (client, s):
        assert (await client.get("/api/v1/me", headers=_auth(client, s))).status_code == 502


def test_tls_files_must_load_and_need_https(pki: Path) -> None:
    (pki / "junk.pem").write_text("not a certificate")
    with pytest.raises(PolicyFileError) as failed:
        parse_policy(_config(1, f'ca_file = "{pki / "junk.pem"}"').encode())
    assert any("TLS files that do not load" in p for p in failed.value.problems)
    plain = _config(1, f'ca_file = "{pki / "ca.pem"}"').replace("https://", "http://")
    with pytest.raises(PolicyFileError) as failed:
        parse_policy(plain.encode())
    assert any("must be https://" in p for p in failed.value.problems)
