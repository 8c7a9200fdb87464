"""The aipu model manifest: parsing, validation sentences, binding to driver tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compassd.executor.manifest import (
    ManifestError,
    TensorSpec,
    bind,
    load_manifest,
    manifest_path_for,
    parse_manifest,
)

GOOD = {
    "inputs": [{"name": "image", "dtype": "uint8", "shape": [1, 4, 4, 3]}],
    "outputs": [{"name": "scores", "dtype": "float32", "shape": [1, 10]}],
}


def test_a_good_manifest_binds_names_shapes_and_dtypes() -> None:
    m = parse_manifest(json.dumps(GOOD))
    inputs, outputs = bind(m, [(48, "uint8")], [(40, "float32")])
    assert inputs == [TensorSpec("image", "uint8", (1, 4, 4, 3))]
    assert outputs == [TensorSpec("scores", "float32", (1, 10))]
    assert outputs[0].to_amp() == {"name": "scores", "dtype": "float32", "shape": [1, 10]}


def test_without_a_manifest_tensors_are_flat_arrays_of_the_driver_dtype() -> None:
    inputs, outputs = bind(None, [(16, "float32"), (3, "int8")], [(6, "int16"), (5, "int16")])
    assert inputs == [TensorSpec("input0", "float32", (4,)), TensorSpec("input1", "int8", (3,))]
    assert outputs == [TensorSpec("output0", "int16", (3,)), TensorSpec("output1", "uint8", (5,))]


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"inputs": [], "outputs": [], "extra": 1}', "unknown keys \\['extra'\\]"),
        ('{"outputs": []}', "must have an 'inputs' list"),
        ('{"inputs": [3], "outputs": []}', r"inputs\[0\] must be an object"),
        ('{"inputs": [{"dtype": "int8", "shape": []}], "outputs": []}', "non-empty string 'name'"),
        (
            '{"inputs": [{"name": "a", "dtype": "int8", "shape": [1]},'
            ' {"name": "a", "dtype": "int8", "shape": [1]}], "outputs": []}',
            "'a' is used twice",
        ),
        (
            '{"inputs": [{"name": "a", "dtype": "str", "shape": [1]}], "outputs": []}',
            "numpy dtype name",
        ),
        (
            '{"inputs": [{"name": "a", "dtype": "int8", "shape": [-1]}], "outputs": []}',
            "non-negative",
        ),
        (
            '{"inputs": [{"name": "a", "dtype": "int8", "shape": [true]}], "outputs": []}',
            "non-negative",
        ),
        ('{"version": 2, "inputs": [], "outputs": []}', "reads version 1"),
    ],
)
def test_malformed_manifests_are_refused_with_a_sentence(text: str, sentence: str) -> None:
    with pytest.raises(ManifestError, match=sentence):
        parse_manifest(text, "the manifest aipu.json")


def test_a_manifest_that_does_not_fit_the_graph_says_which_tensor_and_sizes() -> None:
    m = parse_manifest(json.dumps(GOOD), "the manifest aipu.json")
    with pytest.raises(ManifestError, match="lists 1 inputs but the graph has 2"):
        bind(m, [(48, "uint8"), (1, "uint8")], [(40, "float32")])
    with pytest.raises(
        ManifestError, match=r"outputs\[0\] \('scores', float32\[1, 10\]\) takes 40 bytes.*has 20"
    ):
        bind(m, [(48, "uint8")], [(20, "float32")])


def test_manifest_files_live_beside_the_graph(tmp_path: Path) -> None:
    assert manifest_path_for(tmp_path / "aipu.bin") == tmp_path / "aipu.json"
    (tmp_path / "aipu.json").write_text(json.dumps(GOOD))
    assert load_manifest(tmp_path / "aipu.json").inputs[0].name == "image"
    with pytest.raises(ManifestError, match="cannot be read"):
        load_manifest(tmp_path / "missing.json")
