"""Population and search plug-ins over solver steps: SMC/MCGdiff, SVDD, DTS, best-of-N, RBF, minority."""

from diffinv.search.base import SearchMethod, SearchResult, make_search
from diffinv.search.rewards import data_consistency, load_reward

__all__ = ["SearchMethod", "SearchResult", "data_consistency", "load_reward", "make_search"]
