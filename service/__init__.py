"""The HTTP service: collector, counts, bucket queries and charts, ops routes.

`service.app.build_app` assembles a FastAPI app from injected parts;
`service.runner.start_http_server` runs it on uvicorn in a background thread;
`daemon.http_commands` wires both into the CLI (`serve`, `users add`).
"""
