"""Plan search: the best deployment plan for a workload under constraints (docs/search.md).

``load_spec`` reads a search file, ``run_search`` screens, bounds and simulates its candidates,
``write_search`` writes the SEARCH folder. The CLI is ``simkit search SPEC.yaml --out DIR``.
"""

from simkit.search.output import print_table, write_search
from simkit.search.run import SearchResult, evaluate, run_search
from simkit.search.spec import SearchError, SearchSpec, load_spec, parse_spec

__all__ = [
    "SearchError",
    "SearchResult",
    "SearchSpec",
    "evaluate",
    "load_spec",
    "parse_spec",
    "print_table",
    "run_search",
    "write_search",
]
