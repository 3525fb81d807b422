"""Checks of hyperparameters shared by attacks and defenses, with the house's error message."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medrobust.errors import ParameterError

# torch.Generator.manual_seed takes seeds up to 2**64 - 1.
MAX_SEED = 2**64 - 1


def check_number(
    owner: str, name: str, value: Any, *, minimum: float, integer: bool = False
) -> Any:
    """Return ``value`` if it is a number (an integer when ``integer``) >= ``minimum``.

    Raises:
        ParameterError: "The '<name>' parameter of <owner> must be a number >= <minimum>. Got
            <value> instead." (booleans and NaN are refused too).
    """
    kind = "an integer" if integer else "a number"
    ok = (
        isinstance(value, int | np.integer)
        if integer
        else isinstance(value, int | float | np.integer | np.floating)
    )
    if isinstance(value, bool) or not ok or math.isnan(value) or value < minimum:
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be {kind} >= {minimum}. Got {value!r} instead."
        )
    return value


def check_seed(owner: str, seed: Any) -> int:
    """``seed`` if it is an integer in [0, 2**64 - 1] (what torch's generators take).

    Raises:
        ParameterError: in the form of :func:`check_number`.
    """
    check_number(owner, "seed", seed, minimum=0, integer=True)
    if seed > MAX_SEED:
        raise ParameterError(
            f"The 'seed' parameter of {owner} must be an integer in [0, 2**64 - 1]. "
            f"Got {seed!r} instead."
        )
    return int(seed)
