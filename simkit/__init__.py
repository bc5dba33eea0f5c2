"""simkit: a performance simulator and cost-model analyzer for LLM inference.

The public entry points are :func:`simkit.simulate.simulate` (scenario -> result) and the
``simkit`` command line (:mod:`simkit.cli`). Heavy libraries (pandas, matplotlib, torch) are
imported lazily by the modules that need them.
"""

from simkit.errors import SimkitError

__version__ = "0.1.0"
__all__ = ["SimkitError", "__version__"]
