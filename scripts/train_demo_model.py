"""Train the model that ``compass demo`` runs and write it into compassd/demo/.

The data is scikit-learn's digits (8x8 greyscale images of handwritten digits, 10
classes, shipped inside scikit-learn: no network). The model is a small multilayer
perceptron (64 -> 32 ReLU -> 10 softmax) trained by scikit-learn, exported to ONNX by
building the graph by hand with the ``onnx`` package (MatMul, Add, Relu, Softmax, ArgMax;
opset 13, IR version 8, so that older ONNX Runtime releases load it).

It writes ``digits.onnx`` and ``samples.npz`` (held-out test images and their labels).
scikit-learn is needed only here, not at run time::

    .venv/bin/pip install scikit-learn onnx
    .venv/bin/python scripts/train_demo_model.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "compassd" / "demo"
SAMPLES = 200
HIDDEN = 32
SEED = 0


def train(samples: int = SAMPLES, seed: int = SEED) -> tuple[list[np.ndarray], np.ndarray,
                                                             np.ndarray, float]:
    """Weights [W1, b1, W2, b2], the held-out images (float32, scaled to 0..1) and their
    labels, and the accuracy scikit-learn measured on them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=samples, random_state=seed, stratify=y)
    mlp = MLPClassifier(hidden_layer_sizes=(HIDDEN,), activation="relu", max_iter=600,
                        random_state=seed)
    mlp.fit(x_train, y_train)
    weights = [mlp.coefs_[0], mlp.intercepts_[0], mlp.coefs_[1], mlp.intercepts_[1]]
    return ([w.astype(np.float32) for w in weights], x_test, y_test,
            float(mlp.score(x_test, y_test)))


def to_onnx(weights: list[np.ndarray]) -> bytes:
    """The MLP as an ONNX model: input "image" float32 (N, 64); outputs "probabilities"
    float32 (N, 10) and "digit" int64 (N,)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = weights
    initializers = [numpy_helper.from_array(a, name) for a, name in
                    ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("MatMul", ["image", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["digit"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "digits-mlp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("digit", TensorProto.INT64, ["N"])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              ir_version=8, producer_name="compassd train_demo_model.py")
    model.doc_string = "scikit-learn digits, 64 -> 32 ReLU -> 10; see compassd/demo."
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="Folder to write into.")
    args = parser.parse_args()
    weights, images, labels, accuracy = train()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "digits.onnx").write_bytes(to_onnx(weights))
    np.savez_compressed(args.out / "samples.npz", images=images, labels=labels)
    print(f"wrote {args.out / 'digits.onnx'} and {args.out / 'samples.npz'}:"
          f" {len(labels)} held-out samples, accuracy {accuracy:.1%}")


if __name__ == "__main__":
    main()
