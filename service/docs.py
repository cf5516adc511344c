"""`/docs` without the internet: Swagger UI's assets come from a pip package
(`swagger-ui-bundle-v2`, Swagger UI 5, which reads OpenAPI 3.1) and are served
by this app under `/docs/static/`, instead of FastAPI's default page, which
loads them from a public CDN. ReDoc (CDN only) is not served.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = "/docs/static"


def mount_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs from local assets; call on an app built with
    `docs_url=None, redoc_url=None`."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(STATIC, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC}/favicon-32x32.png",
        )
