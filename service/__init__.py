"""The HTTP service: collector, counts, bucket queries and charts, ops routes.

`service.app.build_app` assembles a FastAPI app from injected parts and typed
settings (`service.settings.ServiceSettings`); `service.runner.start_http_server`
runs it on uvicorn in a background thread. The composition root builds the
app (`config.http_service`); `daemon.http_commands` runs it (`serve`,
`users add`). Nothing here reads configuration.
"""
