"""The named exceptions of the project. Every message says what was expected, what was found, and how to fix it."""


class VaeInferError(Exception):
    """Base class: catch this to handle every error the library raises on purpose."""


class InputError(VaeInferError, ValueError):
    """An array passed to the model has the wrong shape, dtype, values or count."""


class ModelPackageError(VaeInferError):
    """A model package is missing, corrupt, truncated, tampered with, or does not match its manifest."""


class DeviceError(VaeInferError):
    """The requested device or execution provider is unknown or not available."""


class DataError(VaeInferError):
    """A data file cannot be found, read or verified."""


class MissingExtraError(VaeInferError, ImportError):
    """An optional dependency (an extra such as `viz` or `gpu`) is needed for this and is not installed."""
