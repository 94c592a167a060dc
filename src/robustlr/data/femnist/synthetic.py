"""SYNTHETIC data in TensorFlow Federated's Federated EMNIST layout, for scale tests and
benchmarks (:func:`make_synthetic_tff_emnist`): random polyline "glyphs" per class, shifted per
writer, with sparse grey noise. Not handwriting; files are marked with
:data:`~robustlr.data.femnist.tff.SYNTHETIC_ATTR` so that
:func:`~robustlr.data.femnist.tff.load_tff_emnist` labels them as synthetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustlr.data.femnist.common import ALL_CLASSES, IMAGE_SIDE, PathLike
from robustlr.data.femnist.tff import SYNTHETIC_ATTR, write_tff_emnist_h5
from robustlr.errors import DataError


def _stroke_templates(num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """One dark polyline 'glyph' per class on a white background, values k / 255."""
    templates = np.ones((num_classes, IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    t = np.linspace(0.0, 1.0, 24)
    for c in range(num_classes):
        points = rng.uniform(6, 21, size=(int(rng.integers(3, 6)), 2))
        for a, b in zip(points[:-1], points[1:]):
            line = np.rint(a[None, :] + t[:, None] * (b - a)[None, :]).astype(int)
            for dr in (0, 1):
                for dc in (0, 1):
                    templates[c, line[:, 0] + dr, line[:, 1] + dc] = 0.0
    return templates


def make_synthetic_tff_emnist(
    path: PathLike,
    n_clients: int,
    samples_per_client: int,
    seed: int,
    num_classes: int = 10,
    style_seed: int = 0,
) -> Path:
    """Write a SYNTHETIC file in TFF's Federated EMNIST layout, for scale tests and benchmarks.

    The content is not handwriting: each class is a fixed random polyline ("glyph", drawn from
    ``style_seed``), each writer shifts all its glyphs by its own offset of up to 3 pixels (also
    from ``style_seed``, so a writer looks the same in a train and a test file), and each sample
    gets grey noise on about 10 % of its pixels. Pixels are k / 255 floats with a white 1.0 background and dark ink,
    like the real files; labels are uniform in ``0..num_classes-1``. The root attribute
    ``robustlr_synthetic`` marks the file, and :func:`load_tff_emnist` reports it in ``source``.

    Client ids are ``syn00000``, ``syn00001``, ... whatever the seed, so a train and a test
    file made with different seeds (and sizes) pair up::

        make_synthetic_tff_emnist("train.h5", 3383, 100, seed=1)
        make_synthetic_tff_emnist("test.h5", 3383, 12, seed=2)

    Args:
        path: the file to write (overwritten).
        n_clients: number of writers (>= 1).
        samples_per_client: samples per writer (>= 1).
        seed: seeds the labels and noise of every writer.
        num_classes: 10 (digits) or up to 62.
        style_seed: seeds the glyphs and the writers' offsets.
    """
    if n_clients < 1:
        raise DataError(f"n_clients must be >= 1, got {n_clients}")
    if samples_per_client < 1:
        raise DataError(f"samples_per_client must be >= 1, got {samples_per_client}")
    if not 1 <= num_classes <= len(ALL_CLASSES):
        raise DataError(f"num_classes must lie in 1..62, got {num_classes}")
    templates = _stroke_templates(num_classes, np.random.default_rng([style_seed, 0x5EED]))

    def clients():
        for i in range(n_clients):
            shift = np.random.default_rng([style_seed, i]).integers(-3, 4, size=2)
            rng = np.random.default_rng([seed, i])
            labels = rng.integers(0, num_classes, size=samples_per_client)
            images = np.roll(templates[labels], shift=(int(shift[0]), int(shift[1])), axis=(1, 2))
            # sparse grey noise: like real scans, most of the paper stays exactly white
            noise = rng.integers(0, 24, size=images.shape) * (rng.random(images.shape) < 0.1) / np.float32(255.0)
            images = np.where(images > 0.5, images - noise, images + noise)
            yield f"syn{i:05d}", (np.rint(images * 255.0) / 255.0, labels)

    return write_tff_emnist_h5(
        path,
        clients(),
        attrs={SYNTHETIC_ATTR: True, "description": "SYNTHETIC glyphs in TFF Federated EMNIST layout (robustlr)"},
    )
