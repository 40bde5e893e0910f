"""Search spaces as code: the paper's grids, the extra methods, and an open multi-objective search.

A :class:`SearchSpace` is either a *grid* (labelled points crossed with seeds, run with Optuna's
``GridSampler`` so that a figure is exactly reproducible) or an *open* search whose
``suggest(trial)`` draws a config for NSGA-II. A trial becomes one flat config dict: ``space.base``
updated by the caller's overrides, then by the point (or the suggestion) and the seed. The grids
follow Shi et al. (KDD 2020), Section 5.

Example::

    >>> space = get_space("paper-collisions", seeds=(0, 1))
    >>> space.size  # (1 full + 7 hash + 3 x 7 qr) x 2 seeds
    58
    >>> space.point("qr-mult-c4")["num_collisions"]
    4
    >>> parse_seeds("0,1,2")
    (0, 1, 2)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

# compemb.options imports no torch: `compemb sweep list/export` stays fast
from compemb.options import COLLISION_METHODS, COMPRESSED_METHODS, METHODS, OPERATION_METHODS
from compemb.options import OPERATIONS as _ALL_OPERATIONS

__all__ = [
    "SearchSpace",
    "SPACES",
    "get_space",
    "list_spaces",
    "grid_key",
    "PAPER_COLLISIONS",
    "PAPER_THRESHOLDS",
    "PAPER_PATH_HIDDEN",
    "OPERATIONS",
    "DEFAULT_THRESHOLD",
    "DIRECTIONS",
    "OBJECTIVE_NAMES",
    "parse_seeds",
    "COMPRESSION_RATIOS",
    "COMPRESSION_RECLUSTER_EVERY",
    "compression_points",
]

#: Collisions of the paper's main figure (Shi et al. 2020, Fig. 3/4): 2-7 and 60.
PAPER_COLLISIONS: Tuple[int, ...] = (2, 3, 4, 5, 6, 7, 60)
#: Size thresholds of the paper's threshold experiment, at 4 collisions.
PAPER_THRESHOLDS: Tuple[int, ...] = (1, 20, 200, 2000, 20000)
#: Hidden sizes of the path-based MLPs in the paper's path-based table.
PAPER_PATH_HIDDEN: Tuple[int, ...] = (16, 32, 64, 128)
#: The operations in the order of the paper's figures (concat, add, mult). A study records its grid
#: points in this order, so changing it would refuse to resume existing studies.
OPERATIONS: Tuple[str, ...] = tuple(reversed(_ALL_OPERATIONS))
#: Tables with more rows than this are compressed outside the threshold grid (the reference DLRM's
#: default ``--qr-threshold``; the paper's Criteo tables are far larger).
DEFAULT_THRESHOLD = 200
#: Optuna directions of the two objectives (embedding parameters, validation log loss).
DIRECTIONS: Tuple[Literal["minimize", "maximize"], ...] = ("minimize", "minimize")
OBJECTIVE_NAMES: Tuple[str, str] = ("embedding_params", "val_loss")

Point = Dict[str, Any]


def parse_seeds(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    """``"0,1,2"`` -> ``(0, 1, 2)`` (a ``--seeds`` option); ``None`` stays ``None``.

    Raises:
        ValueError: an entry is not an int, naming the text.
    """
    if text is None:
        return None
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds expects comma-separated ints, got {text!r}") from None


def grid_key(point: str, seed: int) -> str:
    """The identity of a grid trial: its point label and seed (``"qr-mult-c4/s0"``)."""
    return f"{point}/s{int(seed)}"


@dataclass(frozen=True)
class SearchSpace:
    """A named search space.

    Args:
        name: registry name (also the default study name).
        description: one line for ``compemb sweep list``.
        points: grid points as ``(label, fields)`` pairs; ``None`` for an open search.
        seeds: seeds crossed with every grid point (grid) or given to every trial (open: the first).
        base: fixed config fields under every point.
        suggest: open search only: ``suggest(trial) -> fields`` drawing the variable fields.
        n_trials: open search only: the number of COMPLETE trials to reach.

    Example::

        >>> s = SearchSpace("t", "tiny", points=(("full", {"method": "full"}),), seeds=(0, 1))
        >>> s.is_grid, s.size, s.grid_search_space()
        (True, 2, {'point': ['full'], 'seed': [0, 1]})
    """

    name: str
    description: str
    points: Optional[Tuple[Tuple[str, Point], ...]] = None
    seeds: Tuple[int, ...] = (0,)
    base: Point = field(default_factory=dict)
    suggest: Optional[Callable[[Any], Point]] = None
    n_trials: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.points is None) == (self.suggest is None):
            raise ValueError(f"space {self.name!r}: give exactly one of points (grid) or suggest (open)")
        if not self.seeds:
            raise ValueError(f"space {self.name!r}: seeds must not be empty")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int):
                raise TypeError(f"space {self.name!r}: seeds must be ints, got {s!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"space {self.name!r}: duplicate seeds in {self.seeds}")
        if self.points is not None:
            labels = [label for label, _ in self.points]
            if not labels:
                raise ValueError(f"space {self.name!r}: a grid needs at least one point")
            dup = sorted({x for x in labels if labels.count(x) > 1})
            if dup:
                raise ValueError(f"space {self.name!r}: duplicate point labels {dup}")
        elif self.n_trials is None or self.n_trials < 1:
            raise ValueError(f"space {self.name!r}: an open search needs n_trials >= 1, got {self.n_trials!r}")

    @property
    def is_grid(self) -> bool:
        return self.points is not None

    @property
    def size(self) -> int:
        """Number of trials to complete: grid points x seeds, or ``n_trials``."""
        if self.points is None:
            return int(self.n_trials)  # type: ignore[arg-type]
        return len(self.points) * len(self.seeds)

    def labels(self) -> List[str]:
        return [label for label, _ in self.points or ()]

    def point(self, label: str) -> Point:
        """The fields of grid point ``label`` (``KeyError`` naming it when absent)."""
        for name, fields in self.points or ():
            if name == label:
                return dict(fields)
        raise KeyError(f"space {self.name!r} has no grid point {label!r}; points: {self.labels()}")

    def grid_search_space(self) -> Dict[str, List[Any]]:
        """The :class:`optuna.samplers.GridSampler` search space: ``point`` x ``seed``."""
        if self.points is None:
            raise ValueError(f"space {self.name!r} is an open search, not a grid")
        return {"point": self.labels(), "seed": list(self.seeds)}

    def grid_keys(self) -> List[str]:
        """Every grid trial's key, in point-major order."""
        return [grid_key(label, seed) for label in self.labels() for seed in self.seeds]

    def make_sampler(self, seed: int = 0) -> Any:
        """``GridSampler`` for a grid (fixed shuffle seed), ``NSGAIISampler`` for an open search."""
        import optuna

        if self.points is not None:
            return optuna.samplers.GridSampler(self.grid_search_space(), seed=seed)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, self.size // 4)))

    def sample(self, trial: Any, overrides: Optional[Mapping[str, Any]] = None) -> Tuple[Optional[str], Point]:
        """Draw one trial's config.

        Returns:
            ``(key, config)``: the grid key (``None`` for an open search) and the full config dict
            ``base | overrides | point | {"seed": seed}``.
        """
        config = dict(self.base)
        config.update(overrides or {})
        if self.points is not None:
            label = trial.suggest_categorical("point", self.labels())
            seed = trial.suggest_categorical("seed", list(self.seeds))
            config.update(self.point(label))
            config["seed"] = int(seed)
            return grid_key(label, seed), config
        assert self.suggest is not None
        config.update(self.suggest(trial))
        config.setdefault("seed", self.seeds[0])
        return None, config


# --------------------------------------------------------------------------------------------
# point builders


def _full() -> Tuple[str, Point]:
    return "full", {"method": "full"}


def _hash(c: int, threshold: int = DEFAULT_THRESHOLD) -> Tuple[str, Point]:
    return f"hash-c{c}", {"method": "hash", "num_collisions": c, "threshold": threshold}


def _qr(op: str, c: int, threshold: Optional[int] = None) -> Tuple[str, Point]:
    label = f"qr-{op}-c{c}" + ("" if threshold is None else f"-t{threshold}")
    t = DEFAULT_THRESHOLD if threshold is None else threshold
    return label, {"method": "qr", "operation": op, "num_collisions": c, "threshold": t}


def _path(hidden: int, c: int = 4) -> Tuple[str, Point]:
    return f"path-h{hidden}-c{c}", {
        "method": "path",
        "num_collisions": c,
        "hidden_dims": [hidden],
        "threshold": DEFAULT_THRESHOLD,
    }


def _kpart(method: str, op: str, k: int = 3) -> Tuple[str, Point]:
    return f"{method}-{op}-k{k}", {"method": method, "operation": op, "k": k, "threshold": DEFAULT_THRESHOLD}


def _md(alpha: float) -> Tuple[str, Point]:
    return f"md-a{alpha:g}", {"method": "md", "md_temperature": alpha, "threshold": DEFAULT_THRESHOLD}


def collisions_points(collisions: Sequence[int] = PAPER_COLLISIONS,
                      operations: Sequence[str] = OPERATIONS) -> Tuple[Tuple[str, Point], ...]:
    """Figure 1's grid: the full table, hashing and QR per operation over ``collisions``."""
    pts = [_full()]
    pts += [_hash(c) for c in collisions]
    pts += [_qr(op, c) for op in operations for c in collisions]
    return tuple(pts)


def threshold_points(thresholds: Sequence[int] = PAPER_THRESHOLDS, operations: Sequence[str] = OPERATIONS,
                     collisions: int = 4) -> Tuple[Tuple[str, Point], ...]:
    """Figure 2's grid: QR at ``collisions`` per operation over the size ``thresholds``."""
    return tuple(_qr(op, collisions, t) for op in operations for t in thresholds)


def path_points(hidden: Sequence[int] = PAPER_PATH_HIDDEN, collisions: int = 4) -> Tuple[Tuple[str, Point], ...]:
    """Figure 3's grid: path-based composition, one MLP hidden size per point."""
    return tuple(_path(h, collisions) for h in hidden)


def extra_points(k: int = 3, alphas: Sequence[float] = (0.3,)) -> Tuple[Tuple[str, Point], ...]:
    """Generalized QR and CRT with ``k`` partitions per operation, and mixed dimensions."""
    return tuple(_kpart(m, op, k) for m in ("gqr", "crt") for op in OPERATIONS) + tuple(_md(a) for a in alphas)


#: compression ratios of the ``compression`` space: every compressed method at each
COMPRESSION_RATIOS: Tuple[int, ...] = (4, 16, 64)
#: steps between re-clusterings of the ``cluster`` tables in the ``compression`` space (three times
#: in an epoch of MovieLens-100k at batch 128)
COMPRESSION_RECLUSTER_EVERY = 200


def _at_ratio(method: str, ratio: int, threshold: int = DEFAULT_THRESHOLD) -> Tuple[str, Point]:
    """``method`` with its size chosen for ``compression=ratio`` (``compemb.compression``)."""
    fields: Point = {"method": method, "compression": ratio, "threshold": threshold}
    if method in OPERATION_METHODS:
        fields["operation"] = "mult"  # the paper's best operation
    if method in ("gqr", "crt"):
        fields["k"] = 3  # k = 2 would be QR again
    if method == "cluster":
        fields["recluster_every"] = COMPRESSION_RECLUSTER_EVERY
    return f"{method}-r{ratio}", fields


def compression_points(methods: Sequence[str] = COMPRESSED_METHODS,
                       ratios: Sequence[int] = COMPRESSION_RATIOS) -> Tuple[Tuple[str, Point], ...]:
    """The equal-memory comparison: the full model, then every compressed method at every ratio
    (its own size parameter chosen so that each compressed table holds at most ``1/R`` of its full
    size; tables with at most :data:`DEFAULT_THRESHOLD` rows stay full)."""
    return (_full(),) + tuple(_at_ratio(m, r) for r in ratios for m in methods)


def _open_suggest(trial) -> Point:
    """NSGA-II's search: method, operation, collisions, threshold, width and learning rate."""
    method = trial.suggest_categorical("method", [m for m in METHODS if m != "full"])
    fields: Point = {
        "method": method,
        "threshold": trial.suggest_categorical("threshold", list(PAPER_THRESHOLDS)),
        "embedding_dim": trial.suggest_categorical("embedding_dim", [4, 8, 16, 32]),
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 3e-1, log=True),
    }
    if method in OPERATION_METHODS:
        fields["operation"] = trial.suggest_categorical("operation", list(OPERATIONS))
    if method in COLLISION_METHODS + ("robe",):
        fields["num_collisions"] = trial.suggest_int("num_collisions", 2, 64, log=True)
    if method == "freq":  # rows of their own for the most frequent categories of the training split
        fields["num_hot"] = trial.suggest_int("num_hot", 16, 4096, log=True)
    if method == "tt":
        fields["tt_rank"] = trial.suggest_int("tt_rank", 2, 32, log=True)
    if method in ("gqr", "crt"):
        fields["k"] = 3
    if method == "path":
        fields["hidden_dims"] = [trial.suggest_categorical("path_hidden", [16, 32, 64, 128])]
    if method == "md":
        fields["md_temperature"] = trial.suggest_float("md_temperature", 0.1, 0.6)
    return fields


# --------------------------------------------------------------------------------------------
# the registry

#: Base fields of the paper grids: the data set and an interaction width of 16, as in the paper.
PAPER_BASE: Point = {"dataset": "movielens-100k", "embedding_dim": 16}


def _paper_collisions(seeds=(0, 1, 2)) -> SearchSpace:
    return SearchSpace("paper-collisions", "Fig. 1: full, hashing and QR concat/add/mult at collisions 2-7 and 60",
                       collisions_points(), tuple(seeds), dict(PAPER_BASE))


def _paper_thresholds(seeds=(0, 1, 2)) -> SearchSpace:
    return SearchSpace("paper-thresholds", "Fig. 2: QR per operation at 4 collisions, thresholds 1-20000",
                       threshold_points(), tuple(seeds), dict(PAPER_BASE))


def _paper_path(seeds=(0, 1, 2)) -> SearchSpace:
    return SearchSpace("paper-path", "Fig. 3: path-based composition, hidden sizes 16-128 at 4 collisions",
                       path_points() + (_qr("mult", 4),), tuple(seeds), dict(PAPER_BASE))


def _extras(seeds=(0, 1, 2)) -> SearchSpace:
    return SearchSpace("extras", "generalized QR and CRT (k=3) per operation, mixed dimensions",
                       (_full(),) + extra_points(), tuple(seeds), dict(PAPER_BASE))


def _paper_all(seeds=(0, 1, 2)) -> SearchSpace:
    pts = collisions_points() + threshold_points() + path_points() + extra_points()
    return SearchSpace("paper-all", "every grid above in one study (feeds all four figures)", pts, tuple(seeds),
                       dict(PAPER_BASE))


def _open(seeds=(0,), n_trials: int = 60) -> SearchSpace:
    return SearchSpace("open", "NSGA-II over method, operation, collisions, threshold, width and learning rate",
                       None, tuple(seeds), dict(PAPER_BASE), suggest=_open_suggest, n_trials=n_trials)


def _demo(seeds=(0, 1)) -> SearchSpace:
    # The main job's small grid: every figure gets a few points (see paper_figures/demo.py for its cost).
    pts = collisions_points((2, 4, 8)) + threshold_points((1, 20, 2000), ("mult",)) + path_points((16, 64))
    return SearchSpace("demo", "the main job: small grid on MovieLens-100k feeding all four figures", pts,
                       tuple(seeds), dict(PAPER_BASE))


def _tiny(seeds=(0, 1)) -> SearchSpace:
    # For tests: three points, two seeds.
    pts = (_full(), _hash(4), _qr("mult", 4))
    return SearchSpace("tiny", "three points for tests (full, hash c4, qr-mult c4)", pts, tuple(seeds),
                       dict(PAPER_BASE))


#: Base fields of the ``compression`` space: three epochs evaluated every half epoch (MovieLens-100k
#: at batch 128), each run tested with its best validation weights, so a method that overfits later
#: (the full tables do after one epoch) and one that learns slower are both judged at their best.
COMPRESSION_BASE: Point = {**PAPER_BASE, "epochs": 3, "eval_every": 313}


def _compression(seeds=(0, 1, 2)) -> SearchSpace:
    return SearchSpace("compression", "every compressed method at compression 4, 16 and 64x against the full model "
                                      "(figure 5)", compression_points(), tuple(seeds), dict(COMPRESSION_BASE))


SPACES: Dict[str, Callable[..., SearchSpace]] = {
    "paper-collisions": _paper_collisions,
    "paper-thresholds": _paper_thresholds,
    "paper-path": _paper_path,
    "extras": _extras,
    "paper-all": _paper_all,
    "open": _open,
    "demo": _demo,
    "tiny": _tiny,
    "compression": _compression,
}


def get_space(name: str, seeds: Optional[Sequence[int]] = None, n_trials: Optional[int] = None) -> SearchSpace:
    """Build the registered space ``name`` (``KeyError`` listing the names when unknown).

    Args:
        name: one of :data:`SPACES`.
        seeds: replaces the space's default seeds.
        n_trials: open searches only: the number of trials to complete.
    """
    if name not in SPACES:
        raise KeyError(f"unknown search space {name!r}; known: {sorted(SPACES)}")
    kwargs: Dict[str, Any] = {}
    if seeds is not None:
        kwargs["seeds"] = tuple(int(s) for s in seeds)
    if n_trials is not None:
        if name != "open":
            raise ValueError(f"n_trials applies to the open search only, not to grid {name!r}")
        kwargs["n_trials"] = int(n_trials)
    return SPACES[name](**kwargs)


def list_spaces() -> List[Tuple[str, int, str]]:
    """``(name, number of trials, description)`` for every registered space."""
    out = []
    for name in SPACES:
        s = get_space(name)
        out.append((name, s.size, s.description))
    return out


def config_json(config: Mapping[str, Any]) -> str:
    """Canonical JSON of a config (sorted keys), used to compare configs."""
    return json.dumps(dict(config), sort_keys=True, default=str)
