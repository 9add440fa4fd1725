"""The studio's Play mode routes (see :mod:`.app` for the list and :mod:`.streams` for the streams).

Every route passes the studio's guard like the others (Host, Origin on POST, the per-run token): the events are
Server-Sent Events over plain HTTP, so the guard sees them (a WebSocket would bypass an HTTP-only middleware).
Position and steer take JSON (``application/json``: a page of another origin cannot send that without a CORS
preflight, which the studio never answers).
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..config import UserError
from .jobs import KINDS, Busy
from .streams import PLAY_FIELDS, StreamEntry, StreamManager
from .upload import UploadError, check_midi


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def play_routes(streams: StreamManager, max_upload_bytes: int, max_whole_notes: int) -> list[Route]:
    """The Play mode's routes over one stream manager."""
    from .app import complete_multipart, read_body

    # --- Play mode -----------------------------------------------------------------------------------
    def stream_of(request: Request) -> StreamEntry:
        entry = streams.get(request.path_params["stream"])
        if entry is None:
            raise HTTPException(404, "no such stream (it was stopped long ago, or the server restarted); press Play")
        return entry

    async def json_body(request: Request) -> dict[str, Any]:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise HTTPException(415, "send JSON (the page does this)")
        try:
            body = await read_body(request, 0)
            data = json.loads(body or b"{}")
        except UploadError:
            raise HTTPException(413, "the request is too large (it holds a few settings)") from None
        except ValueError:
            raise HTTPException(400, "the request is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "send a JSON object")
        return data

    async def create_stream(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            return error("send the form as multipart/form-data (the page does this)", 415)
        try:
            body = await read_body(request, max_upload_bytes)
        except UploadError as exc:
            return error(str(exc), exc.status)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        if content_type.startswith("multipart/form-data") and not complete_multipart(body, content_type):
            return error("the form arrived incomplete (no closing boundary: the upload was cut off?); press Play "
                         "again")
        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=len(PLAY_FIELDS) + 4)
        except Exception as exc:  # noqa: BLE001 - malformed multipart, too many parts
            return error(f"could not read the form: {exc}")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        prompt = None
        upload = form.get("prompt")
        if isinstance(upload, UploadFile) and (upload.filename or upload.size):
            name = Path(upload.filename or "prompt.mid").name
            data = await upload.read()
            await upload.close()
            try:
                check_midi(data, name, max_upload_bytes, max_whole_notes=max_whole_notes)
            except UploadError as exc:
                return error(str(exc), exc.status)
            prompt = data
        try:
            entry = await run_in_threadpool(streams.start, fields, prompt)
        except UserError as exc:
            return error(str(exc))
        except Busy as exc:
            return error(str(exc), 503)
        return JSONResponse({"id": entry.id, "url": f"api/streams/{entry.id}", "seed": entry.seed,
                             "settings": entry.settings, "ahead_bars": entry.stream.ahead_bars}, status_code=201)

    async def stream_status(request: Request) -> Response:
        entry = stream_of(request)
        streams.touch(entry)
        return JSONResponse(entry.snapshot())

    async def stream_events(request: Request) -> Response:
        entry = stream_of(request)
        stream = entry.stream
        query = request.query_params
        try:
            limit = int(query["bars"]) if query.get("bars") else None
            if query.get("from"):
                start = int(query["from"])
            elif request.headers.get("last-event-id", "").isdigit():
                start = int(request.headers["last-event-id"]) + 1
            else:  # a page that (re)connects without a position: from the bar now playing
                start = int(math.floor(stream.played_bars))
        except ValueError:
            return error("from and bars must be whole numbers of bars")

        async def events() -> AsyncIterator[str]:
            streams.connect(entry, +1)
            try:
                yield "retry: 1000\n\n"
                index, sent, quiet = start, 0, 0.0
                while True:
                    bars = stream.bars_from(index)
                    for bar in bars:
                        yield f"id: {bar.index}\nevent: bar\ndata: {json.dumps(bar.to_dict())}\n\n"
                        index, sent = bar.index + 1, sent + 1
                        if limit is not None and sent >= limit:
                            return
                    if not bars and not stream.alive:
                        yield f"event: end\ndata: {json.dumps(entry.snapshot())}\n\n"
                        return
                    streams.touch(entry)
                    if bars:
                        quiet = 0.0
                        continue
                    await asyncio.sleep(0.05)
                    quiet += 0.05
                    if quiet >= 2.0:  # a comment line now and then: a proxy or the browser sees the line alive
                        quiet = 0.0
                        yield ": ping\n\n"
            finally:
                streams.connect(entry, -1)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def stream_position(request: Request) -> Response:
        entry = stream_of(request)
        data = await json_body(request)
        try:
            bar = float(data.get("bar", 0))
        except (TypeError, ValueError):
            return error("bar: a number of bars played")
        if not math.isfinite(bar) or bar < 0:
            return error("bar: a number of bars played (>= 0)")
        streams.touch(entry)
        entry.stream.played(bar)
        return JSONResponse({"status": entry.stream.status, "bars": entry.stream.bars_written,
                             "played_bars": entry.stream.played_bars})

    async def stream_steer(request: Request) -> Response:
        entry = stream_of(request)
        data = await json_body(request)
        streams.touch(entry)
        try:
            record = await run_in_threadpool(entry.stream.steer, data)
        except UserError as exc:
            return error(str(exc), 409 if "not playing" in str(exc) else 400)
        entry.settings.update(record["settings"])
        return JSONResponse(record)

    async def stream_stop(request: Request) -> Response:
        entry = stream_of(request)
        await run_in_threadpool(streams.stop, entry, "stopped by its page")
        return JSONResponse(entry.snapshot())

    async def stream_midi(request: Request) -> Response:
        entry = stream_of(request)
        streams.touch(entry)
        bars = request.query_params.get("bars")
        if bars is not None and not bars.isdigit():
            return error("bars: a whole number of bars")
        try:
            data = await run_in_threadpool(entry.stream.midi_bytes, int(bars) if bars else None)
        except UserError as exc:
            return error(str(exc), 409)
        return Response(data, media_type=KINDS["mid"],
                        headers={"Content-Disposition": f'attachment; filename="stream_{entry.id}.mid"'})

    return [
        Route("/api/streams", create_stream, methods=["POST"]), Route("/api/streams/{stream}", stream_status),
        Route("/api/streams/{stream}/events", stream_events),
        Route("/api/streams/{stream}/position", stream_position, methods=["POST"]),
        Route("/api/streams/{stream}/steer", stream_steer, methods=["POST"]),
        Route("/api/streams/{stream}/stop", stream_stop, methods=["POST"]),
        Route("/api/streams/{stream}/midi", stream_midi),
    ]
