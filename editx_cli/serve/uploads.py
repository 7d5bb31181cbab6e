"""A server's uploads: each file, base64 string or fetched URL saved under a name the server
picks, alone in a private folder of the scratch folder, its size bounded while it streams and
its header checked before a sample is decoded."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from editx_cli import audio
from editx_cli.serve.errors import ApiError
from editx_cli.serve.options import RATES, UPLOAD_SUFFIXES
from editx_cli.serve_options import ServeOptions

if TYPE_CHECKING:
    from fastapi import UploadFile


class Uploads:
    def __init__(self, scratch: Path, options: ServeOptions, private: Callable[[str], str]) -> None:
        """`private(message)`: the message with the server's own paths taken out."""
        self.scratch, self.options, self.private = scratch, options, private

    async def save_upload(self, upload: UploadFile, field: str) -> Path:
        """An uploaded file in a private folder of its own, its size bounded while it streams and
        its header checked before a sample is decoded."""
        suffix = Path(upload.filename or "").suffix.lower()
        path = self.new(suffix)
        size = 0
        with open(path, "wb") as f:
            while block := await upload.read(1 << 20):
                size += len(block)
                if size > self.options.max_upload_bytes:
                    shutil.rmtree(path.parent, ignore_errors=True)
                    raise ApiError(413, f"the upload is over {self.options.max_upload_bytes} bytes", field)
                f.write(block)
        return self.checked(path, field)

    async def save_inline(self, text: str, field: str) -> Path:
        """Audio sent as base64 (a data: URL's prefix allowed), kept as an upload is."""
        import base64
        import binascii

        text = text.split(",", 1)[1] if text.startswith("data:") else text
        if len(text) * 3 // 4 > self.options.max_upload_bytes + 2:
            raise ApiError(413, f"the audio is over {self.options.max_upload_bytes} bytes", field)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "not base64", field) from None
        return self.saved(data, field)

    async def save_fetched(self, url: str, field: str) -> Path:
        """Audio from a URL, when the server was started with --allow-url-fetch."""
        from editx_cli.serve.fetch import FetchError, fetch

        if not self.options.allow_url_fetch:
            raise ApiError(400, "this server does not fetch URLs (start it with --allow-url-fetch); "
                                "send the audio inline or as a file", field)
        try:
            data = await asyncio.to_thread(fetch, url, self.options.max_upload_bytes, self.options.url_fetch_timeout)
        except FetchError as e:
            raise ApiError(400, str(e), field) from None
        return self.saved(data, field)

    def saved(self, data: bytes, field: str) -> Path:
        if len(data) > self.options.max_upload_bytes:
            raise ApiError(413, f"the audio is over {self.options.max_upload_bytes} bytes", field)
        path = self.new("")
        path.write_bytes(data)
        return self.checked(path, field)

    def new(self, suffix: str) -> Path:
        """A name the server picks for an upload, alone in a private folder (removed with it)."""
        folder = Path(tempfile.mkdtemp(dir=self.scratch))
        return folder / ("upload" + (suffix if suffix in UPLOAD_SUFFIXES else ""))

    def checked(self, path: Path, field: str) -> Path:
        try:
            problem = self.problem(audio.probe(path, count_up_to=self.options.max_audio_seconds))
        except audio.AudioError as e:
            problem = self.private(f"not usable audio: {e}")
        if problem:
            shutil.rmtree(path.parent, ignore_errors=True)
            raise ApiError(400, problem, field)
        return path

    def problem(self, info: audio.AudioInfo) -> str | None:
        """What is wrong with an upload's header, before a sample of it is decoded."""
        if not RATES[0] <= info.samplerate <= RATES[1]:
            return f"a sample rate of {info.samplerate} Hz; from {RATES[0]} to {RATES[1]} Hz are taken"
        if info.seconds > self.options.max_audio_seconds:
            return f"the audio is {info.seconds:.1f} s; at most {self.options.max_audio_seconds:g} s"
        most = int(self.options.max_audio_seconds * 96000 * self.options.max_audio_channels)
        if info.frames * info.channels > most:
            return (f"the audio decodes to {info.frames * info.channels} samples ({info.channels} channels at "
                    f"{info.samplerate} Hz); at most {most}")
        return None
