"""The gRPC listener's certificate checks: validity read from the certificate's DER, and
a certificate outside it refused with the date."""

from __future__ import annotations

import datetime
import re
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from extproc.server.grpc import GrpcTls, certificate_validity
from tests.support.certs import make_certs, reissue_server


def test_the_validity_is_the_certificates_own(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    parsed = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    not_before, not_after = certificate_validity(str(certs.server_cert))
    assert (not_before, not_after) == (parsed.not_valid_before_utc, parsed.not_valid_after_utc)


def test_a_certificate_outside_its_validity_is_refused_with_the_date(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    tls = GrpcTls(str(certs.server_cert), str(certs.server_key), str(certs.ca))
    tls.check()  # valid now
    _, not_after = certificate_validity(str(certs.server_cert))
    with pytest.raises(ssl.SSLError, match=re.escape(f"expired at {not_after.isoformat()}")):
        tls.check(now=not_after + datetime.timedelta(seconds=1))
    with pytest.raises(ssl.SSLError, match="not valid before"):
        tls.check(now=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
    expired = reissue_server(certs, tmp_path / "old", expired=True)
    with pytest.raises(ssl.SSLError, match="expired at"):
        GrpcTls(str(expired.server_cert), str(expired.server_key)).check()
