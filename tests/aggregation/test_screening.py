"""Update screening (robustlr.aggregation.screening): exact outcomes on small inputs."""

import numpy as np
import pytest
import torch

from robustlr.aggregation.screening import array_problem, screen_updates


def test_norm_screen_uses_the_median_of_the_well_formed_rows():
    # norms 1, 2, 3, 100, NaN: the NaN row goes first; the median of (1, 2, 3, 100) is 2.5
    U = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [60.0, 80.0], [float("nan"), 1.0]])
    s = screen_updates(U, [10, 11, 12, 13, 14], norm_multiple=4)
    assert s.keep == [0, 1, 2]
    assert s.median_norm == 2.5
    assert [(r.row, r.agent, r.reason) for r in s.rejections] == [(4, 14, "non-finite"), (3, 13, "norm")]
    assert s.rejections[1].detail == "norm 100 > 4 x median 2.5"
    # at a multiple of 40 the 100-norm row (40 x 2.5 = 100, not above it) stays
    assert screen_updates(U, norm_multiple=40).keep == [0, 1, 2, 3]


def test_norm_screen_off_keeps_large_rows_and_a_single_row_has_no_reference():
    U = torch.tensor([[1.0, 0.0], [1e6, 0.0]])
    assert screen_updates(U).keep == [0, 1] and screen_updates(U).median_norm is None
    one = screen_updates(torch.tensor([[1e6, 0.0]]), norm_multiple=1.5)
    assert one.keep == [0] and one.rejections == [] and one.median_norm is None


def test_overflowing_norm_of_a_finite_row_is_not_called_non_finite():
    U = torch.tensor([[3e38, 3e38], [1.0, 0.0]])  # the first norm overflows float32, its entries are finite
    s = screen_updates(U)
    assert s.keep == [0, 1] and s.rejections == []


def test_rows_of_the_wrong_length_or_dtype_are_rejected_by_reason():
    rows = [torch.ones(3), torch.ones(4), torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.int64),
            torch.full((3,), float("inf"))]
    s = screen_updates(rows, ["a", "b", "c", "d", "e"], numel=3, dtype=torch.float32)
    assert s.keep == [0]
    assert [(r.agent, r.reason) for r in s.rejections] == [
        ("b", "shape"), ("c", "dtype"), ("d", "dtype"), ("e", "non-finite")]
    assert s.rejections[0].detail == "shape (4,), expected (3,)"


def test_a_matrix_of_another_dtype_rejects_every_row_and_bad_arguments_are_named():
    s = screen_updates(torch.ones(2, 3, dtype=torch.float64), dtype=torch.float32)
    assert s.keep == [] and [r.reason for r in s.rejections] == ["dtype", "dtype"]
    with pytest.raises(ValueError, match="norm_multiple must be a finite number >= 0"):
        screen_updates(torch.ones(2, 3), norm_multiple=-1)
    with pytest.raises(ValueError, match="agent_ids has 1 entries for 2 updates"):
        screen_updates(torch.ones(2, 3), [0])


def test_array_problem_names_the_first_problem():
    shapes, dtypes = [(2,), (1, 2)], [np.float32, np.int64]
    ok = [np.zeros(2, np.float32), np.zeros((1, 2), np.int64)]
    assert array_problem(ok, shapes, dtypes) is None
    assert array_problem(ok[:1], shapes, dtypes) == ("shape", "1 arrays, the model has 2")
    assert array_problem([np.zeros(3, np.float32), ok[1]], shapes, dtypes)[0] == "shape"
    assert array_problem([np.zeros(2, np.float16), ok[1]], shapes, dtypes) == (
        "dtype", "array 0 is float16, the model's is float32")
    assert array_problem([np.array([0, np.nan], np.float32), ok[1]], shapes, dtypes) == (
        "non-finite", "array 0 holds NaN or inf")
    # without dtypes: any floating point, but not integers
    assert array_problem([np.zeros(2, np.float64)], [(2,)]) is None
    assert array_problem([np.zeros(2, np.int32)], [(2,)]) == ("dtype", "array 0 is int32, not floating point")
