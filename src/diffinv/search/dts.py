"""Diffusion Tree Sampling and Diffusion Tree Search (DTS / DTS*), anytime tree search over solver steps."""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser
from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator
from diffinv.search.base import CountingMemo, SearchMethod, SearchResult, shared_noise
from diffinv.search.rewards import Reward
from diffinv.solvers.base import PerSampleNoise, Solver


class _Forest:
    """One tree per run over the time grid; nodes hold x_t, a soft value v̂ and their children."""

    def __init__(self, roots: Tensor) -> None:
        self.x: list[Tensor] = list(roots)
        self.depth = [0] * len(roots)
        self.parent = [-1] * len(roots)
        self.children: list[list[int]] = [[] for _ in roots]
        self.value = [0.0] * len(roots)
        self.done = [False] * len(roots)  # subtree fully expanded down to the leaves
        self.roots = list(range(len(roots)))
        self.leaves: list[list[int]] = [[] for _ in roots]

    def add(self, parent: int, x: Tensor) -> int:
        node = len(self.x)
        self.x.append(x)
        self.depth.append(self.depth[parent] + 1)
        self.parent.append(parent)
        self.children.append([])
        self.value.append(0.0)
        self.done.append(False)
        self.children[parent].append(node)
        return node


class DTS(SearchMethod):
    """DTS: tree over the denoising steps, Boltzmann selection ∝ exp(λ v̂), soft Bellman backup.

    Jain et al. 2025 (arXiv 2506.20701). Each rollout descends from the root through full
    nodes (``branching`` children), picking a child ∝ exp(λ v̂) (DTS) or the best v̂
    (DTS*, ``greedy=True``), expands the first node with room by one stochastic solver
    step, rolls out to the data end (adding every node), scores the leaf by the reward
    r and backs up v̂(n) = (1/λ) log mean_c exp(λ v̂(c)). The tree is kept between
    rollouts, so more rollouts refine the same tree (anytime). DTS returns a leaf drawn
    by descending with the Boltzmann weights, asymptotically from p(x0) exp(λ r(x0));
    DTS* returns the best leaf found. One-step kernels only: multistep history restarts at each node.
    """

    cite = "Jain et al. 2025, DTS/DTS*"

    def __init__(self, operator: LinearOperator | None = None, y: Tensor | None = None, reward: str | Reward | None = None, rollouts: int = 32, branching: int = 2, lam: float = 1.0, greedy: bool = False, **options) -> None:
        super().__init__(operator, y, reward, **options)
        if rollouts < 1 or branching < 1 or lam <= 0:
            raise ConfigError("search dts: need rollouts >= 1, branching >= 1 and lam > 0")
        self.rollouts, self.branching, self.lam, self.greedy = int(rollouts), int(branching), float(lam), bool(greedy)
        self.rng = random.Random(int(options.get("seed", 0)))

    def _pick(self, forest: _Forest, node: int) -> int:
        kids = [c for c in forest.children[node] if not forest.done[c]] or forest.children[node]
        vals = [forest.value[c] for c in kids]
        if self.greedy:
            return kids[max(range(len(kids)), key=vals.__getitem__)]
        top = max(vals)
        return self.rng.choices(kids, weights=[math.exp(self.lam * (v - top)) for v in vals])[0]

    def _backup(self, forest: _Forest, node: int, steps: int) -> None:
        while node >= 0:
            kids = forest.children[node]
            if kids:
                vals = torch.tensor([forest.value[c] for c in kids], dtype=torch.float64)
                forest.value[node] = float(torch.logsumexp(self.lam * vals, 0) - math.log(len(kids))) / self.lam
                forest.done[node] = len(kids) >= self.branching and all(forest.done[c] for c in kids)
            else:
                forest.done[node] = forest.depth[node] == steps
            node = forest.parent[node]

    def _rollout(self, forest: _Forest, solver: Solver, D: Denoiser, grid: Tensor, noise: PerSampleNoise) -> None:
        steps = len(grid) - 1
        starts = []
        for root in forest.roots:
            node = root
            if forest.done[root]:
                starts.append(None)
                continue
            while len(forest.children[node]) >= self.branching or forest.depth[node] == steps:
                node = self._pick(forest, node)
            starts.append(node)
        current = list(starts)
        for k in range(steps):
            active = [r for r, n in enumerate(current) if n is not None and forest.depth[n] == k]
            if not active:
                continue
            x = torch.stack([forest.x[current[r]] for r in active])
            sub = shared_noise(noise, [noise.generators[r] for r in active])
            x_next, _ = solver.step(D, x, solver.init_state(), grid[k], grid[k + 1], sub)
            for j, r in enumerate(active):
                current[r] = forest.add(current[r], x_next[j])
        for r, leaf in enumerate(current):
            if leaf is None or leaf == starts[r]:
                continue
            forest.value[leaf] = float(self.reward(forest.x[leaf][None])[0])
            forest.leaves[r].append(leaf)
            self._backup(forest, leaf, steps)

    def _result(self, forest: _Forest, nfe: int) -> SearchResult:
        out = []
        for r, root in enumerate(forest.roots):
            if self.greedy:
                out.append(max(forest.leaves[r], key=forest.value.__getitem__))
                continue
            node = root
            while forest.children[node]:
                kids = forest.children[node]
                vals = [forest.value[c] for c in kids]
                top = max(vals)
                node = self.rng.choices(kids, weights=[math.exp(self.lam * (v - top)) for v in vals])[0]
            out.append(node)
        return self.result(torch.stack([forest.x[n] for n in out]), nfe, None)

    def anytime(self, solver: Solver, D: Denoiser, x_T: Tensor, grid: Tensor, noise: PerSampleNoise, checkpoints: list[int]) -> list[SearchResult]:
        """Results after each number of rollouts in ``checkpoints`` (increasing), growing one tree per run."""
        if not solver.stochastic:
            raise ConfigError("search dts: needs a stochastic solver (e.g. ddpm) to branch")
        self.runs(x_T)
        counter, forest, out, done = CountingMemo(D), _Forest(x_T), [], 0
        for target in checkpoints:
            for _ in range(target - done):
                self._rollout(forest, solver, counter, grid, noise)
            done = target
            out.append(self._result(forest, counter.nfe))
        return out

    def run(self, solver: Solver, D: Denoiser, x_T: Tensor, grid: Tensor, noise: PerSampleNoise) -> SearchResult:
        return self.anytime(solver, D, x_T, grid, noise, [self.rollouts])[0]


class DTSStar(DTS):
    """DTS*: greedy selection by v̂ and the best leaf found (Jain et al. 2025)."""

    cite = "Jain et al. 2025, DTS*"

    def __init__(self, operator: LinearOperator | None = None, y: Tensor | None = None, reward: str | Reward | None = None, **options) -> None:
        super().__init__(operator, y, reward, greedy=True, **options)
