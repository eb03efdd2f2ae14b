"""Transport security through a real Envoy, with certificates the test makes: mTLS between
Envoy and the sidecar (a client without a valid certificate refused, rotated files served
on the next handshake), a Unix domain socket, and the admin token for /spend."""

from __future__ import annotations

import shutil
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.certs import Certs, make_certs, reissue_server
from tests.support.e2e import call
from tests.support.http import HttpClient, MockOpenAI
from tests.support.procs import ROOT, Envoy, Sidecar

pytestmark = pytest.mark.e2e

EXAMPLES = str(ROOT / "examples")
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 30}


def health(port: int, certs: Certs, *, client: bool, ca: Path | None = None) -> int:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(ca or certs.ca).read_bytes(),
        private_key=certs.client_key.read_bytes() if client else None,
        certificate_chain=certs.client_cert.read_bytes() if client else None,
    )
    options = (("grpc.ssl_target_name_override", "localhost"),)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=3).status


def served_serial(port: int, certs: Certs) -> int:
    """The serial of the certificate the sidecar presents now (a fresh handshake)."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


async def test_mtls_between_envoy_and_the_sidecar(tmp_path: Path, certs: Certs, upstream: MockOpenAI) -> None:
    sidecar = Sidecar(
        [EXAMPLES],
        extra=[
            *("--grpc-tls-cert", str(certs.server_cert), "--grpc-tls-key", str(certs.server_key)),
            *("--grpc-client-ca", str(certs.ca)),
        ],
    )
    envoy: Envoy | None = None
    try:
        values = {
            "CA_FILE": str(certs.ca),
            "CLIENT_CERT": str(certs.client_cert),
            "CLIENT_KEY": str(certs.client_key),
        }
        envoy = Envoy(upstream.port, [sidecar.grpc_port], template="envoy-mtls.yaml", values=values)
        client = HttpClient("127.0.0.1", envoy.port)
        try:
            assert (await call(client, (10, 20), BODY)).status == 200  # enforced route, over mTLS
        finally:
            await client.close()
        assert any(line.get("event") == "request" for line in sidecar.json_lines())

        assert health(sidecar.grpc_port, certs, client=True) == health_pb2.HealthCheckResponse.SERVING
        for refused in ({"client": False}, {"client": True, "ca": certs.other_ca}):
            with pytest.raises(grpc.RpcError) as err:
                health(sidecar.grpc_port, certs, **refused)  # type: ignore[arg-type]
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        # cert-manager rotates the files in place: the next handshake serves the new ones.
        before = served_serial(sidecar.grpc_port, certs)
        rotated = reissue_server(certs, tmp_path / "rotated")
        shutil.copy(rotated.server_cert, certs.server_cert)
        shutil.copy(rotated.server_key, certs.server_key)
        after = served_serial(sidecar.grpc_port, certs)
        assert after != before
        assert any(line.get("event") == "gRPC certificates reloaded" for line in sidecar.json_lines())
    finally:
        if envoy is not None:
            envoy.stop()
        sidecar.stop()


async def test_a_unix_socket_for_a_sidecar_in_envoys_pod(tmp_path: Path, upstream: MockOpenAI) -> None:
    path = tmp_path / "extproc.sock"
    sidecar = Sidecar([EXAMPLES], extra=["--grpc-address", f"unix:{path}"])
    envoy: Envoy | None = None
    try:
        envoy = Envoy(upstream.port, [], template="envoy-uds.yaml", values={"EXTPROC_SOCKET": str(path)})
        client = HttpClient("127.0.0.1", envoy.port)
        try:
            assert (await call(client, (10, 20), BODY)).status == 200
        finally:
            await client.close()
        assert any(line.get("event") == "request" for line in sidecar.json_lines())
    finally:
        if envoy is not None:
            envoy.stop()
        sidecar.stop()


async def test_spend_needs_the_admin_token_and_metrics_do_not(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    sidecar = Sidecar([EXAMPLES], extra=["--admin-token-file", str(token)])
    base = f"http://127.0.0.1:{sidecar.admin_port}"

    def get(path: str, bearer: str | None = None) -> int:
        request = urllib.request.Request(base + path)
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        assert get("/spend") == 401
        assert get("/spend", "wrong") == 401
        assert get("/spend", "s3cret-token") == 200
        assert [get("/metrics"), get("/healthz"), get("/readyz")] == [200, 200, 200]
    finally:
        sidecar.stop()


CERT_PROBLEMS = {
    "missing": "No such file",
    "wrong key": "is not the private key of",
    "rsa key for an ec certificate": "is not the private key of",
    "expired": "the certificate expired at",
    "unreadable (a directory)": "Is a directory",
    "not pem": "not a PEM certificate and key",
}


@pytest.mark.parametrize("problem", CERT_PROBLEMS)
def test_certificates_it_cannot_use_stop_it_at_start_with_a_clear_line(
    tmp_path: Path, certs: Certs, problem: str
) -> None:
    import json
    import subprocess
    import sys

    from tests.support.certs import rsa_key
    from tests.support.redis_server import free_port

    cert, key = certs.server_cert, certs.server_key
    if problem == "missing":
        cert = tmp_path / "missing.crt"
    elif problem == "wrong key":
        key = certs.client_key
    elif problem == "rsa key for an ec certificate":
        key = rsa_key(tmp_path / "rsa.key")
    elif problem == "expired":
        expired = reissue_server(certs, tmp_path / "expired", expired=True)
        cert, key = expired.server_cert, expired.server_key
    elif problem == "unreadable (a directory)":
        cert = tmp_path
    else:
        cert = tmp_path / "garbage.crt"
        cert.write_text("this is not a certificate\n")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "extproc.cli", "serve", "--config", EXAMPLES),
            *("--grpc-address", f"127.0.0.1:{free_port()}", "--admin-address", f"127.0.0.1:{free_port()}"),
            *("--grpc-tls-cert", str(cert), "--grpc-tls-key", str(key)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    (line,) = [line for line in lines if line.get("event") == "cannot use the gRPC certificates"]
    assert CERT_PROBLEMS[problem] in line["error"], line
