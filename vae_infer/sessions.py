"""The one place that builds what runs a graph: onnxruntime sessions (options, threads, providers, device
checks) or, for backend="c", the graph compiled to a native library. VAEModel and train's export parity
check both create theirs through create_backend."""

from __future__ import annotations

import numbers
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from .errors import DeviceError
from .machine import available_cores

DEVICES = ("cpu", "cuda", "auto")
BACKENDS = ("onnxruntime", "c")  # "c": the graphs compiled to a native library (vae_infer.native)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class GraphRunner(Protocol):
    """What runs one graph (VAEModel.runners): an onnxruntime InferenceSession, or the C backend's NativeRunner."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray], run_options: Any = None
            ) -> list: ...

    def get_providers(self) -> list[str]: ...


def session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    """Explicit threads: onnxruntime's default thread count can oversubscribe small machines and run
    several times slower. One inter-op thread: our graphs are a chain with nothing to run in parallel.
    Spinning off by default: spinning threads burn a core between calls, which hurts the application
    embedding us; turn it on for back-to-back batch work."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
                                or threads < 1):
        raise DeviceError(f"threads must be a positive integer or None (all available cores), got {threads!r}")
    threads = None if threads is None else int(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or available_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    opts.log_severity_level = 3  # errors only: warnings about provider assignment are noise for users
    return opts


def create_session(
    model_bytes: bytes, device: str = "cpu", threads: int | None = None, spinning: bool = False
) -> tuple[ort.InferenceSession, str]:
    """A session on the requested device, and the device it really got ("cpu" or "cuda").

    device="cuda" never falls back silently: if CUDA is not the provider in use afterwards, it raises.
    device="auto" tries CUDA when onnxruntime offers it and otherwise uses the CPU."""
    if not isinstance(device, str) or device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    opts = session_options(threads, spinning)
    if model_bytes[4:8] == b"ORTM":  # the ORT flatbuffer format (a minimal-build model) rather than ONNX protobuf
        opts.add_session_config_entry("session.load_model_format", "ORT")
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise DeviceError(
            f"device='cuda' but this onnxruntime offers only {available}; install the gpu extra "
            f"(pip install 'vae-infer[gpu]') on a machine with an NVIDIA GPU, or use device='cpu'"
        )
    if device in ("cuda", "auto") and CUDA in available:
        try:
            session = ort.InferenceSession(model_bytes, sess_options=opts, providers=[CUDA, CPU])
            if session.get_providers()[0] == CUDA:
                return session, "cuda"
            problem = f"onnxruntime made the session with {session.get_providers()} instead"
        except Exception as e:  # onnxruntime raises its own untyped errors when CUDA libraries are missing
            problem = str(e)
        if device == "cuda":
            raise DeviceError(f"device='cuda' requested but CUDAExecutionProvider is not active: {problem}")
    session = ort.InferenceSession(model_bytes, sess_options=opts, providers=[CPU])
    return session, "cpu"


def create_backend(model_bytes: bytes, spec=None, backend: str = "onnxruntime", device: str = "cpu",
                   threads: int | None = None, spinning: bool = False, weights: str = "fp32"):
    """(runner, device actually used) for one graph. The runner has onnxruntime's session interface
    (run, get_inputs, get_outputs, get_providers) whichever backend made it."""
    if backend not in BACKENDS:
        raise DeviceError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if weights != "fp32" and backend != "c":
        raise DeviceError(f"weights={weights!r} is a C-backend option (backend='c'); for onnxruntime use "
                          f"variant='int8' or 'fp16'")
    if backend == "c":
        if device != "cpu":
            raise DeviceError(f"backend='c' runs on the CPU only, got device={device!r}; use backend='onnxruntime'")
        from .native import create_runner

        return create_runner(model_bytes, spec, threads=threads, weights=weights), "cpu"
    return create_session(model_bytes, device, threads, spinning)
