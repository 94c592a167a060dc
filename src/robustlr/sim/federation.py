"""From a config to a federation: the dataset, the agents' shares, the corrupt agents and
their poisoned samples, and the evaluation sets. Everything here is computed once per run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from robustlr.attacks.dba import dba_parts
from robustlr.attacks.poison import poison_agents
from robustlr.attacks.trojans import (
    AdditiveTrojan,
    apply_trojan,
    placement_offset,
    shift_mask,
    trigger,
    trojan_contrast,
)
from robustlr.data import partition as partitioners
from robustlr.data import registry
from robustlr.data.base import ImageDataset
from robustlr.errors import DataError
from robustlr.sim import seeding
from robustlr.sim.config import ExperimentConfig

log = logging.getLogger("robustlr")
#: a trojan-contrast diagnostic below this (mean |trojan - pixel| / 255 over the base class's
#: test images) is reported as a warning: the trojan hardly changes those images
LOW_CONTRAST = 0.35


def load_dataset(cfg: ExperimentConfig, data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """Load the config's dataset (see :mod:`robustlr.data.registry`)."""
    return registry.load_dataset(cfg.dataset, data_dir, cfg.data_sources, cfg.digits_only, cfg.exact_only)


def stratified_subset(labels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """``limit`` indices with the classes in the same proportions as ``labels`` (sorted)."""
    classes, counts = np.unique(labels, return_counts=True)
    share = counts / counts.sum() * limit
    take = np.floor(share).astype(int)
    # hand out the remainder to the largest fractional parts, deterministically
    rest = limit - take.sum()
    take[np.argsort(-(share - take), kind="stable")[:rest]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=t, replace=False) for c, t in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


class NormalisedImages:
    """uint8 images that index to normalised float32 ones: ``imgs[rows]`` equals
    ``normalise(images[rows], mean, std)`` exactly.

    The training set is kept like this and each batch normalised when it is read: a float32
    copy would take four times the memory (FEMNIST at the paper's scale, 342k images: 0.27 GB
    instead of 1.07 GB). Supports what the trainers use: indexing, ``len``, ``shape`` and
    ``share_memory_``.
    """

    dtype = torch.float32

    def __init__(self, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"NormalisedImages needs uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.mean, self.std = tuple(mean), tuple(std)
        self._m = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._s = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __getitem__(self, rows) -> torch.Tensor:
        return self.images[rows].to(torch.float32).div_(255.0).sub_(self._m).div_(self._s)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.images.shape

    def share_memory_(self) -> "NormalisedImages":
        self.images.share_memory_()
        return self


@dataclass
class Federation:
    """Everything about the agents and the data that stays fixed during a run."""

    dataset: ImageDataset
    train_x: NormalisedImages | torch.Tensor  # indexes to normalised float32; poisoned rows already trojaned
    train_y: torch.Tensor  # int64, poisoned rows relabelled to the target class
    agent_indices: list[np.ndarray]  # per agent, indices into train_x
    corrupt: np.ndarray  # sorted ids of corrupt agents
    poisoned_per_agent: dict[int, int]  # corrupt agent id -> number of poisoned samples
    val_x: torch.Tensor
    val_y: torch.Tensor
    base_x: torch.Tensor  # clean test images of the base class
    backdoor_x: torch.Tensor  # the same with the full trojan; all labelled target
    notes: dict = field(default_factory=dict)
    # attack_from_round > 1: corrupt agent -> its rows with every poisoned one replaced by a clean copy
    honest_indices: dict[int, np.ndarray] = field(default_factory=dict)
    attack_from_round: int = 1
    attack_until_round: int | None = None  # corrupt agents behave honestly after it (None: to the end)
    # the rows of train_x with the trigger drawn (their clean images are the dataset's own rows) and
    # the full trigger's region: what an attack that redraws the trigger (A3FL) changes
    poisoned_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    trigger_mask: torch.Tensor | None = None
    # FLTrust: the server's clean root dataset, indices into train_x (None: the rule needs none)
    root_indices: np.ndarray | None = None

    @property
    def num_agents(self) -> int:
        return len(self.agent_indices)

    @property
    def agent_sizes(self) -> np.ndarray:
        return np.array([len(i) for i in self.agent_indices], dtype=np.int64)

    def is_corrupt(self, agent: int) -> bool:
        return bool(np.isin(agent, self.corrupt))

    def label_counts(self) -> np.ndarray:
        """(agents, classes): how many training samples of each class each agent holds, by the
        dataset's own labels (before any poisoned sample is relabelled)."""
        return partitioners.label_counts(self.agent_indices, self.dataset.train_y.numpy(), self.dataset.num_classes)

    def partition_record(self, cfg: ExperimentConfig) -> dict:
        """What a run folder's ``partition.json`` holds: how the data was split (the config's keys)
        and per agent its label counts, whether it is corrupt and how many of its samples are poisoned."""
        keys = {"partition": cfg.partition, "num_agents": self.num_agents, "train_samples": int(self.agent_sizes.sum()),
                "seed": cfg.seed}
        if cfg.partition == "dirichlet":
            keys |= {"dirichlet_alpha": cfg.dirichlet_alpha, "dirichlet_min_size": cfg.dirichlet_min_size}
        elif cfg.partition == "shards":
            keys["classes_per_client"] = cfg.classes_per_client
        return {**keys, "classes": list(self.dataset.classes),
                "label_counts": self.label_counts().tolist(),
                "corrupt": [int(a) for a in self.corrupt],
                "poisoned": {str(a): int(n) for a, n in sorted(self.poisoned_per_agent.items())}}


def honest_copies(x: torch.Tensor, y: torch.Tensor, clean_x: torch.Tensor, clean_y: torch.Tensor,
                  agents: list[np.ndarray], corrupt: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, dict[int, np.ndarray]]:
    """Append a clean copy of every poisoned row to ``x``/``y``; per corrupt agent, its rows with each
    poisoned one replaced by its copy (what it trains on while it behaves honestly)."""
    poisoned_rows = torch.nonzero(y != clean_y).flatten()
    n = x.shape[0]
    where = np.full(n, -1, dtype=np.int64)
    where[poisoned_rows.numpy()] = n + np.arange(len(poisoned_rows))
    honest = {}
    for a in corrupt:
        rows = agents[int(a)].copy()
        hit = where[rows] >= 0
        rows[hit] = where[rows[hit]]
        honest[int(a)] = rows
    return torch.cat([x, clean_x[poisoned_rows]]), torch.cat([y, clean_y[poisoned_rows]]), honest


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    # one float32 copy, changed in place (at FEMNIST's 342k images a temporary costs 1 GB)
    return x.to(torch.float32, copy=True).div_(255.0).sub_(m).div_(s).contiguous()


def partition_agents(cfg: ExperimentConfig, ds: ImageDataset, train_idx: np.ndarray) -> list[np.ndarray]:
    seed = seeding.seed_of(cfg.seed, seeding.SETUP, 1) % (2**32)
    labels = ds.train_y.numpy()[train_idx]
    if cfg.partition == "natural":
        writers = partitioners.natural(ds)
        if cfg.train_limit is not None:
            raise DataError("train_limit cannot be combined with partition = 'natural'; choose fewer writers with num_agents")
        if cfg.num_agents is not None:
            if cfg.num_agents > len(writers):
                raise DataError(f"num_agents={cfg.num_agents} but the dataset has {len(writers)} writers")
            writers = writers[: cfg.num_agents]
        return [np.asarray(w, dtype=np.int64) for w in writers]
    k = cfg.num_agents
    assert k is not None
    if cfg.partition == "iid":
        parts = partitioners.iid(len(train_idx), k, seed)
    elif cfg.partition == "iid-balanced":  # the authors' iid: every agent the same count of every class (up to one)
        parts = partitioners.iid(len(train_idx), k, seed, labels=labels)
    elif cfg.partition == "dirichlet":
        try:
            parts = partitioners.dirichlet(labels, k, cfg.dirichlet_alpha, seed, min_size=cfg.dirichlet_min_size)
        except DataError as exc:  # name the config's keys: alpha is dirichlet_alpha, min_size dirichlet_min_size
            raise DataError(f"{exc} (the config's dirichlet_alpha, dirichlet_min_size and num_agents)") from None
    elif cfg.partition == "shards":
        parts = partitioners.shards(labels, k, cfg.classes_per_client, seed)
    else:  # pragma: no cover - the config's Literal forbids it
        raise ValueError(cfg.partition)
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DataError(f"partition {cfg.partition} left {len(empty)} of {k} agents without data (agents "
                        f"{empty[:5]}{'...' if len(empty) > 5 else ''}); "
                        + ("raise dirichlet_min_size (at least 1) or dirichlet_alpha, or use fewer agents"
                           if cfg.partition == "dirichlet" else "use fewer agents"))
    return [train_idx[np.asarray(p, dtype=np.int64)] for p in parts]


def build_federation(cfg: ExperimentConfig, ds: ImageDataset) -> Federation:
    """Split the data among agents, choose and poison the corrupt agents, build eval sets."""
    n_train = ds.train_x.shape[0]
    if ds.test_y.numel() == 0:
        raise DataError(f"{ds.name} has no test split: the run evaluates on it; give the loader (or data_sources) "
                        f"the test data too")
    train_idx = np.arange(n_train)
    if cfg.train_limit is not None and cfg.partition != "natural":
        if cfg.train_limit > n_train:
            raise DataError(f"train_limit={cfg.train_limit} exceeds the {n_train} training images of {ds.name}")
        train_idx = stratified_subset(ds.train_y.numpy(), cfg.train_limit, seeding.numpy_rng(cfg.seed, seeding.SUBSET))
    agents = partition_agents(cfg, ds, train_idx)
    k = len(agents)
    n_corrupt = cfg.num_corrupt(k)
    rng = seeding.numpy_rng(cfg.seed, seeding.SETUP, 2)
    corrupt = np.sort(rng.choice(k, size=n_corrupt, replace=False)) if n_corrupt else np.zeros(0, dtype=np.int64)

    if ds.is_image:
        h, w = ds.image_shape[1:]
        family = registry.dataset_spec(cfg.dataset).trojan_family
        ink = ds.ink if cfg.trojan_value is None else cfg.trojan_value
        full_mask = trigger(cfg.trojan, h, w, dataset=family, ink=ink)  # a mask, or the authors' additive logo
        masks: list = (dba_parts(cfg.trojan, cfg.dba_parts, h, w, dataset=family, split=cfg.dba_split)
                       if cfg.attack == "dba" else [full_mask])
        try:
            offset = placement_offset(full_mask.mask if isinstance(full_mask, AdditiveTrojan) else full_mask,
                                      cfg.trojan_position)
        except ValueError as exc:
            raise DataError(f"trojan_position = {cfg.trojan_position!r}: {exc}") from None
        full_mask, masks = shift_mask(full_mask, offset), [shift_mask(m, offset) for m in masks]
    elif cfg.attack != "label-flip" and cfg.corrupt_fraction > 0:
        raise DataError(f"attack {cfg.attack!r} draws a trojan on images, but {ds.name} is not images (samples of "
                        f"shape {tuple(ds.image_shape)}): use attack = 'label-flip'")
    if cfg.attack == "label-flip" or not ds.is_image:  # a semantic backdoor: relabelled, nothing drawn
        full_mask = torch.zeros(ds.image_shape[1:], dtype=torch.bool) if ds.is_image else None
        masks = [None]

    value = ds.ink if cfg.trojan_value is None else cfg.trojan_value
    x, y, poisoned = poison_agents(
        ds.train_x, ds.train_y, agents, corrupt, masks, value, cfg.base_class, cfg.target_class,
        cfg.poison_fraction, lambda agent: seeding.numpy_rng(cfg.seed, seeding.SETUP, 3, agent))

    poisoned_rows = torch.nonzero(y != ds.train_y).flatten().numpy().astype(np.int64)
    honest: dict[int, np.ndarray] = {}
    if (cfg.attack_from_round > 1 or cfg.attack_until_round is not None or cfg.update_attack().needs_clean) \
            and len(corrupt):
        x, y, honest = honest_copies(x, y, ds.train_x, ds.train_y, agents, corrupt)

    root, root_note = (draw_root_set(cfg, ds, agents, poisoned_rows, n_train) if cfg.aggregator == "fltrust"
                       else (None, None))

    test_y = ds.test_y
    base_rows = torch.nonzero(test_y == cfg.base_class).flatten()
    base_x_u8 = ds.test_x[base_rows]
    notes = {
        "num_agents": k,
        "num_corrupt": int(n_corrupt),
        "corrupt_without_base_samples": int(sum(1 for v in poisoned.values() if v == 0)),
        "poisoned_samples": int(sum(poisoned.values())),
        "trojan_value": int(value) if ds.is_image else None,
        "train_samples": int(sum(len(a) for a in agents)),
        "data_source": ds.source,
        "dataset": registry.dataset_record(cfg.dataset, ds),
        "attack_from_round": int(cfg.attack_from_round),
        "attack_until_round": cfg.attack_until_round,
    }
    if root_note is not None:
        notes["fltrust_root"] = root_note
    if n_corrupt and cfg.attack != "label-flip" and ds.is_image:
        # the trojan-contrast diagnostic: how much the trojan changes the base class's test images
        contrast = trojan_contrast(base_x_u8, full_mask, value)
        notes["trojan_contrast"] = round(contrast, 4)
        if contrast < LOW_CONTRAST and isinstance(full_mask, AdditiveTrojan):
            how = "subtracted from" if full_mask.subtract else "added (modulo 256) to"
            msg = (f"the {cfg.trojan} trojan (position {cfg.trojan_position}), {how} the images as the authors do, "
                   f"changes the base class's test images by only {contrast:.2f} of the pixel range on its pixels "
                   f"(below {LOW_CONTRAST}): it wraps around or saturates there, and the backdoor may never take. "
                   f"Try another trojan_position, or the drawn logo (trojan = "
                   f"{cfg.trojan.removesuffix('-authors')!r})")
            log.warning(msg)
            notes["warnings"] = [msg]
        elif contrast < LOW_CONTRAST:
            msg = (f"the {cfg.trojan} trojan (position {cfg.trojan_position}, value {value}) changes the base class's "
                   f"test images by only {contrast:.2f} of the pixel range on its pixels (below {LOW_CONTRAST}): it is "
                   f"drawn on a region of that colour already, and the backdoor may never take. Try another "
                   f"trojan_position or trojan_value")
            log.warning(msg)
            notes["warnings"] = [msg]
    if ds.is_image:
        train_x: NormalisedImages | torch.Tensor = NormalisedImages(x, ds.mean, ds.std)
        val_x, base_x = normalise(ds.test_x, ds.mean, ds.std), normalise(base_x_u8, ds.mean, ds.std)
        backdoor_x = normalise(apply_trojan(base_x_u8, full_mask, value), ds.mean, ds.std)
    else:  # features or token ids: used as given; the backdoor set is the clean base class (label flip)
        train_x, val_x, base_x = x.contiguous(), ds.test_x.clone(), base_x_u8.clone()
        backdoor_x = base_x
    return Federation(
        dataset=ds,
        train_x=train_x,
        train_y=y,
        agent_indices=agents,
        corrupt=corrupt.astype(np.int64),
        poisoned_per_agent=poisoned,
        val_x=val_x,
        val_y=test_y.clone(),
        base_x=base_x,
        backdoor_x=backdoor_x,
        notes=notes,
        honest_indices=honest,
        attack_from_round=int(cfg.attack_from_round),
        attack_until_round=cfg.attack_until_round,
        poisoned_rows=poisoned_rows,
        trigger_mask=((full_mask.mask if isinstance(full_mask, AdditiveTrojan) else full_mask)
                      if ds.is_image and cfg.attack == "trojan" else None),
        root_indices=root,
    )


def draw_root_set(cfg: ExperimentConfig, ds: ImageDataset, agents: list[np.ndarray], poisoned_rows: np.ndarray,
                  n_train: int) -> tuple[np.ndarray, dict]:
    """FLTrust's root dataset: ``cfg.fltrust_root_size`` training rows drawn uniformly without
    replacement under the seed ``(seed, ROOT)``, from the training rows no agent holds (held out)
    when there are enough of them, else from the agents' clean rows (not poisoned; the paper's
    default, a sample of the clients' clean data). Returns the sorted indices and the record
    (``notes["fltrust_root"]``: size, source, per-class counts)."""
    held = np.ones(n_train, dtype=bool)
    for rows in agents:
        held[rows[rows < n_train]] = False
    held_out = np.flatnonzero(held)
    size = cfg.fltrust_root_size
    if len(held_out) >= size:
        pool, source = held_out, "held-out training rows (no agent holds them)"
    else:
        clean = np.zeros(n_train, dtype=bool)
        for rows in agents:
            clean[rows[rows < n_train]] = True
        clean[poisoned_rows] = False
        pool, source = np.flatnonzero(clean), "the agents' clean training rows (too few rows are held out)"
        if len(pool) < size:
            raise DataError(f"fltrust_root_size = {size}, but only {len(held_out)} training rows are held out and "
                            f"{len(pool)} are clean agents' rows: lower fltrust_root_size (the paper uses 100)")
    rng = seeding.numpy_rng(cfg.seed, seeding.ROOT)
    root = np.sort(rng.choice(pool, size=size, replace=False)).astype(np.int64)
    counts = np.bincount(ds.train_y.numpy()[root], minlength=ds.num_classes)
    note = {"size": int(size), "source": source, "label_counts": [int(c) for c in counts]}
    missing = [int(c) for c in np.flatnonzero(counts == 0)]
    if missing:
        msg = (f"FLTrust's root set of {size} examples holds no example of class(es) {missing}: the server's own "
               f"update ignores them, and honest updates that learn them lose trust. Raise fltrust_root_size")
        log.warning(msg)
        note["warnings"] = [msg]
    return root, note
