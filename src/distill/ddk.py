"""DDK: domain re-weighting of the distillation data mixture.

Implements the data-mixture part of DDK (Liu et al., "DDK: Distilling Domain Knowledge for
Efficient Large Language Models", NeurIPS 2024, https://arxiv.org/abs/2407.16154): the
distillation corpus is split into N domains, and every K training steps the sampling weight of
each domain is recomputed from how much worse the student is than the teacher on that domain.

Notation (all arrays are 1-D of length N, one entry per domain):

* ``ℓ_S[i]``, ``ℓ_T[i]``: validation perplexity of the student / teacher on domain ``i``.
* ``ρ[i] = ℓ_S[i] / ℓ_T[i]``: the perplexity ratio (:func:`domain_ratios`).
* ``r_t``: the domain weights (a probability distribution) used in interval ``t``.

Equations:

* Eq. 1, domain discrepancy factor::

      r[i] = exp(ρ[i]) / Σ_j exp(ρ[j])          (softmax of the ratios)

* Eq. 2, factor smooth updating, applied every K steps with the perplexities measured at the
  start of the new interval::

      ψ_{t+1}[i] = r_t[i] · exp(ρ[i])
      r_{t+1}[i] = α · ψ_{t+1}[i] / Σ_j ψ_{t+1}[j] + (1 − α) / N,      α = 0.5 in the paper

  The ``(1 − α)/N`` term keeps every domain's weight at least ``(1 − α)/N``; the product with
  ``r_t`` carries memory of the previous intervals, so the mixture changes smoothly.

The schemes compared in the paper's ablation are :data:`MODES` (:func:`interval_weights`):
``"ddk"`` (Eq. 1, then Eq. 2), ``"no_smoothing"`` (Eq. 1 recomputed from scratch at each update),
``"equal"`` (uniform weights, never updated) and ``"natural"`` (no domain draws at all: the
data's own mixture, plain KD with the same loss).

:class:`DomainSampler` turns the weights into a stream of example indices and can be
checkpointed as plain JSON so that a resumed run draws exactly the same sequence.

Domain order: wherever domains are identified by position (weight vectors, perplexity vectors),
the order is the **sorted order of the domain names** (Python's ``sorted`` on the ``str`` names).
Callers that build perplexity vectors must use the same order; :attr:`DomainSampler.domains`
gives it.

All functions are pure: they copy their inputs, return fresh float64 arrays, and raise
``ValueError`` with a message naming the offending argument when an input is invalid.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "MODES",
    "WEIGHT_SUM_ATOL",
    "DomainSampler",
    "domain_ratios",
    "initial_domain_weights",
    "interval_weights",
    "uniform_domain_weights",
    "update_domain_weights",
]

MODES = ("ddk", "no_smoothing", "equal", "natural")
"""The sampling schemes (config ``ddk.modes``), see :func:`interval_weights`."""

WEIGHT_SUM_ATOL = 1e-6
"""Absolute tolerance on ``|Σ weights − 1|`` when validating a weight vector."""

_STATE_VERSION = 1


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _as_vector(values: ArrayLike, name: str) -> np.ndarray:
    """Return ``values`` as a fresh 1-D finite float64 array of length >= 1, or raise."""
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D array of numbers, got {values!r}") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per domain), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must have at least one domain, got an empty array")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def _perplexities(values: ArrayLike, name: str) -> np.ndarray:
    arr = _as_vector(values, name)
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be positive perplexities, got {arr.tolist()}")
    return arr


def _distribution(values: ArrayLike, name: str) -> np.ndarray:
    """Validate a probability vector (non-negative, sums to 1 within WEIGHT_SUM_ATOL)."""
    arr = _as_vector(values, name)
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative, got {arr.tolist()}")
    total = float(arr.sum())
    if abs(total - 1.0) > WEIGHT_SUM_ATOL:
        raise ValueError(
            f"{name} must sum to 1 (a distribution over domains), got sum {total!r} "
            f"for {arr.tolist()}"
        )
    return arr / total


def _check_same_length(**arrays: np.ndarray) -> int:
    lengths = {name: arr.shape[0] for name, arr in arrays.items()}
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"all arrays must have one entry per domain (same length): {detail}")
    return next(iter(lengths.values()))


def _check_alpha(alpha: float) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError) as err:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}") from err
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return value


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array; ``-inf`` entries get probability 0."""
    shifted = logits - np.max(logits)
    exp = np.exp(shifted)
    return exp / exp.sum()


# --------------------------------------------------------------------------------------------
# equations
# --------------------------------------------------------------------------------------------


def domain_ratios(student_ppl: ArrayLike, teacher_ppl: ArrayLike) -> np.ndarray:
    """Per-domain perplexity ratio ``ρ[i] = ℓ_S[i] / ℓ_T[i]``.

    Args:
        student_ppl: shape ``(N,)``, the student's validation perplexity per domain (> 0).
        teacher_ppl: shape ``(N,)``, the teacher's validation perplexity per domain (> 0).

    Returns:
        shape ``(N,)`` float64 array of ratios. A ratio above 1 means the student lags the
        teacher on that domain.

    Raises:
        ValueError: non-positive or non-finite perplexities, wrong shapes, different lengths.
    """
    s = _perplexities(student_ppl, "student_ppl")
    t = _perplexities(teacher_ppl, "teacher_ppl")
    _check_same_length(student_ppl=s, teacher_ppl=t)
    return s / t


def uniform_domain_weights(n_domains: int) -> np.ndarray:
    """Equal weights ``1/N`` for ``N = n_domains`` domains (the "equal sampling" ablation).

    Returns:
        shape ``(N,)`` float64 array.
    """
    if isinstance(n_domains, bool) or not isinstance(n_domains, int | np.integer):
        raise ValueError(f"n_domains must be an int, got {n_domains!r}")
    if n_domains < 1:
        raise ValueError(f"n_domains must be at least 1, got {n_domains}")
    return np.full(int(n_domains), 1.0 / int(n_domains), dtype=np.float64)


def initial_domain_weights(student_ppl: ArrayLike, teacher_ppl: ArrayLike) -> np.ndarray:
    """Domain discrepancy factor, Eq. 1: ``r[i] = softmax(ℓ_S / ℓ_T)[i]``.

    DDK's initial weights, and the weights of the "without factor smoothing" ablation at every
    update. Computed as a max-shifted softmax, so huge ratios do not overflow.

    Args:
        student_ppl: shape ``(N,)``, student validation perplexity per domain (> 0).
        teacher_ppl: shape ``(N,)``, teacher validation perplexity per domain (> 0).

    Returns:
        shape ``(N,)`` float64 distribution (sums to 1).
    """
    return _softmax(domain_ratios(student_ppl, teacher_ppl))


def update_domain_weights(
    weights: ArrayLike,
    student_ppl: ArrayLike,
    teacher_ppl: ArrayLike,
    alpha: float,
) -> np.ndarray:
    """Factor smooth updating, Eq. 2: the weights for the next interval of K steps.

    ::

        ψ[i]      = r_t[i] · exp(ℓ_S[i] / ℓ_T[i])
        r_{t+1}[i] = α · ψ[i] / Σ_j ψ[j] + (1 − α) / N

    Evaluated in log space: ``log ψ = log r_t + ρ``, shifted by its maximum before the
    exponential, so ratios of any size (e.g. 1e6) give finite weights. Domains with
    ``r_t[i] = 0`` have ``ψ[i] = 0`` and get exactly ``(1 − α)/N``.

    Properties: the result sums to 1; every entry is ``>= (1 − α)/N``; ``α = 0`` gives uniform
    weights; ``α = 1`` with uniform ``r_t`` gives Eq. 1.

    Args:
        weights: shape ``(N,)``, current weights ``r_t``; non-negative, summing to 1 within
            :data:`WEIGHT_SUM_ATOL` (renormalised to sum exactly to 1 before use).
        student_ppl: shape ``(N,)``, student validation perplexity per domain, measured at the
            start of the new interval (> 0).
        teacher_ppl: shape ``(N,)``, teacher validation perplexity per domain (> 0).
        alpha: smoothing coefficient in ``[0, 1]``; 0.5 in the paper.

    Returns:
        shape ``(N,)`` float64 distribution ``r_{t+1}``.

    Raises:
        ValueError: invalid perplexities, weights that are not a distribution, arrays of
            different lengths, or ``alpha`` outside ``[0, 1]``.
    """
    r = _distribution(weights, "weights")
    ratios = domain_ratios(student_ppl, teacher_ppl)
    n = _check_same_length(weights=r, student_ppl=ratios)
    a = _check_alpha(alpha)
    with np.errstate(divide="ignore"):
        log_psi = np.log(r) + ratios  # -inf where r == 0; at least one entry is finite
    normalised_psi = _softmax(log_psi)
    return a * normalised_psi + (1.0 - a) / n


def interval_weights(
    mode: str,
    weights: ArrayLike,
    student_ppl: ArrayLike,
    teacher_ppl: ArrayLike,
    alpha: float,
    first: bool,
) -> np.ndarray:
    """The weights of the next interval of K steps under one of :data:`MODES`.

    * ``"ddk"``: Eq. 1 at the first interval (``first``), factor smooth updating (Eq. 2,
      :func:`update_domain_weights`) from the current ``weights`` after.
    * ``"no_smoothing"``: Eq. 1 from the current perplexities at every interval.
    * ``"equal"`` and ``"natural"``: uniform ``1/N`` (``natural`` draws no domains: its weights
      are only logged).

    Args:
        mode: one of :data:`MODES`.
        weights: shape ``(N,)``, the current weights (a distribution).
        student_ppl, teacher_ppl: shape ``(N,)``, perplexities at the start of the interval.
        alpha: smoothing coefficient in ``[0, 1]`` (used by ``"ddk"`` after the first interval).
        first: whether this is the first interval (step 0).

    Returns:
        shape ``(N,)`` float64 distribution.

    Raises:
        ValueError: unknown ``mode`` (the message lists the valid ones) or invalid inputs.
    """
    if mode not in MODES:
        raise ValueError(f"unknown DDK mode {mode!r}; valid modes are {', '.join(MODES)}")
    r = _distribution(weights, "weights")
    _check_alpha(alpha)
    ratios = domain_ratios(student_ppl, teacher_ppl)
    _check_same_length(weights=r, student_ppl=ratios)
    if mode in ("equal", "natural"):
        return uniform_domain_weights(r.shape[0])
    if mode == "no_smoothing" or first:
        return _softmax(ratios)
    return update_domain_weights(weights, student_ppl, teacher_ppl, alpha)


# --------------------------------------------------------------------------------------------
# sampler
# --------------------------------------------------------------------------------------------


def _as_index(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{where} must be an int example index, got {value!r}")
    return int(value)


class DomainSampler:
    """Draws example indices domain by domain, following the current domain weights.

    For each example of a batch, a domain is drawn with probability ``weights[i]``, and the next
    example of that domain is taken from a per-domain shuffled order. When a domain's order is
    used up, it is reshuffled (with the same generator) and restarted, so within a domain every
    example is drawn once before any is drawn again.

    Domains are kept in sorted order of their names: ``weights`` (and the perplexity vectors
    passed to the functions of this module) are indexed in that order, see :attr:`domains`.

    All randomness comes from one ``numpy.random.Generator`` (PCG64) seeded with ``seed``. At
    construction, each domain's order is shuffled in sorted domain order. A batch first draws all
    its domain choices (``Generator.choice``), then takes the examples in batch order,
    reshuffling a domain whenever it runs out.

    :meth:`state_dict` returns plain JSON-serialisable data (generator state, orders, positions,
    weights); :meth:`load_state_dict` restores it, after which the sampler draws exactly what the
    saved one would have drawn.

    Args:
        domains: ``{domain_name: example_indices}``; names are ``str``, each list non-empty.
            Indices are returned as given (e.g. row numbers of the distillation set).
        seed: seed of the generator (a non-negative int).
        weights: optional initial weights, shape ``(N,)`` in sorted domain order or a mapping
            ``{domain_name: weight}``; uniform if omitted.
    """

    def __init__(
        self,
        domains: Mapping[str, Sequence[int]],
        seed: int,
        weights: ArrayLike | Mapping[str, float] | None = None,
    ) -> None:
        if not isinstance(domains, Mapping) or len(domains) == 0:
            raise ValueError("domains must be a non-empty mapping {domain_name: example_indices}")
        for name in domains:
            if not isinstance(name, str):
                raise ValueError(f"domain names must be str (JSON keys), got {name!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self._domains: tuple[str, ...] = tuple(sorted(domains))
        examples: dict[str, list[int]] = {}
        for name in self._domains:
            items = domains[name]
            if isinstance(items, str | bytes) or not isinstance(items, Sequence | np.ndarray):
                raise ValueError(f"domain {name!r}: example indices must be a list of ints")
            if len(items) == 0:
                raise ValueError(f"domain {name!r} has no examples; drop it or add examples")
            examples[name] = [_as_index(v, f"domain {name!r} entry") for v in items]
        self._seed = int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self._seed))
        self._orders: dict[str, list[int]] = {
            name: self._shuffled(examples[name]) for name in self._domains
        }
        self._positions: dict[str, int] = dict.fromkeys(self._domains, 0)
        self._weights = uniform_domain_weights(len(self._domains))
        if weights is not None:
            self.set_weights(weights)

    # -- public API ----------------------------------------------------------------------------

    @property
    def domains(self) -> tuple[str, ...]:
        """Domain names in sorted order: the index order of every weight vector."""
        return self._domains

    @property
    def weights(self) -> np.ndarray:
        """Copy of the current weights, shape ``(N,)``, in :attr:`domains` order."""
        return self._weights.copy()

    def set_weights(self, weights: ArrayLike | Mapping[str, float]) -> None:
        """Use ``weights`` for the following draws.

        Args:
            weights: shape ``(N,)`` distribution in :attr:`domains` order, or a mapping with
                exactly the sampler's domain names as keys.
        """
        if isinstance(weights, Mapping):
            if set(weights) != set(self._domains):
                raise ValueError(
                    f"weights mapping must have exactly the domains {list(self._domains)}, "
                    f"got {sorted(map(str, weights))}"
                )
            weights = [weights[name] for name in self._domains]
        w = _distribution(weights, "weights")
        if w.shape[0] != len(self._domains):
            raise ValueError(
                f"weights has {w.shape[0]} entries but the sampler has {len(self._domains)} "
                f"domains {list(self._domains)}"
            )
        self._weights = w

    def next_batch(self, batch_size: int) -> list[int]:
        """Draw the example indices of the next batch.

        Args:
            batch_size: number of examples (>= 0).

        Returns:
            list of ``batch_size`` example indices (Python ints).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
            raise ValueError(f"batch_size must be an int, got {batch_size!r}")
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        if batch_size == 0:
            return []
        choices = self._rng.choice(len(self._domains), size=int(batch_size), p=self._weights)
        batch: list[int] = []
        for k in choices.tolist():
            name = self._domains[k]
            order = self._orders[name]
            if self._positions[name] >= len(order):
                order = self._orders[name] = self._shuffled(order)
                self._positions[name] = 0
            batch.append(order[self._positions[name]])
            self._positions[name] += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the exact same stream, as JSON-serialisable data.

        Keys: ``version``, ``seed``, ``domains`` (sorted names), ``weights`` (list of floats,
        :attr:`domains` order), ``orders`` (``{name: [index, ...]}``, the current shuffled
        order), ``positions`` (``{name: next position in its order}``), ``rng`` (the PCG64
        bit-generator state; its integers are arbitrary-precision Python ints, which ``json``
        round-trips exactly).
        """
        return {
            "version": _STATE_VERSION,
            "seed": self._seed,
            "domains": list(self._domains),
            "weights": [float(x) for x in self._weights],
            "orders": {name: list(self._orders[name]) for name in self._domains},
            "positions": dict(self._positions),
            "rng": _plain(copy.deepcopy(self._rng.bit_generator.state)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (possibly after a JSON round trip).

        The saved domains must be this sampler's domains, each with the same multiset of
        example indices, so a checkpoint cannot silently be applied to different data.
        """
        parsed = self._parse_state(state)
        if parsed["domains"] != self._domains:
            raise ValueError(
                f"state has domains {list(parsed['domains'])}, this sampler has "
                f"{list(self._domains)}"
            )
        for name in self._domains:
            if sorted(parsed["orders"][name]) != sorted(self._orders[name]):
                raise ValueError(
                    f"state's examples for domain {name!r} differ from this sampler's examples"
                )
        self._apply_state(parsed)

    # -- internals -----------------------------------------------------------------------------

    def _shuffled(self, items: list[int]) -> list[int]:
        perm = self._rng.permutation(len(items))
        return [items[j] for j in perm.tolist()]

    def _apply_state(self, parsed: dict[str, Any]) -> None:
        bit_generator = np.random.PCG64()
        bit_generator.state = parsed["rng"]
        self._rng = np.random.Generator(bit_generator)
        self._seed = parsed["seed"]
        self._orders = {name: list(parsed["orders"][name]) for name in self._domains}
        self._positions = dict(parsed["positions"])
        self.set_weights(parsed["weights"])

    @staticmethod
    def _parse_state(state: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(state, Mapping):
            raise ValueError(f"state must be a mapping from state_dict(), got {type(state)}")
        missing = {"version", "seed", "domains", "weights", "orders", "positions", "rng"} - set(
            state
        )
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        if state["version"] != _STATE_VERSION:
            raise ValueError(
                f"state version {state['version']!r} is not supported (expected {_STATE_VERSION})"
            )
        domains = tuple(state["domains"])
        if list(domains) != sorted(domains) or len(set(domains)) != len(domains) or not domains:
            raise ValueError(f"state domains must be unique, sorted and non-empty: {domains!r}")
        orders, positions = state["orders"], state["positions"]
        if set(orders) != set(domains) or set(positions) != set(domains):
            raise ValueError("state orders/positions must have exactly the state's domains")
        parsed_orders: dict[str, list[int]] = {}
        parsed_positions: dict[str, int] = {}
        for name in domains:
            order = [_as_index(v, f"state order of domain {name!r}") for v in orders[name]]
            if not order:
                raise ValueError(f"state order of domain {name!r} is empty")
            pos = _as_index(positions[name], f"state position of domain {name!r}")
            if not 0 <= pos <= len(order):
                raise ValueError(
                    f"state position {pos} of domain {name!r} is outside [0, {len(order)}]"
                )
            parsed_orders[name] = order
            parsed_positions[name] = pos
        rng = state["rng"]
        if not isinstance(rng, Mapping) or rng.get("bit_generator") != "PCG64":
            raise ValueError("state rng must be a PCG64 bit-generator state")
        weights = list(state["weights"])
        if len(weights) != len(domains):
            raise ValueError(f"state has {len(weights)} weights for {len(domains)} domains")
        seed = _as_index(state["seed"], "state seed")
        return {
            "seed": seed,
            "domains": domains,
            "weights": weights,
            "orders": parsed_orders,
            "positions": parsed_positions,
            "rng": copy.deepcopy(dict(rng)),
        }


def _plain(value: Any) -> Any:
    """Convert numpy scalars inside nested dicts/lists to Python scalars (for json)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite value {value!r} cannot go into a JSON state")
    return value
