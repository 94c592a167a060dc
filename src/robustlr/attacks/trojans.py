"""Trojan patterns: where they sit and how they are drawn.

A trojan is a boolean mask of shape (H, W); :func:`apply_trojan` sets the masked pixels to one
value (the dataset's ink, :attr:`robustlr.data.ImageDataset.ink`) in every channel.

The four trojans of the paper (Ozdayi et al. 2021, main text and appendix, after Liu et al. 2018):

``plus`` (top-left)
    Two bars of equal odd length crossing at their middles. Positions as in the authors'
    published code (``add_pattern_bd``):

    ============== ====== ========= ================================================
    dataset        length centre    pixels
    ============== ====== ========= ================================================
    fashion-mnist  5      (7, 5)    vertical rows 5..9 at column 5; horizontal row 7,
                                    columns 3..7 (9 pixels)
    femnist        5      (10, 8)   vertical rows 8..12 at column 8; horizontal row 10,
                                    columns 6..10 (the Fashion-MNIST plus moved by 3
                                    rows and 3 columns, 9 pixels)
    cifar10        7      (8, 5)    vertical rows 5..11 at column 5; horizontal row 8,
                                    columns 2..8 (13 pixels)
    ============== ====== ========= ================================================

``square`` (bottom-right)
    5x5 pixels two pixels in from the bottom and right edges: rows and columns 21..25 on a
    28x28 image as in the paper; rows and columns 25..29 on CIFAR-10's 32x32 (same size and
    same margin, rather than scaled).

``copyright`` and ``apple`` (bottom-right)
    Drawn in code, not read from image files: each shape is defined in a unit square by
    circles and ellipses, sampled on an 8x8 sub-pixel grid per pixel, and a pixel belongs to
    the logo when at least half of its sub-pixels do. The logo box is ``round(9 * min(H, W) / 28)``
    pixels wide (9 on 28x28, 10 on 32x32) and sits one pixel in from the bottom and right
    edges (rows and columns 18..26 on 28x28), about where the authors' resized logo images land.

    - copyright: a one-pixel ring filling the box, and inside it a "C": a one-pixel arc of
      radius two pixels around the centre with its opening (the 100 degrees around "east") to
      the right.
    - apple: the body is the union of two overlapping discs (radius 0.33 of the box, centres
      0.28 apart), a disc of radius 0.26 centred on the right edge bites into its right side,
      and a leaf (an ellipse, semi-axes 0.17 x 0.09, tilted 45 degrees) sits above it.

``copyright-authors`` and ``apple-authors`` (bottom-right)
    The paper authors' own logos: the 28x28 greyscale arrays their code derives from their logo
    images (package data, ``robustlr/attacks/trojan_images``, MIT licence, sha256 checked on load),
    applied as they apply them (:class:`AdditiveTrojan`): on a dataset whose ink is bright
    (Fashion-MNIST) the pattern is *added* to the uint8 image modulo 256 (so a bright logo pixel
    over a bright garment comes out dark), on one whose ink is dark (FEMNIST) it is *subtracted*
    (saturating at 0: robustlr's pixels are uint8, the authors' FEMNIST floats go below 0 there).
    28x28 images only; ``trojan_value`` does not apply; not split for a distributed backdoor.
    Their mask (where the pattern is non-zero) is what placement and trigger optimisation use:
    copyright 59 pixels (rows 16..27, columns 1..27), apple 38 (rows 20..27, columns 20..26).

Any other image size: the ``generic`` family (what a dataset registered by a user gets) scales
the Fashion-MNIST geometry to an H x W image: the plus is centred at (round(7H/28), round(5W/28))
with bars of the odd length nearest 5 min(H, W)/28 (at least 3), the square is
max(2, round(5 s/28)) pixels wide, max(1, round(2 s/28)) in from the bottom and right edges
(s = min(H, W)), and the logos scale as above. On 28x28 it equals the Fashion-MNIST geometry.
The smallest image a trojan fits is 5x5 (plus), 3x3 (square) and 4x4 (logos).

Their split into parts for a distributed backdoor lives in :mod:`robustlr.attacks.dba`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
import torch

TROJANS = ("plus", "square", "copyright", "apple", "copyright-authors", "apple-authors")
#: the authors' logos: package file and its sha256
AUTHORS_LOGOS = {
    "copyright-authors": ("copyright-28x28.npy", "5fad91b2aa529775b68a96e535303e60a0e1c47762c244c2eb04e216ac6fd49b"),
    "apple-authors": ("apple-28x28.npy", "ee8f7d8e443324b7747ef0387afb41b90da16137f9d6923ba13f1d52b10a9ac8"),
}

DATASETS = ("fashion-mnist", "femnist", "cifar10", "generic")
_DATASET_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "femnist": "femnist",
    "fedemnist": "femnist",
    "cifar10": "cifar10",
    "generic": "generic",
}


@dataclass(frozen=True)
class _PlusGeometry:
    row: int  # centre row: the horizontal bar's row
    col: int  # centre column: the vertical bar's column
    length: int  # pixels in each bar (odd)


_PLUS = {
    "fashion-mnist": _PlusGeometry(row=7, col=5, length=5),
    "femnist": _PlusGeometry(row=10, col=8, length=5),
    "cifar10": _PlusGeometry(row=8, col=5, length=7),
}

_SQUARE_SIZE = 5
_SQUARE_MARGIN = 2
_SUBPIXELS = 8


def canonical_dataset(dataset: str) -> str:
    """The dataset's canonical name for trojan placement (``"fmnist"`` -> ``"fashion-mnist"``)."""
    key = str(dataset).lower().replace("-", "").replace("_", "")
    if key not in _DATASET_ALIASES:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)} (or fmnist, fedemnist), got {dataset!r}")
    return _DATASET_ALIASES[key]


def _check_name(name: str) -> None:
    if name not in TROJANS:
        raise ValueError(f"trojan must be one of {', '.join(TROJANS)}, got {name!r}")


def _check_size(height: int, width: int) -> None:
    for label, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{label} must be a positive integer, got {v!r}")


def plus_geometry(height: int, width: int, dataset: str) -> _PlusGeometry:
    """Where the plus sits on a ``height`` x ``width`` image of trojan family ``dataset``."""
    if dataset != "generic":
        return _PLUS[dataset]
    length = max(3, 2 * round((5 * min(height, width) / 28 - 1) / 2) + 1)
    return _PlusGeometry(row=max(length // 2, round(7 * height / 28)), col=max(length // 2, round(5 * width / 28)),
                         length=length)


def _plus(height: int, width: int, dataset: str) -> np.ndarray:
    g = plus_geometry(height, width, dataset)
    half = g.length // 2
    if g.row + half >= height or g.col + half >= width:
        raise ValueError(f"the {dataset} plus (centre {(g.row, g.col)}, bars of {g.length}) does not fit a {height}x{width} image")
    m = np.zeros((height, width), dtype=bool)
    m[g.row - half : g.row + half + 1, g.col] = True
    m[g.row, g.col - half : g.col + half + 1] = True
    return m


def _square(height: int, width: int, dataset: str = "fashion-mnist") -> np.ndarray:
    size, margin = _SQUARE_SIZE, _SQUARE_MARGIN
    if dataset == "generic":
        side = min(height, width)
        size, margin = max(2, round(_SQUARE_SIZE * side / 28)), max(1, round(_SQUARE_MARGIN * side / 28))
    need = size + margin
    if height < need or width < need:
        raise ValueError(f"the square trojan needs an image of at least {need}x{need}, got {height}x{width}")
    m = np.zeros((height, width), dtype=bool)
    m[height - need : height - margin, width - need : width - margin] = True
    return m


def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel centres of a size x size box in unit coordinates: u to the right, v down."""
    c = (np.arange(size * _SUBPIXELS) + 0.5) / (size * _SUBPIXELS)
    v, u = np.meshgrid(c, c, indexing="ij")
    return u, v


def _to_pixels(fine: np.ndarray, size: int) -> np.ndarray:
    coverage = fine.reshape(size, _SUBPIXELS, size, _SUBPIXELS).mean(axis=(1, 3))
    return coverage >= 0.5


def _copyright_logo(size: int) -> np.ndarray:
    u, v = _unit_grid(size)
    px = 1.0 / size
    r = np.hypot(u - 0.5, v - 0.5)
    ring = (r <= 0.5) & (r >= 0.5 - px)
    angle = np.degrees(np.arctan2(v - 0.5, u - 0.5))  # 0 = pointing right
    letter_c = (np.abs(r - 2 * px) <= 0.5 * px) & (np.abs(angle) > 50)
    return _to_pixels(ring | letter_c, size)


def _apple_logo(size: int) -> np.ndarray:
    u, v = _unit_grid(size)
    body = (np.hypot(u - 0.36, v - 0.64) <= 0.33) | (np.hypot(u - 0.64, v - 0.64) <= 0.33)
    bite = np.hypot(u - 1.0, v - 0.52) <= 0.26
    tilt = np.radians(-45)
    du, dv = u - 0.62, v - 0.14
    along = du * np.cos(tilt) + dv * np.sin(tilt)
    across = -du * np.sin(tilt) + dv * np.cos(tilt)
    leaf = (along / 0.17) ** 2 + (across / 0.09) ** 2 <= 1
    return _to_pixels((body & ~bite) | leaf, size)


def _logo(name: str, height: int, width: int) -> np.ndarray:
    side = min(height, width)
    size = max(1, round(9 * side / 28))
    margin = max(1, round(side / 28))
    if size + margin > side:
        raise ValueError(f"the {name} trojan does not fit a {height}x{width} image")
    logo = _copyright_logo(size) if name == "copyright" else _apple_logo(size)
    m = np.zeros((height, width), dtype=bool)
    m[height - margin - size : height - margin, width - margin - size : width - margin] = logo
    return m


@lru_cache(maxsize=None)
def _authors_pattern_np(name: str) -> np.ndarray:
    file, sha = AUTHORS_LOGOS[name]
    raw = resources.files("robustlr.attacks").joinpath("trojan_images", file).read_bytes()
    if hashlib.sha256(raw).hexdigest() != sha:
        raise RuntimeError(f"the package file trojan_images/{file} is not the authors' array (sha256 differs): "
                           f"reinstall robustlr")
    import io

    arr = np.load(io.BytesIO(raw), allow_pickle=False)
    arr.setflags(write=False)
    return arr


def authors_pattern(name: str, height: int = 28, width: int = 28) -> torch.Tensor:
    """The authors' logo ``name`` (``"copyright-authors"`` or ``"apple-authors"``) as a uint8 (28, 28)
    tensor; refused on any other image size (their code resizes the logo to 28x28).

    Example:
        >>> p = authors_pattern("apple-authors")
        >>> p.dtype, tuple(p.shape), int((p > 0).sum()), int(p.max())
        (torch.uint8, (28, 28), 38, 255)
    """
    if name not in AUTHORS_LOGOS:
        raise ValueError(f"the authors' logos are {', '.join(AUTHORS_LOGOS)}, got {name!r}")
    if (height, width) != (28, 28):
        drawn = name.removesuffix("-authors")
        raise ValueError(f"the {name} trojan is the authors' 28x28 image and this dataset's images are "
                         f"{height}x{width}: use trojan = {drawn!r} (drawn, any size)")
    return torch.from_numpy(_authors_pattern_np(name).copy())


@dataclass(frozen=True)
class AdditiveTrojan:
    """A greyscale trojan combined with the image's pixels, as the paper authors apply their logos.

    ``pattern`` is uint8 (H, W); ``subtract`` False adds it modulo 256 (uint8 arithmetic, the
    authors' Fashion-MNIST), True subtracts it saturating at 0 (their FEMNIST, on dark ink over a
    white background). :attr:`mask` is where the pattern is non-zero.

    Example:
        >>> t = AdditiveTrojan(torch.tensor([[0, 100], [200, 255]], dtype=torch.uint8), subtract=False)
        >>> t.apply(torch.full((1, 1, 2, 2), 200, dtype=torch.uint8))[0, 0].tolist()
        [[200, 44], [144, 199]]
        >>> AdditiveTrojan(t.pattern, subtract=True).apply(torch.full((1, 1, 2, 2), 200, dtype=torch.uint8))[0, 0].tolist()
        [[200, 100], [0, 0]]
    """

    pattern: torch.Tensor
    subtract: bool

    @property
    def mask(self) -> torch.Tensor:
        return self.pattern != 0

    @property
    def shape(self) -> torch.Size:
        return self.pattern.shape

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pattern.to(device=x.device, dtype=torch.int16)
        wide = x.to(torch.int16)
        out = (wide - p).clamp_min(0) if self.subtract else torch.remainder(wide + p, 256)
        return out.to(torch.uint8)

    def shifted(self, offset: tuple[int, int]) -> AdditiveTrojan:
        """The trojan moved by ``offset`` (rows, columns); every non-zero pixel must stay inside."""
        dr, dc = offset
        if (dr, dc) == (0, 0):
            return self
        moved_mask = shift_mask(self.mask, offset)
        out = torch.zeros_like(self.pattern)
        out[moved_mask] = self.pattern[self.mask]  # row-major order is kept by a shift
        return AdditiveTrojan(out, self.subtract)


def trigger(name: str, height: int = 28, width: int = 28, dataset: str = "fashion-mnist",
            ink: int = 255) -> torch.Tensor | AdditiveTrojan:
    """What a run draws: a bool mask (drawn in one value by :func:`apply_trojan`) or, for the
    authors' logos, an :class:`AdditiveTrojan` (subtracted where the dataset's ``ink`` is dark)."""
    if name in AUTHORS_LOGOS:
        _check_size(height, width)
        return AdditiveTrojan(authors_pattern(name, height, width), subtract=int(ink) < 128)
    return trojan_mask(name, height, width, dataset)


def _mask_np(name: str, height: int, width: int, dataset: str) -> np.ndarray:
    _check_name(name)
    _check_size(height, width)
    dataset = canonical_dataset(dataset)
    if name in AUTHORS_LOGOS:
        return authors_pattern(name, height, width).numpy() != 0
    if name == "plus":
        return _plus(height, width, dataset)
    if name == "square":
        return _square(height, width, dataset)
    return _logo(name, height, width)


def trojan_mask(name: str, height: int = 28, width: int = 28, dataset: str = "fashion-mnist") -> torch.Tensor:
    """The pixels of a trojan on a ``height`` x ``width`` image of ``dataset``.

    Args:
        name: one of :data:`TROJANS`.
        height, width: image size.
        dataset: the trojan family: ``"fashion-mnist"`` (alias ``"fmnist"``), ``"femnist"`` (alias
            ``"fedemnist"``), ``"cifar10"``, or ``"generic"`` (scaled to any size); it decides where
            the plus sits (and, for ``"generic"``, the square's size).

    Returns:
        A bool tensor of shape (height, width), True on the trojan's pixels.

    Example:
        >>> m = trojan_mask("plus")
        >>> sorted(map(tuple, m.nonzero().tolist()))[:3]
        [(5, 5), (6, 5), (7, 3)]
        >>> int(m.sum())
        9
    """
    return torch.from_numpy(_mask_np(name, height, width, dataset))


def apply_trojan(x: torch.Tensor, mask: torch.Tensor | AdditiveTrojan, value: int) -> torch.Tensor:
    """A copy of the images ``x`` with the ``mask`` pixels set to ``value`` in every channel.

    Args:
        x: uint8 images of shape (N, C, H, W).
        mask: bool tensor of shape (H, W), e.g. from :func:`trojan_mask`; or an
            :class:`AdditiveTrojan` (from :func:`trigger`), applied to every channel, ``value``
            unused.
        value: the pixel value 0..255 (usually the dataset's ``ink``).
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a uint8 tensor of shape (N, C, H, W), got {got}")
    if isinstance(mask, AdditiveTrojan):
        if tuple(mask.shape) != tuple(x.shape[-2:]):
            raise ValueError(f"the trojan's pattern is {tuple(mask.shape)}, the images {tuple(x.shape[-2:])}")
        return mask.apply(x)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[-2:]):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape {tuple(x.shape[-2:])}, got {got}")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 255:
        raise ValueError(f"value must be an integer pixel value in 0..255, got {value!r}")
    out = x.clone()
    out[:, :, mask.to(x.device)] = int(value)
    return out


POSITIONS = ("default", "top-left", "top-right", "bottom-left", "bottom-right", "centre")
# a corner placement keeps the trojan this many pixels in from the edges (the square's margin)
CORNER_MARGIN = 2


def parse_position(position: str) -> str | tuple[int, int]:
    """A placement: one of :data:`POSITIONS`, or ``"ROW,COL"``, the top-left pixel of the trojan's
    bounding box. Raises ``ValueError`` naming the accepted forms."""
    if position in POSITIONS:
        return position
    parts = str(position).split(",")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    raise ValueError(f"trojan_position must be one of {', '.join(POSITIONS)} or 'ROW,COL' (the top-left pixel of "
                     f"the trojan's bounding box, e.g. '3,20'), got {position!r}")


def placement_offset(mask: torch.Tensor, position: str) -> tuple[int, int]:
    """The (rows, columns) shift that moves ``mask``'s bounding box to ``position``.

    ``"default"`` is each trojan's place in the paper (no shift); a corner puts the box
    :data:`CORNER_MARGIN` pixels in from its two edges; ``"centre"`` centres it (rounding down).
    Raises ``ValueError`` when the trojan does not fit at an explicit position.

    Example:
        >>> placement_offset(trojan_mask("plus"), "bottom-right")   # the plus spans rows 5..9, columns 3..7
        (16, 18)
    """
    where = parse_position(position)
    if where == "default":
        return 0, 0
    h, w = mask.shape
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return 0, 0
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    bh, bw = r1 - r0 + 1, c1 - c0 + 1
    m = CORNER_MARGIN
    targets = {"top-left": (m, m), "top-right": (m, w - m - bw), "bottom-left": (h - m - bh, m),
               "bottom-right": (h - m - bh, w - m - bw), "centre": ((h - bh) // 2, (w - bw) // 2)}
    tr, tc = targets[where] if isinstance(where, str) else where
    if tr < 0 or tc < 0 or tr + bh > h or tc + bw > w:
        raise ValueError(f"a trojan of {bh}x{bw} pixels placed at row {tr}, column {tc} does not fit a {h}x{w} "
                         f"image; choose a row <= {h - bh} and a column <= {w - bw}")
    return tr - r0, tc - c0


def shift_mask(mask: torch.Tensor | AdditiveTrojan, offset: tuple[int, int]) -> torch.Tensor | AdditiveTrojan:
    """``mask`` moved by ``offset`` (rows, columns); every set pixel must stay inside the image."""
    if isinstance(mask, AdditiveTrojan):
        return mask.shifted(offset)
    dr, dc = offset
    if (dr, dc) == (0, 0):
        return mask
    out = torch.zeros_like(mask)
    pts = torch.nonzero(mask)
    pts[:, 0] += dr
    pts[:, 1] += dc
    h, w = mask.shape
    if pts.numel() and (pts[:, 0].min() < 0 or pts[:, 1].min() < 0 or pts[:, 0].max() >= h or pts[:, 1].max() >= w):
        raise ValueError(f"shifting the trojan by {offset} moves it off the {h}x{w} image")
    out[pts[:, 0], pts[:, 1]] = True
    return out


def trojan_contrast(x_uint8: torch.Tensor, mask: torch.Tensor | AdditiveTrojan, value: int) -> float:
    """How much the trojan changes the images ``x_uint8`` (N, C, H, W), on average: the mean over
    images, channels and trojan pixels of ``|value - pixel| / 255``, in [0, 1].

    For an :class:`AdditiveTrojan` it is the mean of ``|changed - original| / 255`` over its
    non-zero pixels (``value`` unused).

    1 means every trojan pixel flips from black to white (ink on empty background); near 0 the
    trojan is drawn in ink on a region that is ink already, and a model can hardly see it. A
    backdoor with a low contrast on the base class's images is slow to take or never does.

    Example:
        >>> x = torch.zeros(2, 1, 28, 28, dtype=torch.uint8); x[1] = 255   # one black, one white image
        >>> trojan_contrast(x, trojan_mask("plus"), 255)
        0.5
    """
    if isinstance(mask, AdditiveTrojan):
        m = mask.mask.to(x_uint8.device)
        if m.sum() == 0 or x_uint8.shape[0] == 0:
            return 0.0
        changed = mask.apply(x_uint8)[:, :, m].to(torch.float32) - x_uint8[:, :, m].to(torch.float32)
        return float(changed.abs().mean() / 255.0)
    if mask.sum() == 0 or x_uint8.shape[0] == 0:
        return 0.0
    pixels = x_uint8[:, :, mask.to(x_uint8.device)].to(torch.float32)
    return float((pixels - float(value)).abs().mean() / 255.0)
