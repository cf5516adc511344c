"""`/docs` works without the internet: the page names only assets this
server serves (Swagger UI from a pip package), and every one of them is
served. Outbound connections are refused for the whole test."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.test_http_support import running_service


@pytest.fixture
def no_internet(monkeypatch):
    connect = socket.socket.connect

    def local_only(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("/"):
            raise OSError(f"test is offline: refused connection to {address}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)


def test_swagger_ui_is_served_from_local_assets(tmp_path: Path, no_internet) -> None:
    with running_service(tmp_path) as svc:
        client = svc.client(None)
        page = client.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        html = page.text
        assert "SwaggerUIBundle" in html
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "an asset from another host"
        assert "cdn" not in html.lower()
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        assert {"/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"} <= set(assets)
        for asset in assets:
            served = client.get(asset)
            assert served.status_code == 200, asset
            assert len(served.content) > 500, asset
        script = client.get("/docs/static/swagger-ui-bundle.js")
        assert "javascript" in script.headers["content-type"] and len(script.content) > 1_000_000
        assert re.search(r"url: ['\"]/openapi.json['\"]", html)
        spec = client.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.1")  # Swagger UI 5 reads 3.1; 4 did not
        assert "seed" not in spec["info"]["description"].lower()
        assert "/docs" not in spec["paths"] and client.get("/redoc").status_code == 404
