"""The prediction service: FastAPI around the shared predictor and lake writer.

`edgeloop serve` runs it on uvicorn. Every prediction, with its query image,
is spooled durably before the answer goes out and flushed to the lake's
`predictions` table in the background (see `edgeloop.prodlog`). A newly
promoted model (the latest promoted row of `models`) is picked up without
dropping a request: each request uses the model it started with.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import os
import threading
import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from edgeloop import lsrle
from edgeloop.imaging import ImageDecodeError, decode_image, encode_png, image_size
from edgeloop.lake import Lake, LakeError
from edgeloop.predictor import Predictor
from edgeloop.prodlog import (
    LakeWriter,
    PredictionEvent,
    PredictionLog,
    Spool,
    feedback_row,
    new_request_id,
)
from edgeloop.registry import TrainedModel, load_model, promoted_row

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGELOOP_API_TOKEN"
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class ServeError(RuntimeError):
    """The server cannot start (no model, no token...)."""


def load_token(project: str | Path = ".") -> str | None:
    """The API token: `EDGELOOP_API_TOKEN`, else `conf/local/credentials.yml`.

    The credentials file holds ``edgeloop_api: {token: ...}``.
    """
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token
    path = Path(project) / "conf" / "local" / "credentials.yml"
    if path.is_file():
        creds = yaml.safe_load(path.read_text()) or {}
        token = (creds.get("edgeloop_api") or {}).get("token")
        if token:
            return str(token)
    return None


@dataclass
class ServeConfig:
    """How the service runs.

    Attributes:
        lake_root: The lake: models are read, predictions written, here only.
        token: Bearer token; None only with `insecure`.
        insecure: Allow running without a token.
        model_path: A model folder (`weights.pt` + `metadata.json`) to serve
            instead of the promoted model; disables hot reload.
        max_upload_bytes: Larger uploads get 413.
        max_image_pixels: Larger images (by their header) get 413.
        log_predictions: Spool and store every prediction (on in production).
        reload_seconds: How often the registry is checked for a new promoted
            model.
        flush_seconds: How often the spool is flushed to Delta.
        condition_tags: The tag vocabulary feedback may use (plus `other`).
    """

    lake_root: str = "data/lake"
    token: str | None = None
    insecure: bool = False
    model_path: str | None = None
    max_upload_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    log_predictions: bool = True
    reload_seconds: float = 2.0
    flush_seconds: float = 2.0
    condition_tags: tuple[str, ...] | None = None
    fsync: bool = True


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve; swapped as a whole on reload."""

    version: str
    iteration: int
    predictor: Predictor
    metadata: dict[str, Any]
    card_uri: str | None = None


def _load_loaded(model: TrainedModel, card_uri: str | None = None) -> LoadedModel:
    meta = dict(model.metadata)
    return LoadedModel(
        version=model.version,
        iteration=int(meta.get("iteration", 0)),
        predictor=model.predictor(batch_size=8),
        metadata=meta,
        card_uri=card_uri,
    )


class ModelHolder:
    """Holds the served model and swaps in a newly promoted one atomically."""

    def __init__(self, lake: Lake, model_path: str | None = None) -> None:
        self.lake = lake
        self.model_path = model_path
        self._current: LoadedModel | None = None
        self._models_version: int | None = None
        self.reloads = 0

    @property
    def current(self) -> LoadedModel:
        if self._current is None:
            raise ServeError("no model loaded")
        return self._current

    def load(self) -> LoadedModel:
        if self.model_path:
            from edgeloop.datasets import TrainedModelDataset

            model = TrainedModelDataset(path=self.model_path).load()
            self._current = _load_loaded(model)
        else:
            self.check_for_new()
            if self._current is None:
                raise ServeError(
                    f"no promoted model in the lake at {self.lake.root}: run "
                    "`kedro run` first, or pass --model PATH"
                )
        log.info("serving model %s", self._current.version)
        return self._current

    def check_for_new(self) -> bool:
        """Loads the latest promoted model if the registry changed. True if swapped."""
        if self.model_path:
            return False
        version = self.lake.version("models")
        if version is None or version == self._models_version:
            return False
        row = promoted_row(self.lake.read("models", version=version))
        self._models_version = version
        if row is None or (
            self._current is not None and row["model_version"] == self._current.version
        ):
            return False
        loaded = _load_loaded(load_model(self.lake, row), card_uri=row["card_uri"])
        previous = self._current
        self._current = loaded  # one reference swap: requests keep their model
        if previous is not None:
            self.reloads += 1
            log.info("hot reload: %s -> %s", previous.version, loaded.version)
        return True


@dataclass
class Metrics:
    """Prometheus counters, kept by hand (text exposition format 0.0.4)."""

    requests: Counter = field(default_factory=Counter)
    latency_counts: list[int] = field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1)
    )
    latency_sum_ms: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, endpoint: str, status: int, latency_ms: float | None) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1
            if latency_ms is not None:
                self.latency_counts[bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
                self.latency_sum_ms += latency_ms

    def render(self, *, spool_depth: int, model_version: str, reloads: int) -> str:
        with self.lock:
            lines = [
                "# HELP edgeloop_requests_total Requests by endpoint and status.",
                "# TYPE edgeloop_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(
                    f'edgeloop_requests_total{{endpoint="{endpoint}",'
                    f'status="{status}"}} {n}'
                )
            lines += [
                "# HELP edgeloop_predict_latency_seconds Prediction latency.",
                "# TYPE edgeloop_predict_latency_seconds histogram",
            ]
            cumulative = 0
            for bound, n in zip(LATENCY_BUCKETS_MS, self.latency_counts, strict=False):
                cumulative += n
                lines.append(
                    f'edgeloop_predict_latency_seconds_bucket{{le="{bound / 1000}"}} '
                    f"{cumulative}"
                )
            cumulative += self.latency_counts[-1]
            lines += [
                f'edgeloop_predict_latency_seconds_bucket{{le="+Inf"}} {cumulative}',
                f"edgeloop_predict_latency_seconds_sum {self.latency_sum_ms / 1000}",
                f"edgeloop_predict_latency_seconds_count {cumulative}",
                "# HELP edgeloop_spool_depth Records spooled, not yet in Delta.",
                "# TYPE edgeloop_spool_depth gauge",
                f"edgeloop_spool_depth {spool_depth}",
                "# HELP edgeloop_model_reloads_total Hot reloads of the model.",
                "# TYPE edgeloop_model_reloads_total counter",
                f"edgeloop_model_reloads_total {reloads}",
                "# HELP edgeloop_model_info The model being served.",
                "# TYPE edgeloop_model_info gauge",
                f'edgeloop_model_info{{model_version="{model_version}"}} 1',
            ]
        return "\n".join(lines) + "\n"


class FeedbackIn(BaseModel):
    request_id: str | None = Field(default=None, max_length=64)
    image_id: str | None = Field(default=None, max_length=64)
    verdict: str
    comment: str | None = Field(default=None, max_length=2000)
    tags: list[str] = Field(default_factory=list, max_length=20)


class Service:
    """The state behind the app: model holder, spools, writers, background loop."""

    def __init__(self, config: ServeConfig) -> None:
        if not config.token and not config.insecure:
            raise ServeError(
                f"no API token configured: set {TOKEN_ENV} or put "
                "edgeloop_api: {token: ...} in conf/local/credentials.yml "
                "(or pass --insecure for a local experiment)"
            )
        self.config = config
        self.lake = Lake(config.lake_root)
        self.holder = ModelHolder(self.lake, config.model_path)
        self.metrics = Metrics()
        self.predictions: PredictionLog | None = None
        self.feedback_spool: Spool | None = None
        self.feedback_writer = LakeWriter(self.lake, "feedback", max_rows=256)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loaded = self.holder.load()
        spool_root = Path(self.lake.root) / "_spool"
        if self.config.log_predictions:
            self.predictions = PredictionLog(
                self.lake,
                loaded.predictor.class_names,
                spool=Spool(spool_root / "predictions", fsync=self.config.fsync),
            )
        self.feedback_spool = Spool(spool_root / "feedback", fsync=self.config.fsync)
        replayed = self.flush()  # replay whatever a previous run left
        if replayed:
            log.info("replayed %d spooled records into the lake", replayed)
        self._thread = threading.Thread(target=self._loop, name="flusher", daemon=True)
        self._thread.start()

    def flush(self) -> int:
        n = 0
        if self.predictions is not None:
            n += self.predictions.flush_spool()
        if self.feedback_spool is not None:

            def consume(lines: list[str]) -> None:
                rows = []
                for line in lines:
                    row = json.loads(line)
                    row["ts"] = datetime.fromisoformat(row["ts"])
                    rows.append(row)
                self.feedback_writer.add(rows)
                self.feedback_writer.flush()

            n += self.feedback_spool.drain(consume)
        return n

    def _loop(self) -> None:
        # Lower this thread's CPU priority (Linux: per-thread nice), so moving
        # records to Delta never competes with predictions on a busy CPU.
        with contextlib.suppress(AttributeError, OSError):  # not Linux / not allowed
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        next_reload = time.monotonic() + self.config.reload_seconds
        while not self._stop.wait(self.config.flush_seconds):
            try:
                self.flush()
            except Exception:  # keep serving; the spool keeps the records
                log.exception("flushing the spool to the lake failed; will retry")
            if time.monotonic() >= next_reload:
                next_reload = time.monotonic() + self.config.reload_seconds
                try:
                    self.holder.check_for_new()
                except Exception:
                    log.exception("checking the registry for a new model failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()
        for spool in (
            self.predictions.spool if self.predictions else None,
            self.feedback_spool,
        ):
            if spool is not None:
                spool.close()

    def spool_depth(self) -> int:
        spools = [self.feedback_spool]
        if self.predictions is not None:
            spools.append(self.predictions.spool)
        return sum(s.depth() for s in spools if s is not None)


def create_app(config: ServeConfig) -> FastAPI:
    """The FastAPI app. The service starts (model load, spool replay) on startup."""
    from contextlib import asynccontextmanager

    service = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="edgeloop",
        summary="Segmentation predictions, logged to the lake, with feedback.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service

    def require_token(request: Request) -> str:
        if config.token is None:
            return "anonymous"
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), config.token.encode()
        ):
            raise HTTPException(
                401,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return request.headers.get("x-client-id", "default")[:64]

    @app.middleware("http")
    async def count_requests(request: Request, call_next):  # noqa: ANN001, ANN202
        length = request.headers.get("content-length")
        if (
            request.url.path == "/v1/predict"
            and length
            and length.isdigit()
            and int(length) > config.max_upload_bytes + 64 * 1024
        ):
            response = JSONResponse(
                {
                    "detail": f"request of {length} bytes is over the limit of "
                    f"{config.max_upload_bytes} bytes"
                },
                status_code=413,
            )
        else:
            response = await call_next(request)
        if request.url.path != "/v1/predict":
            service.metrics.observe(request.url.path, response.status_code, None)
        return response

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model_version": service.holder.current.version}

    @app.get("/v1/model")
    def model_summary(_: str = Depends(require_token)) -> dict[str, Any]:
        loaded = service.holder.current
        meta = loaded.metadata
        summary = {
            "model_version": loaded.version,
            "iteration": loaded.iteration,
            "architecture": meta.get("architecture"),
            "classes": meta.get("class_names"),
            "input_size": meta.get("input_size"),
            "n_params": meta.get("n_params"),
            "val_score": meta.get("val_score"),
            "card_uri": loaded.card_uri,
        }
        if loaded.card_uri:
            try:
                card = json.loads(service.lake.get_blob(loaded.card_uri))
                summary["results"] = {
                    k: card.get("results", {}).get(k)
                    for k in ("metric", "score", "miou", "pixel_accuracy")
                }
                summary["gate"] = card.get("gate", {}).get("reasons")
                summary["intended_use"] = card.get("intended_use")
                summary["limitations"] = card.get("limitations")
            except (OSError, ValueError, LakeError) as err:
                summary["card_error"] = str(err)
        return summary

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return service.metrics.render(
            spool_depth=service.spool_depth(),
            model_version=service.holder.current.version,
            reloads=service.holder.reloads,
        )

    @app.post("/v1/predict")
    def predict(
        file: Annotated[UploadFile, File(description="The image (PNG or JPEG).")],
        mask_format: Annotated[str, Query(pattern="^(png|ls_rle)$")] = "png",
        # A default, not Annotated: the dependency is a closure, which string
        # annotations (from __future__) cannot resolve.
        client: str = Depends(require_token),  # noqa: B008
    ) -> dict[str, Any]:
        start = time.perf_counter()
        status = 500
        try:
            result = _predict(file, mask_format, client, start)
            status = 200
            return result
        except HTTPException as err:
            status = err.status_code
            raise
        finally:
            latency = (time.perf_counter() - start) * 1000
            service.metrics.observe(
                "/v1/predict", status, latency if status == 200 else None
            )

    def _predict(
        file: UploadFile, mask_format: str, client: str, start: float
    ) -> dict[str, Any]:
        ctype = (file.content_type or "").split(";")[0].strip().lower()
        if not ctype.startswith("image/") and ctype != "application/octet-stream":
            raise HTTPException(
                415, f"content type {ctype or '(none)'!r} is not an image (image/*)"
            )
        data = file.file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(
                413, f"image is over the limit of {config.max_upload_bytes} bytes"
            )
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        try:
            width, height = image_size(data)
            if width * height > config.max_image_pixels:
                raise HTTPException(
                    413,
                    f"image is {width}x{height}; the limit is "
                    f"{config.max_image_pixels} pixels",
                )
            image = decode_image(data)
        except ImageDecodeError as err:
            raise HTTPException(422, f"corrupt or unsupported image: {err}") from err
        loaded = service.holder.current  # this request's model, even if swapped
        pred = loaded.predictor.predict([image])[0]
        request_id = new_request_id()
        latency_ms = (time.perf_counter() - start) * 1000
        if service.predictions is not None:
            service.predictions.record(
                PredictionEvent.of_query(
                    data,
                    image,
                    request_id=request_id,
                    ts=datetime.now(UTC),
                    model_version=loaded.version,
                    iteration=loaded.iteration,
                    mask=pred.mask,
                    scores=pred.scores,
                    latency_ms=latency_ms,
                    source="api",
                    client=client,
                )
            )
        names = loaded.predictor.class_names
        body: dict[str, Any] = {
            "request_id": request_id,
            "model_version": loaded.version,
            "classes": list(names),
            "scores": pred.scores,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "mask_format": mask_format,
        }
        if mask_format == "png":
            body["mask"] = base64.b64encode(encode_png(pred.mask)).decode("ascii")
        else:
            body["mask"] = {
                name: lsrle.encode(pred.mask == k)
                for k, name in enumerate(names)
                if (pred.mask == k).any()
            }
        return body

    @app.post("/v1/feedback")
    def feedback(
        body: FeedbackIn,
        client: str = Depends(require_token),  # noqa: B008
    ) -> Any:
        try:
            row = feedback_row(
                verdict=body.verdict,
                request_id=body.request_id,
                image_id=body.image_id,
                comment=body.comment,
                tags=body.tags,
                client=client,
                vocabulary=config.condition_tags,
            )
        except ValueError as err:
            raise HTTPException(422, str(err)) from err
        service.feedback_spool.append(
            json.dumps({**row, "ts": row["ts"].isoformat()}, separators=(",", ":"))
        )
        return {"feedback_id": row["feedback_id"], "status": "recorded"}

    return app
