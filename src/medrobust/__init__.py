"""medrobust: adversarial robustness of medical AI, with statistics and clinical error rates."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
