"""The app factory: the serving objects on app.state, the guard before any route, the error
handlers, the routes."""

from __future__ import annotations

import contextlib

from editx_cli.guard import Guard, GuardOptions
from editx_cli.serve.errors import install
from editx_cli.serve.options import DOCS_POLICY, FORM_OVERHEAD, ServeOptions
from editx_cli.serve.page import ui_page
from editx_cli.serve.routes import router as model_routes
from editx_cli.serve.state import Serving
from editx_cli.serve.stepaudio_api import router as stepaudio_routes
from editx_cli.serve.voices import router as voice_routes


def create_app(options: ServeOptions):
    from fastapi import FastAPI

    serving = Serving(options)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        serving.close()

    about = {"title": "editx", "version": _version(), "lifespan": lifespan,
             "description": "Step-Audio-EditX: voice cloning and audio edits, OpenAI-compatible."}
    if options.docs:
        from fastapi_offline import FastAPIOffline  # Swagger UI's files from the package, no CDN

        app = FastAPIOffline(redoc_url=None, **about)
    else:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, **about)
    app.state.serving = serving
    app.state.page = ui_page(serving.engine_cls)
    if options.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["*"])
    # added last, so it runs first: hosts, origins, the key and body limits before any route
    app.add_middleware(Guard, options=GuardOptions(
        bind=options.host, allowed_hosts=options.allowed_hosts, cors_origins=options.cors_origins,
        api_key=options.api_key, max_body_bytes=options.max_upload_bytes * 4 // 3 + FORM_OVERHEAD,  # base64 in JSON
        body_timeout=options.body_timeout, body_deadline=options.body_deadline, policies=(("/docs", DOCS_POLICY),)))
    install(app)
    app.include_router(model_routes)
    app.include_router(voice_routes)
    app.include_router(stepaudio_routes)
    return app


def _version() -> str:
    from editx_cli import __version__

    return __version__
