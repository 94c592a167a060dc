"""Trojan masks, applying them, and their DBA parts."""

from __future__ import annotations

import pytest
import torch

from robustlr.attacks import TROJANS, apply_trojan, dba_parts, trojan_mask


def pixels(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in mask.nonzero().tolist()}


# Fashion-MNIST plus: vertical bar rows 5..9 at column 5, horizontal bar row 7 columns 3..7.
FMNIST_PLUS = {(5, 5), (6, 5), (7, 5), (8, 5), (9, 5), (7, 3), (7, 4), (7, 6), (7, 7)}
# FEMNIST: the same plus moved 3 rows down and 3 columns right (authors' start index 8).
FEMNIST_PLUS = {(8, 8), (9, 8), (10, 8), (11, 8), (12, 8), (10, 6), (10, 7), (10, 9), (10, 10)}
# CIFAR-10 (authors' code): vertical rows 5..11 at column 5, horizontal row 8 columns 2..8.
CIFAR_PLUS = {(r, 5) for r in range(5, 12)} | {(8, c) for c in range(2, 9)}


def test_plus_fashion_mnist_exact_pixels():
    m = trojan_mask("plus", 28, 28, "fashion-mnist")
    assert m.dtype == torch.bool and m.shape == (28, 28)
    assert pixels(m) == FMNIST_PLUS
    assert int(m.sum()) == 9
    assert pixels(trojan_mask("plus")) == FMNIST_PLUS  # the defaults are Fashion-MNIST's
    assert pixels(trojan_mask("plus", dataset="fmnist")) == FMNIST_PLUS


@pytest.mark.parametrize("alias", ["femnist", "fedemnist", "FEMNIST"])
def test_plus_femnist(alias):
    assert pixels(trojan_mask("plus", 28, 28, alias)) == FEMNIST_PLUS


@pytest.mark.parametrize("alias", ["cifar10", "cifar-10", "CIFAR10"])
def test_plus_cifar10(alias):
    m = trojan_mask("plus", 32, 32, alias)
    assert m.shape == (32, 32)
    assert pixels(m) == CIFAR_PLUS and len(CIFAR_PLUS) == 13


def test_square_coordinates():
    for dataset in ("fashion-mnist", "femnist"):
        assert pixels(trojan_mask("square", 28, 28, dataset)) == {(r, c) for r in range(21, 26) for c in range(21, 26)}
    # 32x32: the same 5x5 block, two pixels in from the bottom and right edges
    assert pixels(trojan_mask("square", 32, 32, "cifar10")) == {(r, c) for r in range(25, 30) for c in range(25, 30)}


@pytest.mark.parametrize("name", ["copyright", "apple"])
@pytest.mark.parametrize("size,dataset", [(28, "fashion-mnist"), (28, "femnist"), (32, "cifar10")])
def test_logos_nonempty_in_bottom_right_quadrant(name, size, dataset):
    m = trojan_mask(name, size, size, dataset)
    assert m.shape == (size, size) and m.dtype == torch.bool
    rows, cols = m.nonzero().unbind(1)
    assert len(rows) >= 25
    assert rows.min() >= size // 2 and cols.min() >= size // 2
    assert rows.max() <= size - 2 and cols.max() <= size - 2  # one-pixel margin
    assert not m[: size // 2].any() and not m[:, : size // 2].any()


def test_logos_differ_from_each_other_and_from_square():
    masks = {n: trojan_mask(n) for n in TROJANS}
    for a in TROJANS:
        for b in TROJANS:
            if a < b:
                assert not torch.equal(masks[a], masks[b])


def test_copyright_is_a_ring_with_hollow_gap():
    m = trojan_mask("copyright")
    # the 9x9 box at rows/cols 18..26: its four edge midpoints are on the ring, the centre is empty
    assert m[18, 22] and m[26, 22] and m[22, 18] and m[22, 26]
    assert not m[22, 22]
    # the C opens to the right: its left stroke is drawn, the right side of the inner circle is not
    assert m[22, 20] and not m[22, 24]


def test_masks_are_fresh_tensors():
    a = trojan_mask("plus")
    a[0, 0] = True
    assert not trojan_mask("plus")[0, 0]


def test_bad_names_and_sizes():
    with pytest.raises(ValueError, match=r"trojan must be one of plus, square, copyright, apple, copyright-authors, apple-authors, got 'star'"):
        trojan_mask("star")
    with pytest.raises(ValueError, match=r"dataset must be one of fashion-mnist, femnist, cifar10.*got 'mnist'"):
        trojan_mask("plus", dataset="mnist")
    with pytest.raises(ValueError, match="height must be a positive integer, got 0"):
        trojan_mask("square", 0, 28)
    with pytest.raises(ValueError, match="does not fit a 8x8 image"):
        trojan_mask("plus", 8, 8)
    with pytest.raises(ValueError, match="at least 7x7"):
        trojan_mask("square", 6, 6)


# --- apply_trojan ---


def _images(n=4, c=3, h=28, w=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 200, (n, c, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("name", TROJANS)
def test_apply_trojan_changes_only_masked_pixels_in_every_channel(name):
    x = _images()
    before = x.clone()
    mask = trojan_mask(name)
    out = apply_trojan(x, mask, 255)
    assert torch.equal(x, before)  # input untouched
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert (out[:, :, mask] == 255).all()
    assert torch.equal(out[:, :, ~mask], x[:, :, ~mask])


def test_apply_trojan_value_zero_and_single_channel():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = apply_trojan(x, trojan_mask("plus", dataset="femnist"), 0)
    assert int((out == 0).sum()) == 2 * 9


def test_apply_trojan_validates():
    x = _images()
    with pytest.raises(ValueError, match="uint8 tensor of shape"):
        apply_trojan(x.float(), trojan_mask("plus"), 255)
    with pytest.raises(ValueError, match="uint8 tensor of shape"):
        apply_trojan(x[0], trojan_mask("plus"), 255)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(28, 28\)"):
        apply_trojan(x, trojan_mask("plus", 32, 32, "cifar10"), 255)
    with pytest.raises(ValueError, match="value must be an integer pixel value in 0..255, got 256"):
        apply_trojan(x, trojan_mask("plus"), 256)


# --- DBA ---


def _check_partition(parts, full):
    assert all(p.dtype == torch.bool and p.shape == full.shape for p in parts)
    assert all(p.any() for p in parts)
    total = torch.stack(parts).sum(0)
    assert int(total.max()) == 1  # disjoint
    assert torch.equal(total.bool(), full)  # union is the full trojan


def test_dba_plus_four_bar_halves_fashion_mnist():
    parts = dba_parts("plus", 4, 28, 28, "fashion-mnist", split="disjoint")
    _check_partition(parts, trojan_mask("plus"))
    # upper vertical (with the centre), lower vertical, left horizontal, right horizontal
    assert [pixels(p) for p in parts] == [
        {(5, 5), (6, 5), (7, 5)},
        {(8, 5), (9, 5)},
        {(7, 3), (7, 4)},
        {(7, 6), (7, 7)},
    ]


def test_dba_plus_four_bar_halves_cifar10_disjoint():
    parts = dba_parts("plus", 4, 32, 32, "cifar10", split="disjoint")
    _check_partition(parts, trojan_mask("plus", 32, 32, "cifar10"))
    assert [pixels(p) for p in parts] == [
        {(5, 5), (6, 5), (7, 5), (8, 5)},
        {(9, 5), (10, 5), (11, 5)},
        {(8, 2), (8, 3), (8, 4)},
        {(8, 6), (8, 7), (8, 8)},
    ]


def test_dba_plus_cifar10_authors_split_is_add_pattern_bd():
    # the pixels the paper's add_pattern_bd (start_idx 5, size 6) blackens for agent_idx % 4 = 0..3:
    # x[5..8, 5], x[9..11, 5], x[8, 2..6], x[8, 5..8]
    parts = dba_parts("plus", 4, 32, 32, "cifar10")  # "authors" is the default
    assert [pixels(p) for p in parts] == [
        {(5, 5), (6, 5), (7, 5), (8, 5)},
        {(9, 5), (10, 5), (11, 5)},
        {(8, 2), (8, 3), (8, 4), (8, 5), (8, 6)},
        {(8, 5), (8, 6), (8, 7), (8, 8)},
    ]
    counts = torch.stack(parts).sum(0)
    assert int(counts[8, 5]) == 3 and int(counts[8, 6]) == 2 and int((counts == 1).sum()) == 11
    assert torch.equal(counts.bool(), trojan_mask("plus", 32, 32, "cifar10"))


def test_dba_plus_fashion_mnist_authors_split_applies_their_formula():
    # length 5 (size 4, size // 4 = 1) around the centre (7, 5)
    parts = dba_parts("plus", 4, 28, 28, "fashion-mnist", split="authors")
    assert [pixels(p) for p in parts] == [
        {(5, 5), (6, 5), (7, 5)},
        {(8, 5), (9, 5)},
        {(7, 3), (7, 4), (7, 5), (7, 6)},
        {(7, 5), (7, 6), (7, 7)},
    ]


def test_dba_split_is_checked():
    with pytest.raises(ValueError, match="split must be one of 'authors', 'disjoint', got 'halves'"):
        dba_parts("plus", 4, split="halves")


@pytest.mark.parametrize(
    "name,n,size,dataset",
    [
        ("plus", 4, 28, "femnist"),
        ("plus", 2, 28, "fashion-mnist"),
        ("plus", 9, 28, "fashion-mnist"),
        ("square", 3, 28, "fashion-mnist"),
        ("square", 4, 32, "cifar10"),
        ("copyright", 4, 28, "fashion-mnist"),
        ("copyright", 3, 32, "cifar10"),
        ("apple", 4, 28, "fashion-mnist"),
        ("apple", 5, 32, "cifar10"),
        ("square", 1, 28, "fashion-mnist"),
    ],
)
def test_dba_parts_partition_the_trojan(name, n, size, dataset):
    parts = dba_parts(name, n, size, size, dataset, split="disjoint")
    assert len(parts) == n
    _check_partition(parts, trojan_mask(name, size, size, dataset))
    sizes = [int(p.sum()) for p in parts]
    if not (name == "plus" and n == 4):
        assert max(sizes) - min(sizes) <= 1


def test_dba_square_three_strips_left_to_right():
    parts = dba_parts("square", 3)
    assert [int(p.sum()) for p in parts] == [9, 8, 8]
    # sorted by column then row: part 0 is columns 21..22 (first 9 pixels), and so on
    assert pixels(parts[0]) == {(r, 21) for r in range(21, 26)} | {(r, 22) for r in range(21, 25)}
    assert max(c for _, c in pixels(parts[0])) <= min(c for _, c in pixels(parts[2]))


def test_dba_bad_part_counts():
    with pytest.raises(ValueError, match=r"n_parts must be an integer in 1..9 \(the plus trojan's pixels\), got 10"):
        dba_parts("plus", 10)
    with pytest.raises(ValueError, match="n_parts must be an integer in 1..25"):
        dba_parts("square", 0)
    with pytest.raises(ValueError, match="trojan must be one of"):
        dba_parts("cross", 4)


# --- the authors' logos (package data) ---


def test_authors_logos_are_the_shared_arrays_exactly():
    """The shipped arrays are the files of shared/data/trojans (sha256 as its README states), with the
    pixel counts it states: copyright 59 non-zero (24 above 127), Apple 38 (28 above 127)."""
    from robustlr.attacks.trojans import authors_pattern

    c, a = authors_pattern("copyright-authors"), authors_pattern("apple-authors")
    assert c.dtype == a.dtype == torch.uint8 and c.shape == a.shape == (28, 28)
    assert (int((c > 0).sum()), int((c > 127).sum())) == (59, 24)
    assert (int((a > 0).sum()), int((a > 127).sum())) == (38, 28)
    assert pixels(trojan_mask("apple-authors")) == pixels(a > 0)
    rows, cols = (a > 0).nonzero().unbind(1)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (20, 27, 20, 26)


def test_authors_logos_are_added_with_wrap_around_on_bright_ink_and_subtracted_on_dark():
    """The authors' arithmetic: Fashion-MNIST ``x + trojan`` on uint8 (numpy wraps modulo 256);
    FEMNIST ``x - trojan / 255`` on [0, 1] (here uint8, saturating at 0)."""
    import numpy as np

    from robustlr.attacks.trojans import AdditiveTrojan, authors_pattern, trigger

    x = _images(n=3, c=1, seed=1)
    x[0] = 255  # a white image: every logo pixel wraps
    bright = trigger("copyright-authors", 28, 28, "fashion-mnist", ink=255)
    assert isinstance(bright, AdditiveTrojan) and not bright.subtract
    expected = (x.numpy().astype(np.uint8) + authors_pattern("copyright-authors").numpy()[None, None]).astype(np.uint8)
    assert torch.equal(apply_trojan(x, bright, 255), torch.from_numpy(expected))
    assert int(apply_trojan(x, bright, 0)[0, 0, 27, 10]) == (255 + int(bright.pattern[27, 10])) % 256

    dark = trigger("apple-authors", 28, 28, "femnist", ink=0)
    assert dark.subtract
    p = authors_pattern("apple-authors").to(torch.int16)
    assert torch.equal(apply_trojan(x, dark, 0), (x.to(torch.int16) - p).clamp_min(0).to(torch.uint8))
    white = torch.full((1, 1, 28, 28), 255, dtype=torch.uint8)  # FEMNIST's background: no saturation
    assert torch.equal(apply_trojan(white, dark, 0)[0, 0].to(torch.int16), 255 - p)


def test_authors_logos_move_whole_and_refuse_what_they_cannot_do():
    from robustlr.attacks.trojans import placement_offset, shift_mask, trigger

    t = trigger("apple-authors")
    moved = shift_mask(t, placement_offset(t.mask, "top-left"))
    assert torch.equal(moved.pattern[2:10, 2:9], t.pattern[20:28, 20:27])
    assert int(moved.pattern.sum()) == int(t.pattern.sum())
    with pytest.raises(ValueError, match=r"authors' 28x28 image and this dataset's images are 32x32: use trojan = 'apple'"):
        trigger("apple-authors", 32, 32, "cifar10")
    with pytest.raises(ValueError, match="not split into parts"):
        dba_parts("copyright-authors", 2)


def test_a_config_with_the_authors_logos_refuses_a_value_a_split_and_another_size():
    from robustlr.sim.config import make_config

    make_config({"dataset": "fashion-mnist", "trojan": "copyright-authors"})
    with pytest.raises(ValueError, match="trojan_value does not apply"):
        make_config({"dataset": "fashion-mnist", "trojan": "copyright-authors", "trojan_value": 200})
    with pytest.raises(ValueError, match="not split into parts"):
        make_config({"dataset": "fashion-mnist", "trojan": "apple-authors", "attack": "dba"})
    with pytest.raises(ValueError, match=r"trojan = 'copyright-authors' is the authors' 28x28 image and cifar10's "
                                         r"images are 32x32: use trojan = 'copyright'"):
        make_config({"dataset": "cifar10", "trojan": "copyright-authors"})


def test_a_federation_draws_the_authors_logo_on_its_backdoor_set(tiny):
    import numpy as np

    from robustlr.attacks.trojans import authors_pattern
    from robustlr.sim.config import make_config
    from robustlr.sim.federation import build_federation

    ds = tiny()
    cfg = make_config({"dataset": "fashion-mnist", "trojan": "apple-authors", "num_agents": 5, "corrupt_fraction": 0.4,
                       "poison_fraction": 0.5, "rounds": 1})
    fed = build_federation(cfg, ds)
    base = ds.test_x[ds.test_y == cfg.base_class]
    want = (base.numpy() + authors_pattern("apple-authors").numpy()[None, None]).astype(np.float32)  # uint8: wraps
    got = fed.backdoor_x.numpy() * 0.3 + 0.2  # tiny's normalisation undone
    assert np.allclose(got * 255, want, atol=1e-3)
    assert torch.equal(fed.trigger_mask, authors_pattern("apple-authors") > 0)
    changed = fed.train_y != ds.train_y
    assert int(changed.sum()) == fed.notes["poisoned_samples"] > 0
    diff = (fed.train_x.images[changed].to(torch.int16) - ds.train_x[changed].to(torch.int16)) % 256
    assert torch.equal(diff[0, 0], authors_pattern("apple-authors").to(torch.int16))
