"""A reference for the generated code in numpy: the graph evaluated in float64 with the same (fp16- or
int8-rounded) weights and the same int8 activation steps, to check the C code tightly for every format."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .graph import Dense, Graph
from .weights import effective_weight, int8_dot_dense, uses_int8_dot


def evaluate(graph: Graph, x: np.ndarray, weights: str = "fp32") -> list[np.ndarray]:
    """What the generated code computes for x, in float64 numpy with the same (quantized) weights: the
    outputs in the graph's order. Used to check generated code tightly, whatever the weight format."""
    values = {graph.input[0]: np.asarray(x, dtype=np.float64)}
    acts: dict[str | None, Callable[[np.ndarray], np.ndarray]] = {
        None: lambda v: v,
        "identity": lambda v: v,
        "relu": lambda v: np.maximum(v, 0.0),
        "sigmoid": lambda v: np.exp(-np.logaddexp(0.0, -v)),
        "tanh": np.tanh,
    }
    for op in graph.ops:
        src = values[op.src]
        if isinstance(op, Dense) and uses_int8_dot(weights, op.weight.shape[1], op.weight.shape[0]):
            values[op.dst] = acts[op.act](int8_dot_dense(src, op.weight, op.bias))
        elif isinstance(op, Dense):
            w = effective_weight(op.weight, weights).astype(np.float64)
            values[op.dst] = acts[op.act](src @ w.T + op.bias.astype(np.float64))
        else:
            values[op.dst] = acts[op.op](src)
    return [values[name] for name in graph.output_names]
