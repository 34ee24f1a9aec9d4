"""Request and response bodies, with the Python API's names (images, z, mu, logvar, x_hat, scores, flags), so the
OpenAPI schema reads like the README. Values are checked by the library (vae_infer.inputs) exactly as for Python
callers; the schemas check only types (strictly, as Python does: "3" is not a number, true is not 1) and the
per-call options' ranges. JSON bodies are read by jsonbody.py, which checks these models in strict mode.

A request with an `application/x-npy` body sends its one array (images or z) as the body and the other fields
of the same schema as query parameters; its reply is an `.npz` with the response's array fields."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..anomaly.scores import SCORE_KINDS
from ..interpolation.paths import METHODS, SPACINGS
from ..work_limits import MAX_SAMPLES, MAX_STEPS

Rows = list[list[float]]
ImageRows = list[list[float]] | list[list[list[float]]] | list[list[list[list[float]]]]  # (n, h, w, 3): colour
Dtype = Literal["float32", "uint8"]
ScoreKind = Literal[SCORE_KINDS]  # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not silently ignored


# -- options: the fields besides the array (query parameters when the body is .npy) ---------------------------


class ImageOptions(Strict):
    dtype: Dtype = Field("float32", description="float32: values in [0, 1]; uint8: integers 0..255 (divided by the "
                                                "model's input scale)")


class ScoreOptions(ImageOptions):
    kind: ScoreKind = Field("nelbo", description="the score (vae_infer.anomaly.SCORE_KINDS); higher = less likely")
    samples: int | None = Field(None, ge=1, le=MAX_SAMPLES,
                                description="draws of z per image, k for iwae (default: 1; 64 for iwae, as Python)")
    seed: int | None = Field(0, ge=0, description="seed of the draws; null for fresh randomness")


class DetectOptions(ImageOptions):
    kind: ScoreKind | None = Field(None, description="the score; default the calibration's default kind")
    quantile: float | None = Field(None, gt=0, lt=1, description="flag above this quantile of the calibration scores")
    threshold: float | None = Field(None, allow_inf_nan=False, description="flag above this score (no quantile)")
    samples: int | None = Field(None, ge=1, le=MAX_SAMPLES, description="default: what the calibration used")
    seed: int | None = Field(0, ge=0)


# -- requests ---------------------------------------------------------------------------------------------------


class EncodeRequest(ImageOptions):
    images: ImageRows = Field(description="(n, height*width*channels) or (n, height, width, channels) images; "
                                          "gray also (n, height, width)")


class ReconstructRequest(EncodeRequest):
    pass


class DecodeRequest(Strict):
    z: Rows = Field(description="(n, latent_size) latent codes")


class SampleRequest(Strict):
    n: int = Field(1, ge=1, description="how many images to sample from the prior (at most the row limit)")
    seed: int | None = Field(None, ge=0, description="the same seed gives the same images")


class ScoreRequest(ScoreOptions):
    images: ImageRows


class DetectRequest(DetectOptions):
    images: ImageRows


class InterpolateRequest(Strict):
    image_a: list[float] | list[list[float]] | list[list[list[float]]] | None = Field(
        None, description="one image (features,), (h, w) or (h, w, channels)")
    image_b: list[float] | list[list[float]] | list[list[list[float]]] | None = None
    z_a: list[float] | None = Field(None, description="or one latent code (latent_size,) at each end")
    z_b: list[float] | None = None
    dtype: Dtype = "float32"
    steps: int = Field(10, ge=2, le=MAX_STEPS, description="points on the path, both ends included")
    method: Literal[METHODS] = "linear"  # type: ignore[valid-type]
    spacing: Literal[SPACINGS] = "data"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def one_pair(self) -> InterpolateRequest:
        images = (self.image_a is not None, self.image_b is not None)
        codes = (self.z_a is not None, self.z_b is not None)
        if not (all(images) and not any(codes)) and not (all(codes) and not any(images)):
            raise ValueError("pass either image_a and image_b, or z_a and z_b")
        return self


class LoginRequest(Strict):
    token: str = Field(max_length=1024, description="the token the server was started with (--token)")


# -- responses --------------------------------------------------------------------------------------------------


class EncodeResponse(BaseModel):
    mu: Rows = Field(description="(n, latent_size) means of q(z|x)")
    logvar: Rows = Field(description="(n, latent_size) log-variances of q(z|x)")


class ImagesResponse(BaseModel):
    x_hat: Rows = Field(description="(n, height*width) decoded images in [0, 1]")


class ScoreResponse(BaseModel):
    kind: str
    scores: list[float]


class DetectResponse(BaseModel):
    kind: str
    threshold: float
    flags: list[bool]
    scores: list[float]


class InterpolateResponse(BaseModel):
    method: str
    z: Rows = Field(description="(steps, latent_size) codes along the path")
    x_hat: Rows = Field(description="(steps, height*width) their decoded images")
    metrics: dict[str, Any] = Field(description="vae_infer.interpolation.paths.path_metrics of the codes")


class Projection(BaseModel):
    kind: str = Field(description='"pca"')
    mean: list[float] = Field(description="(latent_size,) the codes' mean")
    components: Rows = Field(description="(latent_size, 2) W: the two principal directions, orthonormal columns")
    points: Rows = Field(description="(n, 2) the codes drawn on the plane: (z - mean) @ W; a plane point p stands "
                                     "for the code mean + W @ p")


class LatentMapResponse(BaseModel):
    z: Rows = Field(description="(n, latent_size) codes of a sample of a data set")
    labels: list[int] | None = Field(description="their class labels, when known")
    class_names: list[str] | None
    source: str
    projection: Projection | None = Field(None, description="for a latent over 2-D: the 2-D PCA projection the "
                                                            "map is drawn in; null for 1-D and 2-D latents")


class ExamplesResponse(BaseModel):
    images: list[list[int]] = Field(description="(n, height*width) uint8 test images")
    labels: list[int] | None
    class_names: list[str] | None
    source: str


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in ((400, "bad input"), (401, "missing or wrong bearer token"), (409, "the model cannot do this"),
                       (413, "body or row count over the limit"), (422, "schema"),
                       (503, "busy or timed out; see Retry-After"))
}
