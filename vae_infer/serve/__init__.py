"""The model over HTTP and the latent-space explorer page (the `serve` extra: FastAPI and uvicorn).

    from vae_infer.serve import create_app, ServeConfig
    app = create_app("models/fashion-mnist", ServeConfig(max_rows=1024))   # an ASGI app

or from the shell: `vae-infer serve models/fashion-mnist`. Nothing here imports FastAPI until it is used, so the
CLI can say which extra to install when it is missing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import MissingExtraError
from .config import ServeConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

INSTALL_HINT = "pip install 'vae-infer[serve]'"


def require_extra() -> None:
    """Raise MissingExtraError naming the extra when FastAPI, uvicorn or simdjson (pysimdjson) is not installed."""
    import importlib

    missing = []
    for name in ("fastapi", "uvicorn", "simdjson"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise MissingExtraError(f"serving needs {' and '.join(missing)}, which {verb} not installed: {INSTALL_HINT}")


def create_app(model, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app for a model package (a VAEModel or a folder); see vae_infer.serve.app."""
    require_extra()
    from .app import create_app as _create

    return _create(model, config)


__all__ = ["ServeConfig", "create_app", "require_extra", "INSTALL_HINT"]
