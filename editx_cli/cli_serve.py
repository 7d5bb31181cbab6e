"""`editx serve`: its options, made from ServeOptions' declarations where they are the
server's own, checked here before anything loads."""

from __future__ import annotations

from pathlib import Path

import click

from editx_cli.cli_options import (
    DEFAULT_ENGINE,
    MODEL_KEYS,
    WHISPER_HELP,
    engine_class,
    quality_of,
    setup,
    with_model_options,
    with_quality_options,
)
from editx_cli.errors import UsageError
from editx_cli.serve_options import ServeOptions


def _own_options(f):
    """ServeOptions' own fields as options: each declared once, with its field (serve_options.py),
    read without importing the server (FastAPI), so `--help` stays fast."""
    from dataclasses import MISSING, fields


    for field in reversed([x for x in fields(ServeOptions) if "help" in x.metadata]):
        meta, default = field.metadata, field.default if field.default is not MISSING else None
        name, flag = field.name, meta["flag"] or "--" + field.name.replace("_", "-")
        envvar = "EDITX_" + flag.lstrip("-").replace("-", "_").upper() if meta["env"] else None
        if isinstance(default, bool):
            if default:  # on unless turned off: --docs/--no-docs
                flag = f"{flag}/--no-{flag.lstrip('-')}"
            f = click.option(flag, name, envvar=envvar, is_flag=True, default=default, show_default=default,
                             help=meta["help"])(f)
            continue
        kind = meta["kind"] or (type(default) if default not in (None, ()) else str)
        lo, hi = meta["range"] or (None, None)
        kind = (click.IntRange(lo, hi) if kind is int else click.FloatRange(lo, hi)) if meta["range"] else kind
        scale, many = meta["scale"], meta["many"]
        shown = None if default in (None, ()) else default / scale if scale != 1 else default
        convert = None
        if many:  # repeated, and each may hold several, comma-separated
            def convert(ctx, param, value):
                return tuple(v.strip().rstrip("/") for vs in value for v in vs.split(",") if v.strip())
        elif scale != 1:
            def convert(ctx, param, value, scale=scale):
                return int(value * scale)
        f = click.option(flag, name, envvar=envvar, type=kind, multiple=many, default=() if many else shown,
                         show_default=shown is not None, help=meta["help"], callback=convert)(f)
    return f


@click.command()
@click.option("--engine", envvar="EDITX_ENGINE", default=DEFAULT_ENGINE, show_default=True,
              help="Engine behind the API.")
@click.option("--gpu", envvar="EDITX_GPU", type=click.IntRange(0), default=None, help="GPU index to run on.")
@click.option("--port", envvar="EDITX_PORT", type=click.IntRange(0, 65535), default=7860, show_default=True)
@click.option("--insecure", is_flag=True, help="Allow a non-loopback bind without an API key.")
@_own_options
@click.option("--voices-dir", envvar="EDITX_VOICES_DIR", type=click.Path(file_okay=False), default=None,
              help="Registered voices (default: the user data folder).")
@click.option("--cache-dir", envvar="EDITX_CACHE_DIR", type=click.Path(file_okay=False), default=None,
              help="Feature cache folder: the same one batch runs use by default.")
@click.option("--no-cache", is_flag=True, envvar="EDITX_NO_CACHE", help="Neither read nor write the cache.")
@click.option("--whisper-model", envvar="EDITX_WHISPER_MODEL", default=None,
              help=WHISPER_HELP + " Transcribes edits sent without audio_text (default: such edits are refused).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings only: no address line, no request log.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@with_quality_options
@with_model_options
def serve(engine: str, gpu: int | None, port: int, insecure: bool, voices_dir: str | None, cache_dir: str | None,
          no_cache: bool, whisper_model: str | None, quiet: bool, verbose: bool, qa: bool,
          retry_below: str | None, max_retries: int | None, **rest) -> None:
    """Serve the model over HTTP: an OpenAI-compatible API (/v1/audio/speech, /v1/audio/edits,
    /v1/voices, /v1/models) that also takes the Step-Audio API's requests (step_audio,
    /v1/audio/speech/upload, /v1/tags), /healthz and docs at /docs. One engine, loaded on the
    first request that needs it and released when idle. Needs editx[serve]."""
    import ipaddress

    setup({"verbose": verbose, "quiet": quiet, "gpu": gpu})
    model = {k: rest.pop(k) for k in list(rest) if k in MODEL_KEYS}
    host, api_key = rest["host"], rest["api_key"]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not api_key and not insecure:
        raise UsageError(f"--host {host}: serving beyond this machine needs --api-key (or EDITX_API_KEY); "
                         "--insecure to serve without one")
    try:
        import uvicorn

        from editx_cli import guard
        from editx_cli import serve as server
    except ImportError as e:
        raise UsageError(f"editx serve needs the serve extra ({e.name} is missing): "
                         "pip install 'editx[serve]'") from None
    engine_cls = engine_class(engine)
    config = {"gpu": gpu, "batch_size": rest["max_batch"], **model}
    problems = engine_cls.check_config(config)
    if problems:
        raise UsageError(f"--engine {engine}: " + "; ".join(problems))
    quality = quality_of({"qa": qa, "retry_below": retry_below, "max_retries": max_retries})
    if quality["qa"] and not whisper_model:
        raise UsageError("--qa and --retry-below hear each response: they need --whisper-model")
    if whisper_model:
        from editx_cli.transcribe import TranscriptionError, resolve

        try:
            whisper_model = resolve(whisper_model, allow_download=False)
        except TranscriptionError as e:
            raise UsageError(str(e)) from None
    if voices_dir is None:
        import platformdirs

        voices_dir = platformdirs.user_data_dir("editx") + "/voices"
    options = ServeOptions(engine=engine, engine_config=config, cache_dir=cache_dir, use_cache=not no_cache,
                                  voices_dir=Path(voices_dir), whisper_model=whisper_model, quality=quality,
                                  **{**rest, "api_key": api_key or None})
    app = server.create_app(options)
    # uvicorn's info level: the address it listens on, then a line per request
    uvicorn.run(app, host=host, port=port, log_level="debug" if verbose else "warning" if quiet else "info",
                http=guard.header_timeout_protocol(options.body_timeout))
