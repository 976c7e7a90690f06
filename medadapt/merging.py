"""Merging domain LoRAs into one shared adapter with peft's ``add_weighted_adapter``.

:func:`plan_merge` checks a merge and returns the :class:`MergeSpec` that builds it; the model
(:meth:`medadapt.ContinualVLM.merge_adapters`) adds it as a stage. The result is an ordinary shared LoRA (``model.shared[into] == "lora"``), last in ``stage_order``,
so ``save_pretrained`` writes it as a normal stage folder and it can serve every domain, be the
router's fallback, or be compared with the rehearsal-trained shared adapter. How it was built is
recorded in ``model.extras["merges"][into]``.

Methods (peft's ``combination_type``): ``linear`` (weighted sum of the A and B factors: needs equal
ranks), ``ties`` / ``dare_ties`` / ``dare_linear`` (task-vector merging with pruning to
``density``: need equal ranks), ``svd`` (exact weighted sum of the deltas re-factorised at
``svd_rank``, default the largest rank) and ``cat`` (exact, rank = sum of ranks): the last two
accept LoRAs of different ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .adapters.lora_kind import LORA, MergeSpec, check_equal_ranks
from .errors import AdapterError

MERGES_KEY = "merges"
EQUAL_RANK_METHODS = ("linear", "ties", "dare_ties", "dare_linear")
ANY_RANK_METHODS = ("svd", "cat")
MERGE_METHODS = EQUAL_RANK_METHODS + ANY_RANK_METHODS
DENSITY_METHODS = ("ties", "dare_ties", "dare_linear")
SUM_METHODS = ("linear", "svd", "cat")  # default weights 1/n (an average); task-vector methods default to 1


@dataclass(frozen=True)
class MergePlan:
    """A checked merge: the :class:`MergeSpec` that builds the LoRA, the seed of DARE's random
    pruning, and the record saved in ``extras["merges"][into]``."""

    spec: MergeSpec
    seed: int
    record: dict[str, Any]


def plan_merge(
    names: Sequence[str] | str,
    kind_of: Callable[[str], str],
    lora_config: Callable[[str], Any],
    method: str = "linear",
    weights: Sequence[float] | None = None,
    density: float | None = None,
    seed: int = 0,
    **peft_options: Any,
) -> MergePlan:
    """Check a merge of LoRA adapters ``names`` (domains or shared) into one new shared LoRA.

    ``kind_of(name)`` gives each adapter's kind (and raises for unknown names); ``lora_config(name)``
    its LoRA config. ``weights``: one per adapter (default ``1/n`` each for ``linear``/``svd``/``cat``,
    ``1`` each for the task-vector methods, which average where signs agree). ``density`` (in (0, 1],
    default 0.5) is the fraction of each task vector kept by ``ties``/``dare_*``; DARE's random pruning
    is drawn from ``seed``. Other options (``svd_rank``, ``majority_sign_method``...) go to peft.
    Raises :class:`AdapterError` for unknown or prompt adapters, an unknown method, or ranks the
    method cannot combine.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise AdapterError("merge_adapters needs at least one adapter name.")
    if len(set(names)) != len(names):
        raise AdapterError(f"adapter names to merge must be distinct, got {names}.")
    if method not in MERGE_METHODS:
        raise AdapterError(f"unknown merge method {method!r}; valid: {list(MERGE_METHODS)}.")
    kinds = {n: kind_of(n) for n in names}  # raises for unknown names
    prompts = [n for n in names if kinds[n] != LORA.name]
    if prompts:
        raise AdapterError(
            f"only LoRA adapters can be merged; {prompts} {'is a prompt adapter' if len(prompts) == 1 else 'are prompt adapters'} "
            "(learned prompt tokens have no weight delta to add)."
        )
    if method in EQUAL_RANK_METHODS:
        check_equal_ranks({n: lora_config(n) for n in names}, method)
    if weights is None:
        weights = [1.0 / len(names)] * len(names) if method in SUM_METHODS else [1.0] * len(names)
    weights = [float(w) for w in weights]
    if len(weights) != len(names) or not all(math.isfinite(w) for w in weights):
        raise AdapterError(f"weights must be {len(names)} finite numbers (one per adapter), got {weights}.")
    if method in DENSITY_METHODS:
        density = 0.5 if density is None else float(density)
        if not 0.0 < density <= 1.0:
            raise AdapterError(f"density must be in (0, 1] for {method!r}, got {density}.")
        peft_options["density"] = density
    elif density is not None:
        raise AdapterError(f"density applies to {list(DENSITY_METHODS)}, not to {method!r}.")
    record = {"from": names, "method": method, "weights": weights, "density": density, "seed": seed}
    record.update({k: v for k, v in peft_options.items() if k != "density"})
    return MergePlan(MergeSpec(names, weights, method, dict(peft_options)), seed, record)
