"""Wake-word-shaped ONNX models (features [1, 16, 96] -> score [1, 1]) encoded by hand: the onnx package is not a
dependency, and a protobuf this small is a few lines of varints."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FLOAT = 1  # TensorProto.FLOAT


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, dims: list[int]) -> bytes:
    shape = b"".join(_field(1, _field(1, d)) for d in dims)
    return _field(1, name) + _field(2, _field(1, _field(1, FLOAT) + _field(2, shape)))


def _tensor(name: str, value: np.ndarray | float) -> bytes:
    array = np.asarray(value, dtype="<f4")
    dims = b"".join(_field(1, d) for d in array.shape)
    return dims + _field(2, FLOAT) + _field(8, name) + _field(9, array.tobytes())


def _node(op: str, inputs: list[str], output: str, attributes: bytes = b"") -> bytes:
    return b"".join(_field(1, i) for i in inputs) + _field(2, output) + _field(3, output) + _field(4, op) + attributes


def _model(path: Path, nodes: list[bytes], initializers: dict[str, np.ndarray | float]) -> Path:
    graph = b"".join(_field(1, n) for n in nodes) + _field(2, path.stem)
    graph += b"".join(_field(5, _tensor(name, value)) for name, value in initializers.items())
    graph += _field(11, _value_info("x", [1, 16, 96])) + _field(12, _value_info("y", [1, 1]))
    path.write_bytes(_field(1, 7) + _field(8, _field(1, "") + _field(2, 13)) + _field(7, graph))  # IR 7, opset 13
    return path


def constant_onnx(path: Path, score: float) -> Path:
    """A model that always answers `score`: ReduceMean twice, then * 0 + score."""

    def reduce(inp: str, out: str, axis: int, keep: int) -> bytes:
        attrs = _field(5, _field(1, "axes") + _field(8, axis) + _field(20, 7))
        attrs += _field(5, _field(1, "keepdims") + _field(3, keep) + _field(20, 2))
        return _node("ReduceMean", [inp], out, attrs)

    nodes = [reduce("x", "m1", 2, 0), reduce("m1", "m2", 1, 1), _node("Mul", ["m2", "zero"], "z"),
             _node("Add", ["z", "score"], "y")]  # fmt: skip
    return _model(path, nodes, {"zero": 0.0, "score": score})


def linear_onnx(path: Path, seed: int = 0) -> Path:
    """A model whose score depends on every feature: sigmoid(flatten(x) @ w + b), with random weights."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((16 * 96, 1)) * 0.02).astype(np.float32)
    nodes = [_node("Flatten", ["x"], "f"), _node("MatMul", ["f", "w"], "m"), _node("Add", ["m", "b"], "z"),
             _node("Sigmoid", ["z"], "y")]  # fmt: skip
    return _model(path, nodes, {"w": w, "b": np.array([-1.0], np.float32)})
