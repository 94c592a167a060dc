"""Attacks on the update (robustlr.attacks.model) and trojan placement: exact values on small inputs."""

import doctest

import pytest
import torch

import robustlr.attacks.model as model_attacks
import robustlr.attacks.trojans as trojans
from robustlr.attacks.dba import dba_parts
from robustlr.attacks.model import UpdateAttack, craft_updates, top_coordinates
from robustlr.attacks.trojans import (
    placement_offset,
    shift_mask,
    trojan_contrast,
    trojan_mask,
)


@pytest.mark.parametrize("module", [model_attacks, trojans])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_boosting_scales_trainable_coordinates_only():
    P = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
    trainable = torch.tensor([True, True, False])  # the last one a batch-norm buffer
    out = craft_updates(P, UpdateAttack(boost=4.0), trainable=trainable)
    assert torch.equal(out, torch.tensor([[4.0, -8.0, 3.0], [2.0, 0.0, -1.0]]))
    assert torch.equal(P, torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]]))  # not modified


def test_stealth_projects_onto_the_clean_norm_after_boosting():
    P = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # norms 5 and 0.5
    C = torch.tensor([[0.0, 2.0], [0.0, 10.0]])  # clean norms 2 and 10
    out = craft_updates(P, UpdateAttack(boost=2.0, stealth="project"), clean=C)
    # row 0: boosted to (6, 8), norm 10 > 2: scaled to norm 2 -> (1.2, 1.6); row 1: (0.6, 0.8), norm 1 <= 10: kept
    torch.testing.assert_close(out, torch.tensor([[1.2, 1.6], [0.6, 0.8]]))
    out = craft_updates(P, UpdateAttack(stealth="project", stealth_multiple=2.0), clean=C)
    torch.testing.assert_close(out, torch.tensor([[2.4, 3.2], [0.3, 0.4]]))


def test_adaptive_sign_sends_clean_updates_except_on_the_top_coordinates():
    P = torch.tensor([[1.0, 5.0, 0.0, 2.0], [3.0, 1.0, 0.0, 2.0]])
    C = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 0.0, -1.0, 1.0]])
    # |mean P - mean C| = |2-1|, |3-0|, |0-0|, |2-1| = 1, 3, 0, 1: top 2 of 4 = coordinate 1, then 0 (tie with 3, lower index)
    assert top_coordinates(P, C, 0.5).tolist() == [0, 1]
    out = craft_updates(P, UpdateAttack(adaptive="sign", top_fraction=0.5, boost=2.0), clean=C)
    # coordinates 0, 1: the mean poisoned update (2, 3) x 2 for both agents; 2, 3: each agent's clean update
    assert torch.equal(out, torch.tensor([[4.0, 6.0, 1.0, 1.0], [4.0, 6.0, -1.0, 1.0]]))


def test_adaptive_scale_boosts_only_the_top_coordinates_and_skips_buffers():
    P = torch.tensor([[1.0, 5.0, 9.0], [3.0, 1.0, 9.0]])
    C = torch.zeros(2, 3)
    # the buffer (coordinate 2) moves most but is never chosen; top 1 of the 2 trainable: coordinate 1 (3 > 2)
    out = craft_updates(P, UpdateAttack(adaptive="scale", boost=10.0, top_fraction=0.5), clean=C,
                        trainable=torch.tensor([True, True, False]))
    assert torch.equal(out, torch.tensor([[1.0, 50.0, 9.0], [3.0, 10.0, 9.0]]))


def test_attack_arguments_are_checked():
    with pytest.raises(ValueError, match="boost must be a finite number > 0"):
        UpdateAttack(boost=0.0)
    with pytest.raises(ValueError, match="adaptive = 'scale' multiplies the chosen coordinates by boost"):
        UpdateAttack(adaptive="scale")
    with pytest.raises(ValueError, match="stealth must be one of none, project"):
        UpdateAttack(stealth="pgd")
    with pytest.raises(ValueError, match="needs the corrupt agents' clean updates"):
        craft_updates(torch.ones(1, 2), UpdateAttack(stealth="project"))
    assert not UpdateAttack().active and UpdateAttack(boost=2.0).active and not UpdateAttack(boost=2.0).needs_clean


def test_corner_and_explicit_placements():
    plus = trojan_mask("plus")  # rows 5..9, columns 3..7
    assert placement_offset(plus, "default") == (0, 0)
    assert placement_offset(plus, "top-left") == (-3, -1)  # box to rows 2..6, columns 2..6
    assert placement_offset(plus, "top-right") == (-3, 18)  # columns 21..25: 2 in from the right edge
    assert placement_offset(plus, "centre") == (6, 8)  # (28 - 5) // 2 = 11
    assert placement_offset(plus, "0,0") == (-5, -3)
    moved = shift_mask(plus, placement_offset(plus, "23,23"))
    assert int(moved.sum()) == 9 and bool(moved[25, 27]) and not moved[:23].any()
    with pytest.raises(ValueError, match="does not fit a 28x28 image; choose a row <= 23 and a column <= 23"):
        placement_offset(plus, "24,0")
    with pytest.raises(ValueError, match="trojan_position must be one of"):
        placement_offset(plus, "middle")


def test_dba_parts_move_with_the_whole_trojan():
    full = trojan_mask("plus")
    parts = dba_parts("plus", 4, 28, 28)
    off = placement_offset(full, "bottom-right")
    moved = [shift_mask(p, off) for p in parts]
    union = torch.stack(moved).any(0)
    assert torch.equal(union, shift_mask(full, off))


def test_trojan_contrast_is_the_mean_change_on_the_trojan_pixels():
    x = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    x[1] = 255
    x[2, 0, 5:10, 5] = 51  # the vertical bar (5 of the plus's 9 pixels) at 51 on the third image
    # per image: 1, 0, (5 x (255-51)/255 + 4 x 1) / 9 = (5 x 0.8 + 4) / 9
    expected = (1.0 + 0.0 + (5 * 0.8 + 4) / 9) / 3
    assert trojan_contrast(x, trojan_mask("plus"), 255) == pytest.approx(expected, abs=1e-6)
    assert trojan_contrast(x, trojan_mask("plus"), 0) == pytest.approx(1 - expected, abs=1e-6)
    assert trojan_contrast(x, torch.zeros(28, 28, dtype=torch.bool), 255) == 0.0
