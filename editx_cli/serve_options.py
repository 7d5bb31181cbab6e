"""What a server is started with, each of its own settings declared once: a field of
ServeOptions whose declaration makes `editx serve`'s option too (cli_serve.py). Imports
nothing heavy: the command line reads it to build its help."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def option(default: Any, help: str, *, flag: str = "", range: tuple | None = None, kind: type | None = None,
           env: bool = True, scale: int = 1, many: bool = False) -> Any:
    """A field of ServeOptions that is also `editx serve`'s option: its name (`flag`, else
    --field-name), EDITX_FIELD_NAME (unless not `env`), its type and range, its help.
    `scale`: the option counts in units of this many (MB of bytes); `many`: repeated, or
    comma-separated."""
    return field(default=default, metadata={"help": help, "flag": flag, "range": range, "kind": kind, "env": env,
                                            "scale": scale, "many": many})


@dataclass(frozen=True)
class ServeOptions:
    """What a server is started with. The fields with help are `editx serve`'s options, made
    from these declarations (main.py); the rest come from options that other commands share."""

    engine: str = "stepaudio"
    engine_config: dict | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    voices_dir: Path = Path("voices")
    api_key: str | None = option(None, "Require `Authorization: Bearer KEY` on every endpoint but /healthz.")
    # the bound address: with the loopback names, the Host names answered
    host: str = option("127.0.0.1", "Address to bind; anything but loopback needs --api-key (or --insecure).")
    allowed_hosts: tuple[str, ...] = option(
        (), "More Host names to answer, comma-separated (a proxy's name; '*' for any). Besides these, only --host "
            "and the loopback names are answered (DNS rebinding).", many=True)
    cors_origins: tuple[str, ...] = option(
        (), "A web origin (scheme://host[:port]) whose pages may call the API; repeat for more. Requests that "
            "change state from any other origin are refused.", flag="--cors-origin", many=True)
    body_timeout: float = option(30.0, "Seconds a request's headers or body may stall before it is dropped.",
                                 range=(0.1, None))
    body_deadline: float = option(300.0, "Seconds a request's body may take in all (a byte now and then never "
                                         "stalls).", range=(1, None))
    docs: bool = option(True, "Serve /docs and /openapi.json (Swagger UI, from the installed fastapi-offline).")
    idle_unload: float = option(300.0, "Release the model (and its device memory) after this many idle seconds.",
                                range=(0.1, None))
    max_batch: int = option(16, "Concurrent requests decoded together.", range=(1, 256))
    max_queue: int = option(64, "Requests that may wait; past it, 503 with Retry-After.", range=(1, None))
    max_upload_bytes: int = option(50 * 2**20, "Largest upload, in MB.", flag="--max-upload-mb", kind=float,
                                   range=(0.01, None), scale=2**20, env=False)
    max_audio_seconds: float = option(300.0, "Longest upload; inputs longer than the model's window are cut and "
                                             "joined as batch does.", range=(0.5, None), env=False)
    max_audio_channels: int = 2  # with max_audio_seconds and 96 kHz, the decoded size an upload may have
    max_text_chars: int = option(5000, "Longest text a request may send.", range=(1, None), env=False)
    allow_url_fetch: bool = option(False, "Fetch the Step-Audio API's prompt_audio_url / input_audio_url (public "
                                          "addresses only, --max-upload-mb and --url-fetch-timeout bound each); "
                                          "refused without it.")
    url_fetch_timeout: float = option(30.0, "Seconds a URL fetch may take in all.", range=(0.1, None), env=False)
    whisper_model: str | None = None  # transcribe edits sent without audio_text (a resolved checkpoint or name)
    quality: dict | None = None  # qa, thresholds, max_retries: each response heard and scored (retried below)
