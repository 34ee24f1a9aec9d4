"""Run a variational autoencoder exported as an ONNX model package: no torch needed.

    import vae_infer
    model = vae_infer.load("models/fashion-mnist")
    mu, logvar = model.encode(images)
"""

from .errors import DataError, DeviceError, InputError, MissingExtraError, ModelPackageError, VaeInferError
from .model import VAEModel, load
from .package.manifest import FORMAT_VERSION, Manifest

__version__ = "0.1.0"
__all__ = [
    "load", "VAEModel", "Manifest", "FORMAT_VERSION",
    "VaeInferError", "InputError", "ModelPackageError", "DeviceError", "DataError", "MissingExtraError",
]
