"""Every error a client sees, 4xx or 5xx, in OpenAI's JSON shape: a message with no server
path and no library internals, the parameter it concerns, never a traceback."""

from __future__ import annotations

import logging

from editx_cli.guard import SECURITY_HEADERS

log = logging.getLogger("editx")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


def install(app) -> None:
    """The app's exception handlers: ApiError, Starlette's HTTP errors (404, 405, a body too
    large or too slow), request validation (400) and anything else (500, logged)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
              headers: dict | None = None):
        # the security headers here too: a 500 is answered outside the middleware that adds them
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                            status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return error(e.status, e.message, e.param, e.kind, e.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(_, e: HTTPException):  # 404, 405, a body too large or too slow
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error(e.status_code, str(e.detail), kind=kind, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_, e: RequestValidationError):
        first = e.errors()[0]
        if first.get("type") == "json_invalid":  # its loc is a character offset, not a parameter
            where = next((x for x in first.get("loc", ()) if isinstance(x, int)), None)
            why = (first.get("ctx") or {}).get("error", "JSON decode error")
            return error(400, f"the body is not valid JSON ({why}" + (f", at character {where})" if where is not None
                                                                       else ")"))
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "header", "path")]
        param = ".".join(loc) or None
        return error(400, f"{param}: {first.get('msg', 'invalid')}" if param else first.get("msg", "invalid"), param)

    @app.exception_handler(Exception)
    async def _internal(_, e: Exception):
        log.error("request failed: %s", e, exc_info=True)
        return error(500, "internal error (the server log has the details)", kind="server_error")

