"""The one typed, validated experiment configuration.

A config is loaded from a TOML file or a preset (see :mod:`robustlr.sim.presets`), optionally changed by ``--set
key=value`` overrides, validated once, and saved as ``config.json`` beside every result so
that any number can be traced to the exact settings and seed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import sys
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from robustlr.aggregation.rlr import Threshold
from robustlr.errors import ConfigError, did_you_mean
from robustlr.models.registry import MODELS, model_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Partition = Literal["iid", "iid-balanced", "natural", "dirichlet", "shards"]
Aggregator = Literal["fedavg", "comed", "sign", "foolsgold", "trimmed-mean", "krum", "multikrum", "bulyan", "rfa",
                     "flame", "signguard", "fltrust", "fldetector", "deepsight", "freqfed"]
Attack = Literal["trojan", "dba", "label-flip"]
Trojan = Literal["plus", "square", "copyright", "apple", "copyright-authors", "apple-authors"]
TrainMode = Literal["auto", "sequential", "processes", "vectorized"]
Precision = Literal["fp32", "bf16"]

log = logging.getLogger("robustlr")

#: the largest eta: the server step is eta x the aggregated update, and the paper's values are 1 and 1e-3
#: (sign); a step over 1,000 x the mean update cannot train and overflows float32 weights into inf/nan
SERVER_LR_MAX = 1e3
#: the largest model-replacement factor: Bagdasaryan et al. boost by about (agents per round) / eta, at
#: most 3,383 / 1 here (every FEMNIST writer in a round); larger factors overflow float32 into inf/nan
BOOST_FACTOR_MAX = 1e4


def classes_of(dataset: str, digits_only: bool | None) -> int:
    """The number of classes of a built-in dataset setting (FEMNIST: 62, or 10 with ``digits_only``);
    10 for a name that is not built in (the store's migration of old rows; a config knows its own:
    :attr:`ExperimentConfig.num_classes`)."""
    return 62 if dataset.startswith("femnist") and not digits_only else 10


def _has_batch_norm(name: str) -> bool:
    spec = model_spec(name)
    if spec.batch_norm is not None:  # the built-in models say so
        return spec.batch_norm
    from robustlr.models.registry import build_model, has_batch_norm

    cached = _BATCH_NORM.get((name, spec.build))
    if cached is None:
        cached = _BATCH_NORM[(name, spec.build)] = has_batch_norm(build_model(name, 10, spec=spec))
    return cached


_BATCH_NORM: dict = {}


class ExperimentConfig(BaseModel):
    """Every knob of one federated-learning experiment.

    Notation of the paper in brackets: R rounds, K agents, F corrupt fraction, P poison
    fraction, C participation, E local epochs, B batch size, theta RLR threshold.
    """

    # inf and nan are refused in every float field
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str = Field("experiment", pattern=r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$", max_length=120,
                      description="a label for reports and the default output folder runs/<name>: letters, digits "
                      "and . _ + = - (no path separators)")
    # -- data
    dataset: str = Field("fashion-mnist", min_length=1, description="which dataset: fashion-mnist, femnist-leaf, "
                         "femnist-tff, cifar10, a dataset registered with robustlr.register_dataset or by an "
                         "installed package (entry point group robustlr.datasets), or an import string "
                         "'package.module:loader' (loader() -> robustlr.data.ImageDataset)")
    data_sources: list[str] = Field(
        default_factory=list,
        description="dataset-specific inputs, relative to the data directory or absolute: "
        "LEAF shard folders for femnist-leaf, [train.h5, test.h5] for femnist-tff",
    )
    digits_only: bool = Field(True, description="FEMNIST: keep digits 0-9 only (10 classes)")
    partition: Partition = Field("iid", description="how training data is split among agents: iid (uniform, sizes "
                                 "equal up to one), iid-balanced (also every class in equal shares: the authors' "
                                 "code), dirichlet (label skew, dirichlet_alpha), shards (classes_per_client), natural "
                                 "(one agent per writer)")
    dirichlet_alpha: float = Field(0.5, gt=0, description="label skew of the dirichlet partition")
    dirichlet_min_size: int = Field(10, ge=0, description="dirichlet: redraw (up to 1,000 times) until every agent "
                                    "holds at least this many samples (NIID-Bench's default, 10)")
    classes_per_client: int = Field(2, ge=1, description="classes per agent for the shards partition")
    exact_only: bool = Field(False, description="CIFAR-10 from cifar10.npz: drop the 97 images whose pixels are a "
                             "JPEG approximation (77 train, 20 test), keeping only original pixels")
    train_limit: int | None = Field(
        None, ge=10, description="use a stratified subset of this many training images (quick runs)"
    )
    # -- model
    model: str = Field("mnist-cnn", min_length=1, description="the network: mnist-cnn, cifar-cnn, cifar-cnn-bn, a "
                       "model registered with robustlr.register_model or by an installed package (entry point group "
                       "robustlr.models), or an import string 'package.module:factory' (factory(num_classes) -> "
                       "torch.nn.Module)")
    init_model: str | None = Field(
        None, min_length=1, description="warm start: the run starts from these weights instead of a random "
        "initialisation: a model.pt, a run folder (its final model.pt), or 'pretrained:PRESET' (the clean model "
        "`robustlr pretrain PRESET` builds and caches; built on first use). Its sha256 is in the run's summary")
    # -- federation
    rounds: int = Field(200, ge=1, description="R: communication rounds")
    num_agents: int | None = Field(
        10, ge=1, description="K: number of agents (natural partition: None = one per writer, "
        "a number = the first K writers)"
    )
    corrupt_fraction: float = Field(0.1, ge=0, lt=1, description="F: fraction of corrupt agents (0 = no attack)")
    participation: float = Field(1.0, gt=0, le=1, description="C: fraction of agents sampled each round")
    # -- attack
    attack: Attack = Field("trojan", description="trojan: every corrupt agent uses the whole trojan; "
                           "dba: corrupt agent i uses part i mod dba_parts; label-flip: no trojan, the poisoned "
                           "base-class samples are only relabelled (a semantic backdoor: the backdoor accuracy is "
                           "the share of clean base-class test images classified as the target)")
    trojan: Trojan = "plus"
    trojan_position: str = Field(
        "default", pattern=r"^(default|top-left|top-right|bottom-left|bottom-right|centre|[0-9]+,[0-9]+)$",
        description="where the trojan sits: default (the paper's place for each trojan), a corner (2 pixels in "
        "from its edges), centre, or 'ROW,COL' (the top-left pixel of its bounding box); DBA parts move with it")
    corrupt_loss: Literal["standard", "negated"] = Field(
        "standard", description="negated: corrupt agents minimise minus the loss on their (poisoned) data (Table 7)")
    trojan_value: int | None = Field(
        None, strict=True, description="pixel value 0..255 the trojan is drawn with, in every channel, for poisoning and "
        "the backdoor test set (None = the dataset's ink: 255 on Fashion-MNIST and CIFAR-10, 0 on FEMNIST; "
        "the authors' code draws the CIFAR-10 plus with 0)"
    )
    dba_parts: int = Field(4, ge=1)
    dba_split: Literal["authors", "disjoint"] = Field(
        "authors", description="the plus in 4 parts: 'authors' as add_pattern_bd of the paper's code (bar halves of "
        "4/3/5/4 pixels, the horizontal halves sharing the centre and the pixel right of it); 'disjoint' 4/3/3/3 "
        "pixels, no pixel in two parts. Other trojans or part counts are always disjoint strips")
    attack_from_round: int = Field(
        1, ge=1, description="corrupt agents behave honestly (their clean data, the standard loss) before this round")
    attack_until_round: int | None = Field(
        None, ge=1, description="the attack window's last round: corrupt agents behave honestly after it (None: to "
        "the end); the run records the backdoor's durability after it (backdoor_durability in summary.json)")
    boost_factor: float = Field(
        1.0, gt=0, description="model replacement (Bagdasaryan et al.): corrupt agents scale their updates' trainable "
        "coordinates by this factor (1 = off); with adaptive = 'scale', only the chosen coordinates. In (0, 1e4]: "
        "model replacement needs about (agents per round) / eta, at most 3,383 here; larger factors overflow "
        "float32 weights")
    stealth: Literal["none", "project"] = Field(
        "none", description="project: corrupt agents project what they send onto the L2 ball of stealth_multiple x "
        "the norm of their own clean update (trained the same round on their clean data), after boosting")
    stealth_multiple: float = Field(1.0, gt=0, description="stealth: the norm bound as a multiple of the clean norm")
    stealth_penalty: float = Field(
        0.0, ge=0, description="mu: corrupt agents add mu/2 ||w - w_global||^2 to their loss, so their update stays "
        "close to the global model (an L2 anomaly-evasion term; 0 = off; not with train_mode vectorized)")
    pgd_radius: float | None = Field(
        None, gt=0, description="PGD (Sun et al. 2019; Wang et al. 2020): corrupt agents project their weights onto "
        "||w - w_global|| <= pgd_radius after every local step while they attack (None = off; robustlr.attacks.local)")
    neurotoxin_top_percent: float | None = Field(
        None, gt=0, lt=100, description="Neurotoxin (Zhang et al. 2022): corrupt agents mask out of their gradients, "
        "at every local step, the top k % of trainable coordinates by |last global update| (None = off; the authors' "
        "runs use 5, i.e. --gradmask_ratio 0.95; robustlr.attacks.local)")
    trigger_optimisation: Literal["none", "a3fl", "f3ba", "iba"] = Field(
        "none", description="a3fl (Zhang et al. 2023): each attacked round the corrupt agents optimise their trigger "
        "on the trojan's region against the global model and an adversarially hardened copy of it, then train with it; "
        "f3ba (Fang and Chen 2023): they flip the signs of the least important weights to match an optimised trigger "
        "and train from the flipped model; iba (Nguyen et al. 2023): they train a generator whose bounded, "
        "image-dependent perturbation makes the global model output the target, and poison with it. The backdoor test "
        "set uses the latest trigger (attack = 'trojan' on images; simulator only; robustlr.attacks.a3fl, "
        "robustlr.attacks.f3ba, robustlr.attacks.iba)")
    iba_eps: float = Field(0.15, gt=0, le=1, description="iba: the perturbation's bound in the first attacked round, "
                           "in [0, 1] pixel units (the authors' MNIST atk_eps 0.3 on a [-1, 1] scale)")
    iba_test_eps: float = Field(0.025, gt=0, le=1, description="iba: the bound the backdoor test set is drawn at and "
                                "the floor of the training bound's decay (the authors' MNIST atk_test_eps 0.05 on a "
                                "[-1, 1] scale)")
    iba_eps_decay: float = Field(0.001, ge=0, lt=1, description="iba: the training bound is max(iba_test_eps, iba_eps "
                                 "(1 - decay)^t) after t attacked rounds (the authors' eps_decay)")
    iba_generator_epochs: int = Field(3, ge=1, description="iba: the generator's epochs per attacked round (the "
                                      "authors' MNIST atk_model_train_epoch)")
    iba_generator_lr: float = Field(1e-3, gt=0, description="iba: the generator's Adam learning rate (the authors' "
                                    "MNIST atk_lr)")
    f3ba_conv_rate: float = Field(0.02, gt=0, lt=1, description="f3ba: share of each convolution's weights that are "
                                  "flip candidates (the authors' conv_rate)")
    f3ba_fc_rate: float = Field(0.001, gt=0, lt=1, description="f3ba: share of each linear layer's weights that are "
                                "flip candidates (the authors' fc_rate)")
    a3fl_iterations: int = Field(200, ge=1, description="a3fl: K, trigger iterations per round (the authors' "
                                 "trigger_outter_epochs)")
    a3fl_lr: float = Field(0.01, gt=0, description="a3fl: the trigger's sign step in normalised pixel units (the "
                           "authors' trigger_lr)")
    a3fl_adv_epochs: int = Field(5, ge=0, description="a3fl: epochs of the adversarial (trigger-unlearning) model per "
                                 "iteration (the authors' dm_adv_epochs; 0 = none, the global model only)")
    a3fl_lambda: float = Field(0.01, ge=0, description="a3fl: the adversarial model's weight in the trigger loss (the "
                               "authors' noise_loss_lambda)")
    adaptive: Literal["none", "sign", "scale"] = Field(
        "none", description="adaptive attacks on the sign vote (colluding corrupt agents, simulator only): 'sign' "
        "sends their clean updates except on the top adaptive_top_fraction coordinates of |mean poisoned - mean "
        "clean|, where all send the mean poisoned update (x boost_factor); 'scale' sends the poisoned updates with "
        "only those coordinates x boost_factor")
    adaptive_top_fraction: float = Field(0.01, gt=0, le=1, description="adaptive: share of trainable coordinates attacked")
    byzantine: Literal["none", "alie", "ipm", "min-max", "min-sum"] = Field(
        "none", description="untargeted colluding attacks on convergence (simulator only; robustlr.attacks.byzantine): "
        "every corrupt agent sends the same update crafted from the round's honest updates, on trainable "
        "coordinates: 'alie' mean - z std (Baruch et al. 2019), 'ipm' -epsilon mean (Xie et al. 2020), 'min-max' / "
        "'min-sum' mean + gamma p (Shejwalkar and Houmansadr 2021); measured by validation accuracy")
    alie_z: float | None = Field(None, gt=0, description="byzantine = 'alie': z (default: the paper's z_max from the "
                                 "agents and corrupt agents of the round)")
    ipm_epsilon: float = Field(0.1, gt=0, description="byzantine = 'ipm': epsilon, the scale of the negated mean")
    minmax_perturbation: Literal["std", "unit-vec", "sign"] = Field(
        "std", description="byzantine = 'min-max' / 'min-sum': the direction p (-std, -mean/|mean|, -sign(mean))")
    poison_fraction: float = Field(0.5, gt=0, le=1, description="P: share of a corrupt agent's base-class samples poisoned")
    base_class: int = Field(5, ge=0)
    target_class: int = Field(7, ge=0)
    # -- local training
    local_epochs: int = Field(2, ge=1, description="E")
    batch_size: int = Field(256, ge=1, description="B")
    client_lr: float = Field(0.1, gt=0)
    client_momentum: float = Field(0.9, ge=0, lt=1)
    grad_clip: float = Field(10.0, ge=0, description="gradient-norm clip in local SGD (0 = off)")
    # -- server
    aggregator: Aggregator = "fedavg"
    server_lr: float | None = Field(
        None, gt=0, description="eta; default 1e-3 for sign aggregation, else 1.0. In (0, 1e3]: the server step is "
        "eta x the aggregated update (the paper uses 1 and 1e-3); larger steps overflow float32 weights")
    rlr_threshold: float = Field(
        0, ge=0, description="theta; 0 = no robust learning rate; an integer >= 1 counts agents; "
        "a value in (0, 1) is a fraction of the agents in the round"
    )
    buffer_aggregation: Literal["mean", "rule"] = Field(
        "mean", description="batch-norm buffers (running statistics, num_batches_tracked): 'mean' averages them "
        "plainly under every rule (the rule, clipping, noise and FoolsGold's similarities see parameters only); "
        "'rule' treats them as coordinates of the rule")
    rlr_scope: Literal["trainable", "all", "weights"] = Field(
        "trainable", description="coordinates RLR may flip; 'trainable' averages batch-norm statistics plainly; "
        "'weights' flips convolution and linear weights only (biases, normalisation scales and shifts get the "
        "plain rule); 'all' flips buffers too"
    )
    rlr_soft: bool = Field(
        False, description="scale each coordinate by the vote's margin, (a - theta) / (n - theta) above theta and "
        "(a - theta) / theta below it, instead of +-1 (robustlr's variant; see RobustLR)")
    rlr_max_flip: float | None = Field(
        None, gt=0, le=1, description="a threshold per array: at most this share of each layer's coordinates is "
        "flipped (theta lowered per array to the largest count that keeps within it; 0.25 = Theorem 1's p0 < 1/4); "
        "None = the paper's single theta (robustlr's variant; see RobustLR)")
    rlr_from_round: int = Field(1, ge=1, description="RLR is on from this round (the rounds before aggregate "
                                "without it); Table 6 non-iid switches it on for the last 50 of 500 rounds")
    rlr_from_val_acc: float | None = Field(
        None, gt=0, le=1, description="RLR switches on after the first evaluated round whose validation accuracy "
        "reaches this fraction (Figure 6: 0.93 iid); the switch round is in the run record")
    clip_norm: float = Field(0.0, ge=0, description="M: L2 bound of updates; 0 = off; where it applies: clip_scope")
    clip_scope: Literal["both", "server", "agents"] = Field(
        "both", description="both: agents project onto the M-ball (PGD) and the server clips (the paper's eq. 2); "
        "server: only the server clips (Table 7); agents: only the agents project")
    noise_sigma: float = Field(0.0, ge=0, description="sigma: server noise std is sigma * M")
    assumed_corrupt: int | None = Field(
        None, ge=0, description="f, the corrupt agents per round krum, multikrum and bulyan guard against (None = "
        "ceil(F x agents per round)); krum needs n > 2f + 2 agents, bulyan n >= 4f + 3")
    multikrum_keep: int | None = Field(
        None, ge=1, description="multikrum: how many best-scored updates are averaged (None = n - f)")
    trim_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="trimmed-mean: the share of values cut from each end of every coordinate")
    flame_noise_lambda: float = Field(
        0.001, ge=0, description="flame: the noise std is lambda x the round's median update norm")
    signguard_lower: float = Field(
        0.1, ge=0, description="signguard: updates with norm at or below this x the round's median norm are dropped "
        "(the paper's 0.1)")
    signguard_upper: float = Field(
        3.0, gt=0, description="signguard: updates with norm at or above this x the round's median norm are dropped "
        "(the paper's 3.0)")
    signguard_coord_fraction: float = Field(
        0.1, gt=0, le=1, description="signguard: the share of coordinates (a random window each round) whose sign "
        "statistics are clustered (the authors' 0.1)")
    fltrust_root_size: int = Field(
        100, ge=1, description="fltrust: examples in the server's clean root dataset, drawn (seeded) from the "
        "training rows no agent holds when there are enough, else from the agents' clean rows (the paper's 100, "
        "drawn from the clients' data)")
    fldetector_window: int = Field(
        10, ge=1, description="fldetector: rounds of history behind each prediction and each suspicious score (the "
        "paper's N = 10); predictions start in round N + 2 and detection in round 2N + 1, so the run needs at least "
        "2N + 1 rounds")
    deepsight_samples: int = Field(
        20000, ge=1, description="deepsight: random inputs per seed on which every local model's outputs are "
        "compared with the global model's (the DDifs; the authors' 20000). The cost is seeds x samples x (agents + 1) "
        "forward passes a round")
    deepsight_seeds: int = Field(3, ge=1, description="deepsight: seeds of random inputs, one DDif clustering each "
                                 "(the authors' 3)")
    deepsight_tau: float = Field(
        1 / 3, gt=0, le=1, description="deepsight: a cluster is accepted when its share of suspicious agents is below "
        "tau (the authors' 1/3)")
    deepsight_min_cluster_size: int = Field(
        5, ge=2, description="deepsight: HDBSCAN's min_cluster_size (and min_samples) in every clustering (the "
        "reimplementations' HDBSCAN default 5)")
    crfl: bool = Field(
        False, description="CRFL (Xie et al., ICML 2021): after each round's aggregation the server clips the global "
        "model's parameter norm to rho_t and sends the next round's agents the clipped model plus N(0, crfl_sigma^2) "
        "on every parameter (the model it evaluates and keeps is not perturbed); `robustlr certify RUN` then smooths "
        "and certifies the final model")
    crfl_sigma: float = Field(
        0.01, gt=0, description="crfl: the std of the noise on every parameter of the model sent (the authors' 0.01, "
        "for their linear models)")
    crfl_rho_slope: float = Field(
        0.1, ge=0, description="crfl: rho_t = min(cap, slope x t + intercept) (the authors' MNIST 0.1)")
    crfl_rho_intercept: float = Field(
        2.0, gt=0, description="crfl: rho_t's intercept (the authors' MNIST 2; the paper's CNN starts at norm ~8.9, "
        "so their value shrinks it fourfold in round 1)")
    crfl_rho_cap: float = Field(15.0, gt=0, description="crfl: rho_t's cap (the authors' MNIST 15)")
    screen_norm_multiple: float = Field(
        0.0, ge=0, description="update screening: reject updates whose L2 norm exceeds this multiple of the round's "
        "median norm (0 = off); rejections are logged and counted in the round record with the agent and the reason")
    comed_even: Literal["mean", "lower"] = Field(
        "lower", description="comed with an even number of agents: the lower of the two middle values (torch.median, "
        "as the authors' code; the default since 0.3) or their mean (numpy's median; CoordinateMedian()'s default)")
    # -- run
    seed: int = Field(0, ge=0, lt=2**32, description="the run's seed, 0 .. 2**32 - 1 (every random stream is "
                      "derived from it; larger integers would repeat streams)")
    eval_every: int = Field(1, ge=1)
    telemetry_per_layer: bool = Field(
        False, description="record, each round and for every array of the model (batch-norm statistics included), "
        "the honest and corrupt agents' agreement with the applied step and their mean update norm "
        "(round records' per_layer; costs one more pass over the updates; the numbers do not depend on it)")
    checkpoint_every: int = Field(10, ge=0, description="rounds between checkpoints (0 = only at the end)")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$", description="cpu, cuda, cuda:0, ...")
    max_rounds_without_updates: int = Field(
        3, ge=1, description="stop the run (non-zero exit, last good checkpoint kept) after this many consecutive "
        "rounds in which every agent's update was rejected as non-finite")
    train_mode: TrainMode = Field(
        "auto", description="local training engine: sequential (one agent after another, in-process), processes "
        "(agents side by side in worker processes, one thread each; the CPU default), vectorized (torch.func vmap; "
        "the CUDA default); auto picks by device and round size")
    precision: Precision = Field("fp32", description="bf16 autocast for local training (opt-in)")
    threads: int | None = Field(
        None, ge=1, description="CPU cores to use: training worker processes (one thread per agent) and "
        "evaluation threads; None = all available. The numbers do not depend on it")

    @model_validator(mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, data: Any) -> Any:
        # pydantic's lax mode reads true as 1: refuse a bool anywhere but in a bool field
        if isinstance(data, dict):
            bad = [k for k, v in data.items() if isinstance(v, bool) and k in cls.model_fields
                   and cls.model_fields[k].annotation is not bool]
            if bad:
                raise ValueError("; ".join(f"{k}={data[k]!r}: a bool where a number or text is expected" for k in bad))
        return data

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        model_spec(name)  # a ModelError (a ValueError) names the choices
        return name

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from robustlr.data.registry import dataset_spec

        dataset_spec(name)  # a DataError (a ValueError) names the choices
        return name

    @property
    def facts(self):
        """What the checks know of the dataset before a run loads it
        (:class:`robustlr.data.registry.DatasetFacts`; a plugged dataset is loaded once to see)."""
        from robustlr.data.registry import dataset_facts

        return dataset_facts(self.dataset, self.data_sources, self.digits_only, self.exact_only)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample, (C, H, W) for images: what the model takes."""
        return self.facts.input_shape

    @property
    def batch_norm(self) -> bool:
        """Whether the config's model has batch norm (a plugged-in model is built once to see)."""
        return _has_batch_norm(self.model)

    @model_validator(mode="after")
    def _check(self) -> "ExperimentConfig":
        problems = []
        if self.base_class == self.target_class:
            problems.append(f"base_class and target_class are both {self.base_class}: the backdoor must change the label")
        spec = model_spec(self.model)  # an unknown name was refused by the field's validator
        try:
            facts = self.facts
        except ValueError as exc:  # a plugged dataset's loader failed or returned garbage
            raise ValueError(str(exc)) from None
        shape = facts.input_shape
        if spec.input_shape is not None and tuple(spec.input_shape) != shape:
            fits = [n for n, m in MODELS.items() if m.input_shape == shape]
            what = "images" if facts.image else "samples"
            problems.append(f"model {self.model!r} takes inputs of shape {tuple(spec.input_shape)}: it does not fit "
                            f"{self.dataset} ({what} of shape {shape})"
                            + (f"; use {' or '.join(fits)}" if fits else "; use a model for that shape"))
        elif spec.origin != "built in":
            try:  # a plugged-in model is built once here: a factory that fails is refused before any work
                self.batch_norm
            except ValueError as exc:
                problems.append(str(exc))
        if self.exact_only and self.dataset != "cifar10":
            problems.append(f"exact_only applies to cifar10 (the 97 JPEG-filled images of cifar10.npz), not {self.dataset}")
        if self.attack_until_round is not None and self.corrupt_fraction > 0:
            if self.attack_until_round < self.attack_from_round:
                problems.append(f"attack_until_round={self.attack_until_round} ends the attack window before it "
                                f"starts (attack_from_round={self.attack_from_round}): raise it, or unset it to "
                                f"attack to the end")
            elif self.attack_until_round >= self.rounds:
                problems.append(f"attack_until_round={self.attack_until_round} is not before the last round "
                                f"({self.rounds}): no round would show the backdoor's durability; lower it, or "
                                f"unset it to attack to the end")
        if self.attack_from_round > self.rounds and self.corrupt_fraction > 0:
            problems.append(f"attack_from_round={self.attack_from_round} is after the last round ({self.rounds}): "
                            "the run would have no attack; lower it, or set corrupt_fraction = 0 for a clean run")
        if self.partition == "natural" and not facts.has_writers:
            problems.append(f"partition 'natural' needs a dataset with writers (femnist-leaf, femnist-tff, or one "
                            f"whose loader sets train_writers), not {self.dataset}")
        if not facts.image and self.attack != "label-flip" and self.corrupt_fraction > 0:
            problems.append(f"attack {self.attack!r} draws a trojan on images, but {self.dataset} is not images "
                            f"(samples of shape {shape}, not uint8 (C, H, W)): use attack = 'label-flip' (with "
                            f"boost_factor, stealth or adaptive if you like)")
        if self.num_agents is None and self.partition != "natural":
            problems.append("num_agents may be omitted only with partition = 'natural'")
        n_classes = self.num_classes
        for key in ("base_class", "target_class"):
            if getattr(self, key) >= n_classes:
                problems.append(f"{key}={getattr(self, key)} but {self.dataset} has {n_classes} classes (0..{n_classes - 1})")
        if self.num_agents is not None and self.corrupt_fraction > 0 and self.num_corrupt(self.num_agents) == 0:
            problems.append(
                f"corrupt_fraction={self.corrupt_fraction} of num_agents={self.num_agents} is floor(F*K) = 0 corrupt "
                f"agents: the run would have no attack. Set corrupt_fraction = 0 for a clean run, or raise num_agents "
                f"or corrupt_fraction")
        # theta is validated in one place, robustlr.aggregation.Threshold (a count of a full round, or a fraction)
        try:
            Threshold.of(self.rlr_threshold,
                         full_round=self.agents_per_round(self.num_agents) if self.num_agents is not None else None)
        except ValueError as exc:
            where = f" (K={self.num_agents}, C={self.participation})" if self.num_agents is not None else ""
            problems.append(f"rlr_{exc}{where}" if str(exc).startswith("threshold") else f"rlr_threshold: {exc}")
        if self.trojan_value is not None and not 0 <= self.trojan_value <= 255:
            problems.append(
                f"trojan_value={self.trojan_value} is not a pixel value: use an integer in 0..255, "
                "or leave it unset for the dataset's ink"
            )
        if self.aggregator == "sign" and self.batch_norm and self.buffer_aggregation == "rule":
            problems.append(
                f"aggregator 'sign' with model {self.model!r} and buffer_aggregation 'rule': the sign vote would move "
                "batch-norm running statistics by +-1 (eta scales trainable parameters only); use "
                "buffer_aggregation = 'mean'")
        if self.aggregator == "fldetector":
            if self.participation < 1:
                problems.append(f"aggregator 'fldetector' with participation = {self.participation}: FLDetector predicts "
                                f"each agent's update from its update of the round before, so every agent must take "
                                f"part in every round; set participation = 1.0")
            if self.rounds < 2 * self.fldetector_window + 1:
                problems.append(f"fldetector_window = {self.fldetector_window} with rounds = {self.rounds}: the first "
                                f"prediction comes in round window + 2 and detection needs a window of them (round "
                                f"{2 * self.fldetector_window + 1} at the earliest), so the run would end before "
                                f"FLDetector could detect anyone; lower fldetector_window or raise rounds")
        if self.aggregator == "deepsight" and self.facts.token_ids:
            problems.append(f"aggregator 'deepsight' with dataset {self.dataset!r}: DeepSight compares the models' "
                            f"outputs on random inputs uniform in [0, 1), which a model of token ids cannot take; "
                            f"choose another aggregator")
        if self.aggregator == "signguard" and self.signguard_lower >= self.signguard_upper:
            problems.append(f"signguard_lower={self.signguard_lower} must be below signguard_upper="
                            f"{self.signguard_upper} (the norm filter keeps lower x median < norm < upper x median; "
                            "the paper's 0.1 and 3.0)")
        if self.rlr_from_val_acc is not None and self.rlr_from_round != 1:
            problems.append("give rlr_from_round or rlr_from_val_acc, not both")
        if self.noise_sigma > 0 and self.clip_scope == "agents":
            problems.append("noise_sigma > 0 needs the server to clip (clip_scope 'both' or 'server'): "
                            "the noise std is sigma * M")
        if self.noise_sigma > 0 and self.clip_norm == 0:
            problems.append("noise_sigma > 0 needs clip_norm > 0 (the noise std is sigma * M)")
        if self.aggregator in ("krum", "multikrum", "bulyan") and self.num_agents is not None:
            n = self.agents_per_round(self.num_agents)
            f = self.resolved_assumed_corrupt(n)
            need = 4 * f + 3 if self.aggregator == "bulyan" else 2 * f + 3
            if n < need:
                rule = "n >= 4f + 3" if self.aggregator == "bulyan" else "n > 2f + 2"
                problems.append(f"aggregator {self.aggregator!r} with f = {f} assumed corrupt agents needs {rule}, i.e. "
                                f"at least {need} agents per round, but a round has {n}: lower assumed_corrupt or "
                                f"raise num_agents / participation")
            if self.aggregator == "multikrum" and self.multikrum_keep is not None and self.multikrum_keep > n:
                problems.append(f"multikrum_keep={self.multikrum_keep} exceeds the {n} agents of a round")
        if self.stealth_penalty > 0 and self.train_mode == "vectorized":
            problems.append("stealth_penalty is not implemented in the vectorized engine: use train_mode sequential, "
                            "processes or auto")
        model_attack = [k for k, off in (("boost_factor", 1.0), ("stealth", "none"), ("adaptive", "none"),
                                         ("stealth_penalty", 0.0), ("pgd_radius", None),
                                         ("neurotoxin_top_percent", None), ("trigger_optimisation", "none"),
                                         ("byzantine", "none"))
                        if getattr(self, k) != off]
        if self.byzantine != "none":
            crafted = [k for k in model_attack if k != "byzantine"]
            if crafted:
                problems.append(f"byzantine = {self.byzantine!r} replaces the corrupt agents' updates entirely, so "
                                f"{', '.join(crafted)} cannot act on them: leave them at their defaults")
            if self.num_agents is not None and self.corrupt_fraction > 0:
                per_round = self.agents_per_round(self.num_agents)
                if per_round - min(per_round, self.num_corrupt(self.num_agents)) < 2:
                    problems.append(f"byzantine = {self.byzantine!r} crafts its update from the spread of a round's "
                                    f"honest updates, and a round of {per_round} agents may hold fewer than 2 honest "
                                    f"ones: raise num_agents or participation, or lower corrupt_fraction")
        if model_attack and self.corrupt_fraction == 0:
            problems.append(f"{', '.join(model_attack)} set but corrupt_fraction = 0: no agent would attack")
        opt = self.trigger_optimisation
        if opt != "none" and self.attack != "trojan":
            problems.append(f"trigger_optimisation = {opt!r} redraws the trigger on the trojan attack's poisoned "
                            f"rows: it needs attack = 'trojan', not {self.attack!r}")
        if opt != "none" and not self.facts.image:
            problems.append(f"trigger_optimisation = {opt!r} draws a trigger on images, but {self.dataset} is not "
                            f"images: use attack = 'label-flip' without it")
        if opt == "f3ba" and self.pgd_radius is not None:
            problems.append("trigger_optimisation = 'f3ba' trains the corrupt agents from a flipped model, so a PGD "
                            "ball around their starting point would not bound their update: leave pgd_radius unset")
        if self.adaptive == "scale" and self.boost_factor == 1.0:
            problems.append("adaptive = 'scale' multiplies the chosen coordinates by boost_factor: set boost_factor "
                            "!= 1 (e.g. 10)")
        if self.trojan.endswith("-authors") and self.trojan_value is not None:
            problems.append(f"trojan {self.trojan!r} is the authors' greyscale logo, added to (or subtracted from) the "
                            f"image: trojan_value does not apply; leave it unset, or use trojan = "
                            f"{self.trojan.removesuffix('-authors')!r} (drawn in one value)")
        if self.rlr_soft and self.rlr_max_flip is not None and self.rlr_threshold > 0:
            problems.append("rlr_max_flip caps the hard rule's flips and is not defined with rlr_soft = true: "
                            "set one of them")
        if self.attack == "label-flip" and (self.trojan != "plus" or self.trojan_position != "default"
                                            or self.trojan_value is not None):
            problems.append("attack 'label-flip' draws no trojan: leave trojan, trojan_position and trojan_value unset")
        problems.extend(self._bounds_and_contradictions())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _bounds_and_contradictions(self) -> list[str]:
        """Ranges and combinations a run would refuse only after loading the data, or would run as garbage."""
        from robustlr.attacks.dba import dba_parts
        from robustlr.attacks.trojans import placement_offset, trojan_mask

        problems = []
        if self.server_lr is not None and self.server_lr > SERVER_LR_MAX:
            problems.append(f"server_lr={self.server_lr:g} is outside (0, {SERVER_LR_MAX:g}]: eta scales the "
                            "aggregated update (the paper uses 1, and 1e-3 for sign); larger steps overflow")
        if self.boost_factor > BOOST_FACTOR_MAX:
            problems.append(f"boost_factor={self.boost_factor:g} is outside (0, {BOOST_FACTOR_MAX:g}]: model "
                            "replacement needs about (agents per round) / eta; larger factors overflow")
        facts = self.facts
        family = facts.trojan_family
        if facts.image and len(facts.input_shape) == 3:
            _, height, width = facts.input_shape
            if self.attack != "label-flip" and self.trojan.endswith("-authors") and (height, width) != (28, 28):
                problems.append(f"trojan = {self.trojan!r} is the authors' 28x28 image and {self.dataset}'s images are "
                                f"{height}x{width}: use trojan = {self.trojan.removesuffix('-authors')!r} (drawn, any size)")
            elif self.attack != "label-flip":
                try:
                    placement_offset(trojan_mask(self.trojan, height, width, dataset=family), self.trojan_position)
                except ValueError as exc:
                    problems.append(f"trojan_position={self.trojan_position!r}: {exc}")
            if self.attack == "dba":
                try:
                    dba_parts(self.trojan, self.dba_parts, height, width, dataset=family, split=self.dba_split)
                except ValueError as exc:
                    problems.append(f"dba_parts={self.dba_parts}: {str(exc).replace('n_parts ', '', 1)}")
        if self.train_limit is not None:
            if self.partition == "natural":
                problems.append("train_limit cannot be combined with partition = 'natural'; choose fewer writers "
                                "with num_agents")
            elif facts.train_size is not None:
                n_train = facts.train_size
                if self.train_limit > n_train:
                    problems.append(f"train_limit={self.train_limit} exceeds the {n_train} training images of "
                                    f"{self.dataset}: use at most {n_train}, or leave it unset for all of them")
        n_samples = self.train_limit if self.train_limit is not None else facts.train_size
        if self.partition != "natural" and self.num_agents is not None and n_samples is not None:
            need = self.num_agents * (self.classes_per_client if self.partition == "shards" else 1)
            if need > n_samples:
                what = (f"num_agents x classes_per_client = {need} shards" if self.partition == "shards"
                        else f"num_agents={self.num_agents}")
                problems.append(f"{what} {'exceed' if self.partition == 'shards' else 'exceeds'} the {n_samples} "
                                "training images"
                                f"{' (train_limit)' if self.train_limit is not None else ''}: lower num_agents"
                                f"{' or classes_per_client' if self.partition == 'shards' else ''} or raise train_limit")
        if self.dataset == "femnist-tff" and len(self.data_sources) != 2:
            problems.append(f"dataset femnist-tff needs data_sources = [train.h5, test.h5], got {len(self.data_sources)} "
                            "files")
        if self.train_mode == "vectorized" and self.batch_norm:
            problems.append(f"the vectorized engine does not support batch-norm models ({self.model}); use train_mode = "
                            "'sequential' or 'auto'")
        if self.train_mode == "processes" and self.device != "cpu":
            problems.append(f"train_mode 'processes' runs on the CPU, not on {self.device}; use vectorized, sequential "
                            "or auto")
        if self.partition == "shards" and self.classes_per_client > self.num_classes:
            problems.append(f"classes_per_client={self.classes_per_client} exceeds the {self.num_classes} classes of "
                            f"{self.dataset}: use 1..{self.num_classes}")
        if self.rlr_threshold > 0 and self.rlr_from_round > self.rounds:
            problems.append(f"rlr_from_round={self.rlr_from_round} is after the last round ({self.rounds}): RLR would "
                            "never switch on; lower it, or set rlr_threshold = 0 for a run without RLR")
        return problems

    def undefended(self) -> ExperimentConfig | None:
        """This run's undefended twin: the same config with every key of the server's defense
        (:data:`DEFENSE_KEYS`) at its default, i.e. plain FedAvg under the same attack, budget and
        seed; ``None`` when this run is not a defended run under attack (no corrupt agents, or no
        defense). A defended cell is evidence only where the attack took in this twin.

        Example:
            >>> cfg = make_config({"rlr_threshold": 4, "clip_norm": 2.0, "noise_sigma": 1e-3})
            >>> twin = cfg.undefended()
            >>> (twin.rlr_threshold, twin.clip_norm, twin.noise_sigma, twin.corrupt_fraction == cfg.corrupt_fraction)
            (0.0, 0.0, 0.0, True)
            >>> make_config({}).undefended() is None   # FedAvg already
            True
        """
        if self.corrupt_fraction == 0:
            return None
        fields = type(self).model_fields
        defaults = {k: fields[k].get_default(call_default_factory=True) for k in DEFENSE_KEYS}
        if all(getattr(self, k) == v for k, v in defaults.items()):
            return None
        twin = type(self).model_validate({**self.model_dump(), **defaults})
        # defense keys set where they cannot act (rlr_from_val_acc without RLR, ...) defend nothing
        return None if config_hash(twin) == config_hash(self) else twin

    def inert_keys(self) -> dict[str, str]:
        """The keys set away from their defaults that cannot act in this config, each with the reason.

        They are left out of :func:`config_hash` (as if at their defaults); :func:`load_config` warns
        about them, except the attack keys of a clean run (corrupt_fraction = 0), which a clean
        baseline inherits from the attacked config it is derived from."""
        return {k: why for k, (why, _warn) in self._inert().items()}

    def _inert(self) -> dict[str, tuple[str, bool]]:
        rules: list[tuple[tuple[str, ...], bool, str, bool]] = [  # keys, inert?, why, warn?
            (("rlr_from_round", "rlr_from_val_acc", "rlr_scope", "rlr_soft", "rlr_max_flip"), self.rlr_threshold == 0,
             "rlr_threshold = 0 (no RLR)", True),
            (("rlr_scope",), not self.batch_norm and self.rlr_scope == "all",
             f"model {self.model} has no batch-norm buffers ('all' differs from 'trainable' only on them)", True),
            (("buffer_aggregation",), not self.batch_norm,
             f"model {self.model} has no batch-norm buffers", True),
            (("assumed_corrupt",), self.aggregator not in ("krum", "multikrum", "bulyan"),
             f"aggregator {self.aggregator} (only krum, multikrum and bulyan use it)", True),
            (("multikrum_keep",), self.aggregator != "multikrum", f"aggregator {self.aggregator} (only multikrum)",
             True),
            (("trim_fraction",), self.aggregator != "trimmed-mean", f"aggregator {self.aggregator} (only trimmed-mean)",
             True),
            (("comed_even",), self.aggregator != "comed", f"aggregator {self.aggregator} (only comed)", True),
            (("flame_noise_lambda",), self.aggregator != "flame", f"aggregator {self.aggregator} (only flame)", True),
            (("signguard_lower", "signguard_upper", "signguard_coord_fraction"), self.aggregator != "signguard",
             f"aggregator {self.aggregator} (only signguard)", True),
            (("fltrust_root_size",), self.aggregator != "fltrust", f"aggregator {self.aggregator} (only fltrust)", True),
            (("fldetector_window",), self.aggregator != "fldetector", f"aggregator {self.aggregator} (only fldetector)",
             True),
            (("crfl_sigma", "crfl_rho_slope", "crfl_rho_intercept", "crfl_rho_cap"), not self.crfl, "crfl = false",
             True),
            (("deepsight_samples", "deepsight_seeds", "deepsight_tau", "deepsight_min_cluster_size"),
             self.aggregator != "deepsight", f"aggregator {self.aggregator} (only deepsight)", True),
            (("dirichlet_alpha", "dirichlet_min_size"), self.partition != "dirichlet",
             f"partition {self.partition} (only dirichlet)", True),
            (("classes_per_client",), self.partition != "shards", f"partition {self.partition} (only shards)", True),
            (("digits_only",), not self.dataset.startswith("femnist"),
             f"dataset {self.dataset} (only femnist-leaf and femnist-tff)", True),
            (("data_sources",), self.dataset in ("fashion-mnist", "cifar10"),
             f"dataset {self.dataset} (only femnist-leaf, femnist-tff and plugged-in datasets)", True),
            (("dba_parts", "dba_split"), self.attack != "dba", f"attack {self.attack} (only dba)", True),
            (("dba_split",), not (self.trojan == "plus" and self.dba_parts == 4),
             f"trojan {self.trojan} in {self.dba_parts} parts (only the plus in 4 parts has a split choice)", True),
            (("stealth_multiple",), self.stealth != "project", "stealth = 'none'", True),
            (("adaptive_top_fraction",), self.adaptive == "none", "adaptive = 'none'", True),
            (("alie_z",), self.byzantine != "alie", f"byzantine = {self.byzantine!r} (only alie)", True),
            (("ipm_epsilon",), self.byzantine != "ipm", f"byzantine = {self.byzantine!r} (only ipm)", True),
            (("minmax_perturbation",), self.byzantine not in ("min-max", "min-sum"),
             f"byzantine = {self.byzantine!r} (only min-max and min-sum)", True),
            (("clip_scope",), self.clip_norm == 0, "clip_norm = 0 (no clipping)", True),
            (("poison_fraction", "corrupt_loss", "attack_from_round", "attack_until_round", "dba_parts", "dba_split"),
             self.corrupt_fraction == 0, "corrupt_fraction = 0 (a clean run)", False),
        ]
        out: dict[str, tuple[str, bool]] = {}
        for keys, inert, why, warn in rules:
            if not inert:
                continue
            for k in keys:
                if k not in out and getattr(self, k) != ExperimentConfig.model_fields[k].get_default(
                        call_default_factory=True):
                    out[k] = (why, warn)
        return out

    def update_attack(self):
        """The attack on the corrupt agents' updates (:class:`robustlr.attacks.model.UpdateAttack`)."""
        from robustlr.attacks.model import UpdateAttack

        return UpdateAttack(boost=self.boost_factor, stealth=self.stealth, stealth_multiple=self.stealth_multiple,
                            adaptive=self.adaptive, top_fraction=self.adaptive_top_fraction)

    # -- derived values
    @property
    def num_classes(self) -> int:
        return self.facts.num_classes

    @property
    def resolved_server_lr(self) -> float:
        if self.server_lr is not None:
            return self.server_lr
        return 1e-3 if self.aggregator == "sign" else 1.0

    def advice(self) -> list[str]:
        """Warnings about a valid config whose numbers may not mean what the user expects (logged by
        :func:`load_config`; not refusals): theta outside the paper's range ``K*F+1 .. K-K*F`` for the
        agents of a full round."""
        from robustlr.aggregation import Threshold, threshold_range

        out = []
        if self.rlr_threshold > 0 and self.corrupt_fraction > 0 and self.num_agents is not None:
            k = self.agents_per_round(self.num_agents)
            theta = Threshold.of(self.rlr_threshold, full_round=k).for_round(k)
            try:
                low, high = threshold_range(k, self.corrupt_fraction)
            except ValueError:
                low = high = None
            if low is not None and not low <= theta <= high:
                side = ("below it the corrupt agents' votes alone can keep a coordinate's sign" if theta < low else
                        "above it the honest agents cannot reach it and RLR flips their learning too")
                out.append(f"rlr_threshold = {self.rlr_threshold:g} is theta {theta} of the {k} agents a round, outside "
                           f"the paper's range K*F+1 .. K-K*F = {low} .. {high} at corrupt_fraction "
                           f"{self.corrupt_fraction} ({side})")
        return out

    def agents_per_round(self, num_agents: int) -> int:
        """floor(C*K), at least 1, as the authors' code samples (33 of 3,383 writers at C 0.01)."""
        return max(1, int(math.floor(self.participation * num_agents + 1e-9)))

    @property
    def agent_clip_norm(self) -> float:
        """The PGD radius of local training (0 = none)."""
        return self.clip_norm if self.clip_scope in ("both", "agents") else 0.0

    @property
    def server_clip_norm(self) -> float:
        """The server's clipping bound M (0 = none)."""
        return self.clip_norm if self.clip_scope in ("both", "server") else 0.0

    def resolved_assumed_corrupt(self, agents_per_round: int) -> int:
        """f for krum, multikrum and bulyan: ``assumed_corrupt``, or ceil(F x the agents of a round)."""
        if self.assumed_corrupt is not None:
            return self.assumed_corrupt
        return int(math.ceil(round(self.corrupt_fraction * agents_per_round, 9)))

    def num_corrupt(self, num_agents: int) -> int:
        """floor(F*K) corrupt agents (the paper's code uses the same rounding)."""
        return int(math.floor(self.corrupt_fraction * num_agents + 1e-9))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False)


#: config keys that cannot change a run's numbers: a resume may change them
NEUTRAL_KEYS = ("name", "threads", "checkpoint_every", "max_rounds_without_updates", "telemetry_per_layer")
#: defaults that changed: a hash compares with the value the key had when hashes began, so a stored run keeps
#: its hash and a run at the new default gets another (comed_even was "mean" before 0.3)
HASH_BASELINE = {"comed_even": "mean"}
#: the server's defense: an undefended twin (ExperimentConfig.undefended) has these at their defaults
DEFENSE_KEYS = ("aggregator", "server_lr", "rlr_threshold", "buffer_aggregation", "rlr_scope", "rlr_soft", "rlr_max_flip",
                "rlr_from_round", "rlr_from_val_acc", "clip_norm", "clip_scope", "noise_sigma", "assumed_corrupt",
                "multikrum_keep", "trim_fraction", "flame_noise_lambda", "signguard_lower", "signguard_upper",
                "signguard_coord_fraction", "fltrust_root_size", "fldetector_window", "deepsight_samples",
                "deepsight_seeds", "deepsight_tau", "deepsight_min_cluster_size", "crfl", "crfl_sigma",
                "crfl_rho_slope", "crfl_rho_intercept", "crfl_rho_cap", "screen_norm_multiple", "comed_even")


def config_hash(cfg: ExperimentConfig) -> str:
    """16 hex digits naming a run's numbers: its number-changing keys that differ from the defaults
    (so a key added in a later version, left at its default, does not change the hash). Keys that
    cannot act in this config (:meth:`ExperimentConfig.inert_keys`) are left out, as if at their
    defaults."""
    dumped = cfg.model_dump(mode="json")
    inert = cfg.inert_keys()  # as if at their defaults: they cannot change the numbers
    for k, was in HASH_BASELINE.items():  # a changed default that cannot act here is inert too
        if getattr(cfg, k) != was and k in cfg.model_copy(update={k: was}).inert_keys():
            inert[k] = "inert"
    keys = {k: dumped[k] for k, field in ExperimentConfig.model_fields.items()
            if k not in NEUTRAL_KEYS and k not in inert and (field.is_required()
                                          or getattr(cfg, k) != HASH_BASELINE.get(k, field.get_default(call_default_factory=True)))}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    fields = list(ExperimentConfig.model_fields)
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            lines.append(f"  - unknown key {loc!r}{hint}")
            continue
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        name = str(e["loc"][0]) if e["loc"] else ""
        if e["type"] == "literal_error" and isinstance(value, str) and name in ExperimentConfig.model_fields:
            # a misspelt choice (aggregator, dataset, model, ...): the closest valid one
            shown += did_you_mean(value, typing.get_args(ExperimentConfig.model_fields[name].annotation))
        lines.append(f"  - {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (for example --set rounds=20)")
        key, raw = item.split("=", 1)
        out[key.strip()] = _parse_value(raw.strip())
    return out


def make_config(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a TOML config or a preset (the defaults when ``path`` is None), apply ``key=value`` overrides.

    A file or preset may name another preset in ``extends``; see :mod:`robustlr.sim.presets`.
    """
    from robustlr.sim.presets import read_config_file

    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data, source = read_config_file(path)
    data.update(parse_overrides(overrides))
    cfg = make_config(data, source)
    for key, (why, warn) in cfg._inert().items():
        if warn:
            log.warning("%s = %r has no effect with %s; it is left out of the config hash (remove it)",
                        key, getattr(cfg, key), why)
    for line in cfg.advice():
        log.warning("%s", line)
    return cfg


def config_from_json(path: str | Path) -> ExperimentConfig:
    return make_config(json.loads(Path(path).read_text()), str(path))
