"""`editx serve`: one process, one engine, an OpenAI-compatible HTTP API that also speaks the
Step-Audio API.

    POST /v1/audio/speech   OpenAI's request shape: speak `input` in a registered voice; with
                            `step_audio`, the Step-Audio API's clone or edit; `stream: true`
                            sends the audio as it is made
    POST /v1/audio/speech/upload   the Step-Audio API's multipart form (payload + audio files)
    POST /v1/audio/edits    multipart audio + edit settings; returns the edited audio
    POST /v1/voices         register a voice: a reference clip and its transcript
    GET  /v1/voices, DELETE /v1/voices/{name}, GET /v1/tags
    GET  /v1/models, GET /healthz, OpenAPI docs at /docs

Requests are checked by the same validation as manifest rows (the same messages, naming
the request's field) and run as tasks of the batch loop, which takes them from the shared
Service as they arrive (lazy load, idle release, each request joining the decoding under
way): long inputs cut, QA, delivery as batch does it. Uploads go to a private temporary folder under names the server
picks; a client never names a path.

    app.py      the app factory         state.py   the serving objects, request -> task -> response
    uploads.py  uploads saved and checked          responses.py   what a response's headers say
    routes.py   speech, edits, models, the page, health
    stepaudio_api.py   the Step-Audio API's requests     fetch.py   audio by URL, public addresses only
    streaming.py       a response sent as it is made     voices.py  the voice store and its routes
    models.py   request bodies          errors.py  OpenAI's error shape
    options.py  what a server is started with         page.py    the web page
"""

from editx_cli.serve.app import create_app
from editx_cli.serve.options import ServeOptions

__all__ = ["ServeOptions", "create_app"]
