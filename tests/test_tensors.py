"""How tensors are described on the wire (compassd.tensors): dtypes, shapes, specs, rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from compassd.protocol.errors import TensorMismatch
from compassd.tensors import (
    DTYPES,
    TensorSpec,
    byte_view,
    dtype_name,
    empty_tensors,
    parse_dtype,
    shape_fits,
    shape_text,
    tensor_rows,
)

CARRIED = st.sampled_from(sorted(DTYPES))
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def arrays_of(dtype: str) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.dtype(dtype), SHAPES)


ARRAYS = CARRIED.flatmap(arrays_of)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_carried_dtype_name_parses_to_that_dtype(name: str) -> None:
    assert parse_dtype(name) == np.dtype(name)
    assert dtype_name(parse_dtype(name)) == name


@pytest.mark.parametrize(
    "text", ["float128", "<f4", "f4", "object", "str", "complex64", "", "__import__('os')",
             "[('a', 'i4')]", 5, None],
)
def test_a_name_outside_the_table_is_refused_without_being_evaluated(text: object) -> None:
    with pytest.raises(ValueError, match="is not a tensor dtype this system carries") as e:
        parse_dtype(text)  # type: ignore[arg-type]
    assert repr(text) in str(e.value) and "float32" in str(e.value)


def test_dtype_name_is_the_native_name_and_refuses_what_cannot_cross() -> None:
    assert dtype_name(">f4") == "float32"  # byte order is not part of the name
    assert dtype_name(np.bool_) == "bool"
    for bad in ("U3", "O", "c8", [("a", "i4")], ("i4", (2,)), "M8[s]"):
        with pytest.raises(ValueError, match="only bool, integer and float tensors"):
            dtype_name(bad)


@pytest.mark.parametrize(
    "shape, text",
    [((), "()"), ((3,), "(3,)"), ((-1, 3, 224, 224), "(?, 3, 224, 224)"), ([-1], "(?,)")],
)
def test_shape_text_writes_a_tuple_with_a_question_mark_for_any_size(
    shape: tuple[int, ...], text: str
) -> None:
    assert shape_text(shape) == text


@given(SHAPES)
def test_shape_text_of_a_fixed_shape_is_how_python_writes_the_tuple(
    shape: tuple[int, ...]
) -> None:
    assert shape_text(shape) == str(tuple(shape))


def test_a_spec_describes_itself_and_is_made_from_the_wires_rows() -> None:
    rows = [{"name": "image", "shape": [-1, 3], "dtype": "uint8"},
            {"name": "scale", "shape": [], "dtype": "float32"}]
    specs = TensorSpec.from_rows(rows)
    assert specs == [TensorSpec("image", (-1, 3), "uint8"), TensorSpec("scale", (), "float32")]
    assert [s.describe() for s in specs] == ["uint8 (?, 3)", "float32 ()"]


def test_a_spec_checks_an_arrays_dtype_rank_and_fixed_dimensions() -> None:
    spec = TensorSpec("image", (-1, 3), "uint8")
    spec.check(np.zeros((5, 3), np.uint8), "m")
    spec.check(np.zeros((0, 3), np.uint8), "m")
    with pytest.raises(TensorMismatch, match=r"Input 'image' of model m is int8 but the model"
                       r" expects uint8; convert it with .astype\('uint8'\)"):
        spec.check(np.zeros((5, 3), np.int8), "m")
    with pytest.raises(TensorMismatch, match=r"has shape \(5, 4\) but the model expects"
                       r" \(\?, 3\)"):
        spec.check(np.zeros((5, 4), np.uint8), "m")
    with pytest.raises(TensorMismatch, match=r"has shape \(3,\)"):
        spec.check(np.zeros(3, np.uint8), "m")


def test_a_spec_whose_dtype_text_is_unknown_fits_no_array() -> None:
    with pytest.raises(TensorMismatch, match="expects float99"):
        TensorSpec("x", (1,), "float99").check(np.zeros(1, np.float32), "m")


@given(st.lists(ARRAYS, max_size=4))
def test_rows_and_byte_runs_rebuild_the_same_arrays(arrays: list[np.ndarray]) -> None:
    names = [f"t{i}" for i in range(len(arrays))]
    rows = tensor_rows(names, arrays)
    assert [row["name"] for row in rows] == names
    received = empty_tensors(rows)
    for sent, got in zip(arrays, received, strict=True):
        assert got.dtype == sent.dtype and got.shape == sent.shape
        run = bytes(byte_view(sent))
        assert run == sent.tobytes()
        byte_view(got)[:] = run
        np.testing.assert_array_equal(got, sent)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"name": "y", "dtype": "float128", "shape": [2], "nbytes": 32},
         "output 'y' has dtype 'float128' or shape [2] that numpy cannot make"),
        ({"name": "y", "dtype": "int8", "shape": [2, -1], "nbytes": 0},
         "output 'y' has dtype 'int8' or shape [2, -1] that numpy cannot make"
         " (a negative dimension)"),
        ({"name": "y", "dtype": "int8", "shape": ["two"], "nbytes": 2},
         "output 'y' has dtype 'int8' or shape ['two'] that numpy cannot make"),
        ({"name": "y", "dtype": "int32", "shape": [2, 3], "nbytes": 6},
         "output 'y' is announced as 6 bytes, but int32 (2, 3) is 24"),
        ({"name": "y", "dtype": "uint8", "shape": [1 << 40, 1 << 40], "nbytes": 1},
         "is announced as 1 bytes, but uint8"),
    ],
)
def test_a_bad_row_is_refused_naming_the_tensor_before_anything_is_allocated(
    row: dict[str, object], message: str
) -> None:
    good = {"name": "x", "dtype": "int8", "shape": [1], "nbytes": 1}
    with pytest.raises(ValueError) as e:
        empty_tensors([good, row])
    assert message in str(e.value)


def test_the_kind_of_tensor_is_named_in_a_refusal() -> None:
    with pytest.raises(ValueError, match="^input 'x' is announced"):
        empty_tensors([{"name": "x", "dtype": "int8", "shape": [2], "nbytes": 3}], "input")


@given(SHAPES, st.data())
def test_a_shape_fits_a_spec_that_fixes_it_or_leaves_any_of_its_dimensions_open(
    shape: tuple[int, ...], data: st.DataObject
) -> None:
    opened = tuple(data.draw(st.sampled_from([d, -1])) for d in shape)
    assert shape_fits(shape, opened)
    assert not shape_fits((*shape, 1), opened)  # another rank never fits
    if shape:
        grown = (shape[0] + 1, *shape[1:])
        assert shape_fits(grown, opened) == (opened[0] < 0)
