"""The HTTP API: JSON endpoints over one index, for other programs. Thin: it parses requests, calls
the Python API (:mod:`imgembed.api`) and renders JSON.

Endpoints (the OpenAPI description is at ``/openapi.json``, its page at ``/docs``):

    GET  /info                          what the index holds, and what the filters can choose from
    POST /search/image                  multipart upload ``file``; ``k`` and the filters as query parameters
    GET  /search/text?q=a+red+dress     CLIP backbones
    GET  /search/photo/{id}             the neighbours of a photo of the index
    GET  /photos/{id}                   a photo's metadata
    GET  /photos/{id}/thumbnail?size=N  a JPEG preview of an indexed photo
    GET  /thumbnail?path=/abs/path.jpg  the same, by path: only for a file recorded in the index
    GET  /duplicates?preset=copies      groups of copies (as imgembed duplicates; or ?threshold=0.95)

Filters (any search): ``under``, ``after``, ``before``, ``camera``, ``min_width``, ``ext`` (``jpg,heic``).

Safety: it listens on localhost unless told otherwise, and refuses to listen beyond it without a
bearer token (``--token-file``, ``$IMGEMBED_TOKEN``) unless ``--no-token`` says the network is
trusted. Uploads are held to the app's limits (:data:`imgembed.config.MAX_UPLOAD_MB`, checked on
the declared length and again on the bytes received; the query pixel limit) and decoded by the same
guarded reader; a bad upload gets a 4xx answer with the reason. Files are only ever read for
photos recorded in the index, looked up by id or by their exact recorded path.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name
# classes imported inside create_app (fastapi is an optional extra).

import hmac
import ipaddress
import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any

from imgembed.api import Index, Photo, open_index
from imgembed.config import DUPLICATE_PRESETS, MAX_UPLOAD_MB, ReaderCfg, query_reader_cfg
from imgembed.errors import BackboneError, ImageSkipped, StoreError
from imgembed.index.filters import Filters
from imgembed.ingest.cpu import use_query_threads
from imgembed.query.search import Hit
from imgembed.query.thumbnails import jpeg_bytes, thumbnail

logger = logging.getLogger(__name__)

MAX_K = 200  # results per query
THUMB_SIZES = (16, 1024)  # smallest and largest preview, in pixels


@dataclass
class ServeCfg:
    index: str
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token every request must carry; None: no check
    allow_no_token: bool = False  # listen beyond localhost without a token (a trusted network)
    device: str = "auto"
    max_upload_bytes: int = MAX_UPLOAD_MB * 2**20


class UploadTooLarge(Exception):
    pass


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(cfg: ServeCfg) -> None:
    """Refuse to listen beyond this machine without a token, unless told the network is trusted."""
    if not is_loopback(cfg.host) and not cfg.token and not cfg.allow_no_token:
        raise ValueError(f"--host {cfg.host} lets other machines search your photos and see them: give a bearer "
                         "token (--token-file FILE or $IMGEMBED_TOKEN), or --no-token on a trusted network")


def _limit_body(app, limit: int):
    """ASGI middleware: a request body over ``limit`` bytes is refused (413), by its declared length
    before any byte is read, else as soon as the bytes received pass the limit."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:  # + multipart framing
            from starlette.responses import JSONResponse

            return await JSONResponse({"detail": _too_large(int(declared), limit)}, 413)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit + 64 * 1024:
                raise UploadTooLarge(_too_large(seen, limit))
            return message

        return await app(scope, counted, send)

    return middleware


def _too_large(n: int, limit: int) -> str:
    return f"upload of {n / 2**20:.0f} MB is above the {limit / 2**20:.0f} MB limit"


def create_app(cfg: ServeCfg, index: Index | None = None):
    """The FastAPI application over ``cfg.index`` (or an already open ``index``), as an ASGI app.

    The model is loaded here, so that a model that does not match the index fails at start and the
    first query is as fast as the next.
    """
    from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
    from fastapi.responses import JSONResponse, Response

    ix = index or open_index(cfg.index, device=cfg.device)
    use_query_threads()
    if ix.info().count:
        ix.searcher.warm_up()
    model = threading.Lock()  # one embedding at a time; searches share the snapshot's lock
    reader_cfg = query_reader_cfg()  # the query images' pixel limit, as the app's
    reader_cfg.max_bytes = cfg.max_upload_bytes
    ix.searcher.reader_cfg = reader_cfg

    app = FastAPI(title="imgembed", version="1", description="Similar-photo search over one imgembed index.")

    async def auth(request: Request) -> None:
        if not cfg.token:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), cfg.token.encode()):
            raise HTTPException(401, "a valid bearer token is needed (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(UploadTooLarge)
    async def too_large(request, exc):
        return JSONResponse({"detail": str(exc)}, 413)

    def filters(under: str | None = None, after: str | None = None, before: str | None = None,
                camera: str | None = None, min_width: int | None = Query(None, ge=0),
                ext: str | None = Query(None, description="file types, comma-separated: jpg,heic")) -> Filters:
        try:
            return Filters(under=under, after=after, before=before, camera=camera, min_width=min_width, ext=ext or ())
        except ValueError as e:
            raise HTTPException(400, str(e)) from e

    def answer(run, f: Filters) -> dict:
        try:
            hits = run()
        except ImageSkipped as e:
            raise HTTPException(422, f"cannot use this image: {e}") from e
        except StoreError as e:
            raise HTTPException(404 if "not a photo" in str(e) or "no photo" in str(e) else 400, str(e)) from e
        except (ValueError, BackboneError) as e:
            raise HTTPException(400, str(e)) from e
        return {"filters": {k: v for k, v in asdict(f).items() if v not in (None, ())},
                "results": [_hit(h) for h in hits]}

    k_param = Query(10, ge=1, le=MAX_K, description="number of results")
    guard = [Depends(auth)]

    @app.get("/info", dependencies=guard)
    def info() -> dict:
        return {**asdict(ix.info()), "filters": ix.filter_choices()}

    @app.post("/search/image", dependencies=guard)
    def search_image(file: UploadFile = File(...), k: int = k_param, f: Filters = Depends(filters)) -> dict:
        data = file.file.read(cfg.max_upload_bytes + 1)
        if len(data) > cfg.max_upload_bytes:
            raise HTTPException(413, _too_large(len(data), cfg.max_upload_bytes))

        def run():
            with model:
                vec = ix.searcher.embed_image_bytes(data)
            return ix.searcher.search_vectors(vec, k, filters=f)[0]

        return answer(run, f)

    @app.get("/search/text", dependencies=guard)
    def search_text(q: str = Query(..., min_length=1, max_length=1000), k: int = k_param,
                    f: Filters = Depends(filters)) -> dict:
        def run():
            with model:
                return ix.text(q, k, f)

        return answer(run, f)

    @app.get("/search/photo/{photo_id}", dependencies=guard)
    def search_photo(photo_id: int, k: int = k_param, f: Filters = Depends(filters)) -> dict:
        return answer(lambda: ix.neighbours(photo_id, k, f), f)

    @app.get("/photos/{photo_id}", dependencies=guard)
    def photo(photo_id: int) -> dict:
        return _photo(_find(ix, photo_id))

    @app.get("/photos/{photo_id}/thumbnail", dependencies=guard, response_class=Response)
    def photo_thumbnail(photo_id: int, size: int = Query(256, ge=THUMB_SIZES[0], le=THUMB_SIZES[1])) -> Response:
        return _thumbnail(_find(ix, photo_id), size)

    @app.get("/thumbnail", dependencies=guard, response_class=Response)
    def path_thumbnail(path: str = Query(..., description="the absolute path of a photo recorded in the index"),
                       size: int = Query(256, ge=THUMB_SIZES[0], le=THUMB_SIZES[1])) -> Response:
        return _thumbnail(_find(ix, path), size)

    @app.get("/duplicates", dependencies=guard)
    def duplicates(preset: str = Query("copies", pattern="^(" + "|".join(DUPLICATE_PRESETS) + ")$"),
                   threshold: float | None = Query(None, ge=0.5, le=1.0)) -> dict:
        groups = ix.duplicates(preset, threshold)
        return {"preset": None if threshold is not None else preset, "threshold": threshold, "groups": [
            {"score": round(g.score, 6), "keeper": g.keeper, "reason": g.reason, "kind": g.kind,
             "photos": [_photo(p) for p in g.photos]} for g in groups]}

    def _thumbnail(p: Photo, size: int) -> Response:
        try:
            data = jpeg_bytes(thumbnail(p.row.path, size, ReaderCfg()))
        except ImageSkipped as e:
            raise HTTPException(410, f"no preview of photo {p.id}: {e}") from e
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    app.state.index = ix
    return _limit_body(app, cfg.max_upload_bytes)


def _find(ix: Index, photo: Any) -> Photo:
    from fastapi import HTTPException

    try:
        return ix.photo(photo)
    except StoreError as e:  # never read a file the index does not record
        raise HTTPException(404, "no such photo in the index") from e


def _photo(p: Photo) -> dict:
    m = p.meta
    return {"id": p.id, "path": p.path, "width": p.row.width, "height": p.row.height, "size": p.row.size,
            "taken": m.taken if m else None, "taken_from": m.taken_from if m else None,
            "camera": m.camera if m else None, "make": m.make if m else None, "model": m.model if m else None,
            "lat": m.lat if m else None, "lon": m.lon if m else None, "ext": m.ext if m else None,
            "thumbnail": f"/photos/{p.id}/thumbnail"}


def _hit(h: Hit) -> dict:
    return {**h.as_dict(), "thumbnail": f"/photos/{h.id}/thumbnail"}


def serve(cfg: ServeCfg) -> None:
    """Run the server until interrupted. Raises ValueError for an unsafe setting or a missing extra."""
    check_exposure(cfg)
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (uploads)
        import uvicorn
    except ImportError as e:
        raise ValueError(f"imgembed serve needs the serve extra ({e.name} is missing): "
                         "pip install 'imgembed[serve]'") from e
    app = create_app(cfg)
    print(f"serving {cfg.index} on http://{cfg.host}:{cfg.port} (API description: /docs, /openapi.json); "
          "Ctrl-C stops", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
