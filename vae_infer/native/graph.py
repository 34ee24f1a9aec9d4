"""Read an ONNX graph into the small dense-network form the C generator compiles.

Only what our exported graphs contain (and what other exporters make of the same layers) is accepted:
Gemm, or MatMul followed by Add of a constant bias; Relu, Sigmoid, Tanh, Identity; Constant nodes. The
graph takes one float32 input shaped (batch, features) with a fixed feature count, and gives float32
outputs shaped (batch, width). Every weight and bias that is compiled is finite. Anything else is refused
with an UnsupportedModelError naming the node, operator, attribute or dimension that cannot be compiled.

This reader is the one gate between a graph and the C generator, and it runs before any file is written.
Names in the graph (tensors, nodes) are used only to follow the data flow and, quoted with repr, in error
messages; the generator names everything by position (vae_infer.native.abi.argument_names, layer indices)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import MissingExtraError, ModelPackageError

SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Relu", "Sigmoid", "Tanh", "Identity", "Constant")
ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Identity": "identity"}


class UnsupportedModelError(ModelPackageError):
    """The graph is a valid model, but holds an operator, attribute or shape the C generator cannot compile."""


@dataclass
class Dense:
    """dst = act(src @ weight.T + bias): weight (out, in) float32, bias (out,) float32."""

    name: str
    src: str
    dst: str
    weight: np.ndarray
    bias: np.ndarray
    act: str | None = None  # "relu", "sigmoid" or "tanh" applied in the same pass

    @property
    def kind(self) -> str:
        return "dense"


@dataclass
class Elementwise:
    """dst = op(src), elementwise: "relu", "sigmoid", "tanh" or "identity" (a copy)."""

    name: str
    op: str
    src: str
    dst: str

    @property
    def kind(self) -> str:
        return "elementwise"


@dataclass
class Graph:
    input: tuple[str, int]  # (name, features)
    outputs: list[tuple[str, int]]  # (name, width) in the graph's order
    ops: list[Dense | Elementwise]
    widths: dict[str, int] = field(default_factory=dict)  # every activation value's width
    batch_name: str = "batch"

    def consumers(self, value: str) -> list[Dense | Elementwise]:
        return [op for op in self.ops if op.src == value]

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self.outputs]

    def parameter_count(self) -> int:
        return sum(op.weight.size + op.bias.size for op in self.ops if isinstance(op, Dense))


def import_onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise MissingExtraError(
            "the C backend reads ONNX graphs with the onnx package, which is not installed: "
            "pip install 'vae-infer[native]' (or pip install 'onnx>=1.15'), or use backend='onnxruntime'"
        ) from e
    return onnx, numpy_helper


def read_graph(onnx_bytes: bytes, where: str = "graph") -> Graph:
    """The dense network an ONNX model (bytes) computes, or UnsupportedModelError naming what is not supported."""
    onnx, numpy_helper = import_onnx()
    try:
        model = onnx.load_model_from_string(bytes(onnx_bytes))
    except Exception as e:  # onnx raises protobuf's DecodeError and others for bytes that are not a model
        raise ModelPackageError(f"{where}: not a readable ONNX model ({e})") from e
    return _Reader(model, onnx, numpy_helper, where).read()


class _Reader:
    def __init__(self, model, onnx, numpy_helper, where: str) -> None:
        self.g = model.graph
        self.onnx = onnx
        self.nh = numpy_helper
        self.where = where
        for imp in model.opset_import:
            if imp.domain not in ("", "ai.onnx"):
                raise UnsupportedModelError(
                    f"{where}: uses the operator set {imp.domain!r}; the C generator supports the standard "
                    f"ONNX operators only ({', '.join(SUPPORTED_OPS)})"
                )
        self.consts: dict[str, np.ndarray] = {}
        self.widths: dict[str, int] = {}
        self.ops: list[Dense | Elementwise] = []
        self.batch_name = "batch"

    def fail(self, text: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{self.where}: {text}")

    # -- shapes --------------------------------------------------------------------------------------
    def _dims(self, value_info) -> list[int | str | None]:
        t = value_info.type
        if not t.HasField("tensor_type"):
            raise self.fail(f"{value_info.name!r} is not a tensor; the C generator handles float32 tensors only")
        tt = t.tensor_type
        if tt.elem_type != self.onnx.TensorProto.FLOAT:
            dtype = self.onnx.TensorProto.DataType.Name(tt.elem_type)
            raise self.fail(f"{value_info.name!r} has element type {dtype}; expected FLOAT (float32)")
        if not tt.HasField("shape"):
            raise self.fail(f"{value_info.name!r} has no declared shape; expected (batch, features)")
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]

    def _batch_and_width(self, value_info, role: str) -> int | None:
        dims = self._dims(value_info)
        if len(dims) != 2:
            raise self.fail(
                f"the {role} {value_info.name!r} has shape {dims} (rank {len(dims)}); expected rank 2, "
                f"(batch, features)"
            )
        batch, width = dims
        if isinstance(batch, str):
            self.batch_name = batch
        elif batch not in (None, 0, 1):
            raise self.fail(f"the {role} {value_info.name!r} has a fixed batch of {batch}; expected a dynamic "
                            f"batch axis")
        if isinstance(width, int) and width > 0:
            return width
        if role == "output" and width is None:
            return None  # unknown: taken from the computation
        raise self.fail(
            f"dynamic shape: the {role} {value_info.name!r} has dimension 1 = {width!r}; the C generator needs a "
            f"fixed number of features (only the batch axis may be dynamic)"
        )

    # -- the graph -----------------------------------------------------------------------------------
    def _check_text(self) -> None:
        """Every name the reader follows is text: protobuf hands back bytes for a string field that is not
        valid UTF-8, which would otherwise pass as a different (and never equal) name."""
        g = self.g
        values = (*g.input, *g.output, *g.value_info)
        names = [g.name, *(i.name for i in g.initializer), *(v.name for v in values),
                 *(n for node in g.node for n in (node.name, node.op_type, node.domain, *node.input, *node.output)),
                 *(d.dim_param for v in values for d in v.type.tensor_type.shape.dim)]
        bad = sum(1 for n in names if not isinstance(n, str))
        if bad:
            raise ModelPackageError(f"{self.where}: {bad} of the graph's names are not valid UTF-8; a graph's names "
                                    f"must be text")

    def read(self) -> Graph:
        self._check_text()
        for init in self.g.initializer:
            self.consts[init.name] = self._array(init, init.name)
        inputs = [i for i in self.g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise self.fail(f"expected one graph input (batch, features), found {len(inputs)}: "
                            f"{[i.name for i in inputs]}")
        in_name = inputs[0].name
        in_width = self._batch_and_width(inputs[0], "input")
        assert in_width is not None, "only an output's width may be unknown"
        self.widths[in_name] = in_width
        out_names = [o.name for o in self.g.output]
        uses: dict[str, int] = {}
        for node in self.g.node:
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
        for name in out_names:
            uses[name] = uses.get(name, 0) + 1
        self.uses, self.out_names = uses, set(out_names)
        for node in self.g.node:
            self._node(node)
        outputs = []
        for o in self.g.output:
            declared = self._batch_and_width(o, "output")
            if o.name in self.consts:
                raise self.fail(f"the output {o.name!r} is a constant; the C generator computes outputs from the input")
            if o.name not in self.widths:
                raise self.fail(f"the output {o.name!r} is not computed by any node")
            if declared is not None and declared != self.widths[o.name]:
                raise self.fail(f"the output {o.name!r} is declared with {declared} features but the graph computes "
                                f"{self.widths[o.name]}")
            outputs.append((o.name, self.widths[o.name]))
        if not outputs:
            raise self.fail("the graph has no outputs")
        self._check_finite()
        return Graph(input=(in_name, self.widths[in_name]), outputs=outputs, ops=self.ops, widths=dict(self.widths),
                     batch_name=self.batch_name)

    def _array(self, tensor, name: str) -> np.ndarray:
        try:
            arr = self.nh.to_array(tensor)
        except Exception as e:  # external data that is missing, unknown types
            raise self.fail(f"cannot read the constant {name!r}: {e}") from e
        if arr.dtype != np.float32:
            raise self.fail(f"the constant {name!r} has dtype {arr.dtype}; the C generator supports float32 weights")
        return arr  # finite or not: what is compiled is checked once, per layer, in _check_finite

    def _check_finite(self) -> None:
        """Every compiled weight and bias is finite (after alpha and beta are applied, which can overflow). The
        error names the layer by its position, as the generated C does, never by a name from the graph."""
        for index, op in enumerate(self.ops):
            if not isinstance(op, Dense):
                continue
            for part, values in (("weight", op.weight), ("bias", op.bias)):
                bad = int(values.size - np.count_nonzero(np.isfinite(values)))
                if bad:
                    raise UnsupportedModelError(
                        f"{self.where} layer {index} {part} holds {bad} NaN or infinite value{'s' if bad > 1 else ''} "
                        f"(of {values.size}); the C generator compiles finite weights only: export the model again "
                        f"from weights that are finite")

    def _act(self, name: str, node) -> int:
        if name in self.consts:
            raise self.fail(f"node {node.name!r} ({node.op_type}) takes the constant {name!r} where the C generator "
                            f"expects the activation")
        if name not in self.widths:
            raise self.fail(f"node {node.name!r} ({node.op_type}) reads {name!r}, which no earlier node computes")
        return self.widths[name]

    def _const(self, name: str, node, what: str) -> np.ndarray:
        if name not in self.consts:
            raise self.fail(f"node {node.name!r} ({node.op_type}): the {what} {name!r} is computed at run time; the C "
                            f"generator needs it to be a constant (initializer)")
        return self.consts[name]

    def _attrs(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def _bias(self, c: np.ndarray, n: int, node, name: str) -> np.ndarray:
        if c.size == 1:
            return np.full(n, float(c.reshape(-1)[0]), np.float32)
        if c.shape in ((n,), (1, n)):
            return c.reshape(n).astype(np.float32)
        raise self.fail(f"node {node.name!r} ({node.op_type}): the bias {name!r} has shape {list(c.shape)}; "
                        f"expected [{n}] or [1, {n}] (broadcast over the batch)")

    def _fusable(self, value: str) -> Dense | None:
        """The Dense op that produced `value`, when its result is used only by the next node."""
        last = self.ops[-1] if self.ops else None
        if (isinstance(last, Dense) and last.dst == value and self.uses.get(value, 0) == 1
                and value not in self.out_names):
            return last
        return None

    def _node(self, node) -> None:
        op, name = node.op_type, node.name or f"{node.op_type[:40]}_{len(self.ops)}"
        if node.domain not in ("", "ai.onnx"):
            raise self.fail(f"unsupported operator {node.domain!r}.{op!r} (node {name!r}); the C generator supports "
                            f"{', '.join(SUPPORTED_OPS)}")
        if op == "Constant":
            attrs = self._attrs(node)
            if "value" not in attrs:
                raise self.fail(f"node {name!r} (Constant) uses {sorted(attrs)}; only the 'value' tensor form is "
                                f"supported")
            self.consts[node.output[0]] = self._array(attrs["value"], node.output[0])
            return
        if op not in SUPPORTED_OPS:
            shown = op if op.isascii() and op.isidentifier() else repr(op)
            raise self.fail(f"unsupported operator {shown} (node {name!r}); the C generator supports "
                            f"{', '.join(SUPPORTED_OPS)}")
        if len(node.output) != 1:
            raise self.fail(f"node {name!r} ({op}) has {len(node.output)} outputs; expected 1")
        dst = node.output[0]
        if op == "Gemm":
            self._gemm(node, name, dst)
        elif op == "MatMul":
            if len(node.input) != 2:
                raise self.fail(f"node {name!r} (MatMul) has {len(node.input)} inputs; expected 2")
            k = self._act(node.input[0], node)
            b = self._const(node.input[1], node, "right-hand matrix")
            if b.ndim != 2 or b.shape[0] != k:
                raise self.fail(f"node {name!r} (MatMul): the matrix {node.input[1]!r} has shape {list(b.shape)}; "
                                f"expected [{k}, n] for an input of {k} features")
            self._add_dense(name, node.input[0], dst, b.T, np.zeros(b.shape[1], np.float32))
        elif op == "Add":
            self._add(node, name, dst)
        else:
            src = node.input[0] if node.input else ""
            width = self._act(src, node)
            act = ACTIVATIONS[op]
            if self._attrs(node):
                raise self.fail(f"node {name!r} ({op}) has attributes {sorted(self._attrs(node))}; expected none")
            fused = self._fusable(src)
            if fused is not None and fused.act is None and act != "identity":
                fused.act, fused.dst = act, dst
            else:
                self.ops.append(Elementwise(name, act, src, dst))
            self.widths[dst] = width

    def _gemm(self, node, name: str, dst: str) -> None:
        a = self._attrs(node)
        if a.get("transA", 0):
            raise self.fail(f"node {name!r} (Gemm) has transA=1; the C generator supports Gemm with transA=0 "
                            f"(the activation as the left-hand matrix)")
        if len(node.input) < 2:
            raise self.fail(f"node {name!r} (Gemm) has {len(node.input)} inputs; expected 2 or 3")
        k = self._act(node.input[0], node)
        b = self._const(node.input[1], node, "weight")
        if b.ndim != 2:
            raise self.fail(f"node {name!r} (Gemm): the weight {node.input[1]!r} has shape {list(b.shape)}; "
                            f"expected a matrix")
        w = b if a.get("transB", 0) else b.T  # (out, in)
        if w.shape[1] != k:
            raise self.fail(f"node {name!r} (Gemm): the weight {node.input[1]!r} has shape {list(b.shape)} "
                            f"(transB={a.get('transB', 0)}), which does not take {k} input features")
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        n = w.shape[0]
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused by _check_finite, by layer
            if len(node.input) > 2 and node.input[2]:
                bias = self._bias(self._const(node.input[2], node, "bias"), n, node, node.input[2]) * np.float32(beta)
            else:
                bias = np.zeros(n, np.float32)
            weight = w if alpha == 1.0 else w * np.float32(alpha)
        self._add_dense(name, node.input[0], dst, weight, bias.astype(np.float32))

    def _add_dense(self, name: str, src: str, dst: str, weight: np.ndarray, bias: np.ndarray) -> None:
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.ops.append(Dense(name, src, dst, weight, np.ascontiguousarray(bias, dtype=np.float32)))
        self.widths[dst] = weight.shape[0]

    def _add(self, node, name: str, dst: str) -> None:
        if len(node.input) != 2:
            raise self.fail(f"node {name!r} (Add) has {len(node.input)} inputs; expected 2")
        x, c = node.input
        if x in self.consts:
            x, c = c, x
        if c not in self.consts:
            raise self.fail(f"node {name!r} (Add) adds two computed tensors ({x!r}, {c!r}); the C generator supports "
                            f"Add of a constant bias after MatMul or Gemm")
        width = self._act(x, node)
        bias = self._bias(self.consts[c], width, node, c)
        fused = self._fusable(x)
        if fused is None or fused.act is not None:
            raise self.fail(f"node {name!r} (Add) adds a bias to {x!r}, which is not the result of a MatMul or Gemm "
                            f"used only here; the C generator supports Add only as a layer's bias")
        with np.errstate(over="ignore", invalid="ignore"):  # refused by _check_finite
            fused.bias = (fused.bias + bias).astype(np.float32)
        fused.dst = dst
        self.widths[dst] = width
