"""Metattack (Zügner & Günnemann, "Adversarial Attacks on Graph Neural Networks via Meta Learning",
ICLR 2019), the Meta-Self variant: a global *poisoning* attack.  Each step trains a linearised 2-layer
GCN surrogate ``softmax(Â Â X W1 W2)`` on the labelled nodes for ``train_iters`` steps of SGD with
momentum, differentiates the attack loss after training through the whole training run with respect
to the adjacency (the meta-gradient), and flips the pair whose flip raises the loss most.  The attack
loss is the cross-entropy of the unlabelled nodes against self-training labels (the predictions of a
model trained on the clean graph), since their true labels are unknown to the attacker.

The adjacency is dense (N x N): meant for the field's benchmark graphs (thousands of nodes)."""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F

from ...validation import check_positive
from .base import GraphAttack, check_count
from .errors import GraphAttackError

log = logging.getLogger(__name__)


def normalized_dense(adj: torch.Tensor) -> torch.Tensor:
    """``D^-1/2 (A + I) D^-1/2`` of a dense symmetric ``[N, N]`` adjacency (differentiable)."""
    a = adj + torch.eye(adj.shape[0], dtype=adj.dtype)
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


def feature_operand(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the surrogate multiplies it: sparse CSR when mostly zeros (bag-of-words or
    identity features), else as given."""
    if (x != 0).float().mean() >= 0.1:
        return x
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return x.to_sparse_csr()


class _Stash:
    """Where :class:`_AdjMatmul` puts the factors of ``dL/dÂ`` (None: not collecting)."""

    terms: list | None = None


class _AdjMatmul(torch.autograd.Function):
    """``Â @ M`` for a fixed symmetric ``Â``: the gradient to ``M`` is ``Â @ G`` (itself
    differentiable, for the meta-gradient's second order), the gradient to ``Â`` (``G M^T``) is
    left to the caller as the factors ``(G, M)``."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, m: torch.Tensor, stash: _Stash) -> torch.Tensor:
        ctx.save_for_backward(a, m)
        ctx.stash = stash
        return a @ m

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, m = ctx.saved_tensors
        if ctx.stash.terms is not None:
            ctx.stash.terms.append((g.detach(), m.detach()))
        return None, _AdjMatmul.apply(a, g, ctx.stash), None


class Metattack(GraphAttack):
    """Meta-Self.

    ``attack(model, data)``: ``model`` is a classifier trained on the clean graph; its predictions
    label the unlabelled nodes (the training nodes keep ``data.y``).  The attack loss covers every
    node outside ``data.train_mask`` (``nodes`` only chooses which accuracy the caller reports).

    Args:
        budget: fraction of edges in (0, 1] or number of flips.
        train_iters, lr, momentum, hidden: the surrogate's inner training (the paper's 100 steps,
            0.1, 0.9, 16 hidden units).
        lambda_: weight of the labelled nodes' loss in the attack loss (0: Meta-Self, 1: Meta-Train).
        flips_per_step: pairs flipped per meta-gradient (1: the paper; more: an approximation that
            divides the time by as much).
        max_nodes: largest graph accepted (the meta-gradient is a dense N x N tensor).
        self_training: who labels the unlabelled nodes: ``"model"`` (the attacked model's
            predictions) or ``"linear"`` (the reference code's choice: a linearised GCN like the
            surrogate, trained on the clean graph's labelled nodes, 200 epochs of Adam; its labels
            are noisier where features are weak, which weakens the attack).
        reinit: draw the surrogate's initial weights anew for every meta-gradient (the reference
            code) instead of once per attack.
    ``result.flips`` are in the order chosen: with ``flips_per_step`` dividing ``k``, the first
    ``k`` are the attack at budget ``k``.  Pairs whose removal would leave a node without
    neighbours are never flipped (the paper's singleton filter).
    """

    name = "metattack"

    def __init__(
        self,
        budget: float | int = 0.05,
        train_iters: int = 100,
        lr: float = 0.1,
        momentum: float = 0.9,
        hidden: int = 16,
        lambda_: float = 0.0,
        flips_per_step: int = 1,
        max_nodes: int = 20_000,
        seed: int | None = 0,
        self_training: str = "model",
        reinit: bool = False,
    ) -> None:
        super().__init__(budget, seed)
        if self_training not in ("linear", "model"):
            raise GraphAttackError(
                f"self_training must be 'linear' or 'model', got {self_training!r}"
            )
        self.self_training, self.reinit = self_training, bool(reinit)
        self.train_iters = check_count(train_iters, "train_iters")
        self.hidden = check_count(hidden, "hidden")
        self.flips_per_step = check_count(flips_per_step, "flips_per_step")
        self.max_nodes = check_count(max_nodes, "max_nodes")
        self.lr = check_positive(lr, "lr", error=GraphAttackError)
        if not 0 <= momentum < 1:
            raise GraphAttackError(f"momentum must be in [0, 1), got {momentum}")
        if not 0 <= lambda_ <= 1:
            raise GraphAttackError(f"lambda_ must be in [0, 1], got {lambda_}")
        self.momentum, self.lambda_ = momentum, lambda_

    def _budget(self, data, target):
        if target is not None:
            raise GraphAttackError("Metattack is a global attack: no target")
        return super()._budget(data, target)

    def meta_gradient(self, adj, x, labels, train, weights) -> torch.Tensor:
        """``dL/dflip [N, N]`` (symmetric): the attack loss after training the surrogate from
        ``weights`` on ``adj`` (with the pairs' flips relaxed), differentiated through training;
        ``x`` dense or as :func:`feature_operand` gives it.

        Every use of ``Â`` is a product ``Â @ M`` with ``M`` C columns wide, so ``dL/dÂ`` is a sum
        of rank-C terms ``G M^T``: :class:`_AdjMatmul` collects them during the one backward pass
        and they are summed by a single ``[N, K] @ [K, N]`` product, instead of autograd adding
        one dense N x N gradient per use (hundreds per meta-gradient); the products themselves
        use ``Â`` as a sparse matrix (at ``delta = 0`` it has the graph's sparsity)."""
        n = adj.shape[0]
        delta = torch.zeros(n, n, dtype=adj.dtype, requires_grad=True)
        terms: list[tuple[torch.Tensor, torch.Tensor]] = []
        with torch.enable_grad():
            a_hat = normalized_dense(adj + (1 - 2 * adj) * (delta + delta.T))
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                a_const = a_hat.detach().to_sparse_csr()  # delta is 0: the graph's sparsity
            stash = _Stash()

            def amul(m):
                return _AdjMatmul.apply(a_const, m, stash)

            def forward(w):  # linear: X (W1 W2) first keeps every product C columns wide
                return amul(amul(x @ (w[0] @ w[1])))

            w0 = [p.clone().requires_grad_(True) for p in weights]
            w, v = w0, [torch.zeros_like(p) for p in weights]
            for _ in range(self.train_iters):
                loss = F.cross_entropy(forward(w)[train], labels[train])
                g = torch.autograd.grad(loss, w, create_graph=True)
                v = [self.momentum * vi + gi for vi, gi in zip(v, g, strict=True)]
                w = [wi - self.lr * vi for wi, vi in zip(w, v, strict=True)]
            out = forward(w)
            unl = ~train
            loss = (1 - self.lambda_) * F.cross_entropy(out[unl], labels[unl])
            if self.lambda_:
                loss = loss + self.lambda_ * F.cross_entropy(out[train], labels[train])
            stash.terms = terms
            torch.autograd.grad(loss, w0)  # one pass through training; fills ``terms``
            left = torch.cat([t[0] for t in terms], 1)
            right = torch.cat([t[1] for t in terms], 1)
            (grad,) = torch.autograd.grad(a_hat, delta, left @ right.T)
        return grad

    @staticmethod
    def _linear_labels(adj, x, y, train, weights, epochs: int = 200) -> torch.Tensor:
        """Predictions of a linearised GCN ``Â Â X W1 W2`` trained on the labelled nodes of the
        clean graph (Adam, lr 0.01, weight decay 5e-4: the reference's surrogate)."""
        w = [p.clone().requires_grad_(True) for p in weights]
        opt = torch.optim.Adam(w, lr=0.01, weight_decay=5e-4)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            a_hat = normalized_dense(adj).to_sparse_csr()

            def forward():
                return a_hat @ (a_hat @ ((x @ w[0]) @ w[1]))

            with torch.enable_grad():
                for _ in range(epochs):
                    opt.zero_grad()
                    F.cross_entropy(forward()[train], y[train]).backward()
                    opt.step()
            with torch.no_grad():
                return forward().argmax(1)

    def _flips(self, model, data, nodes, budget, target, gen):
        n = data.num_nodes
        if n > self.max_nodes:
            raise GraphAttackError(
                f"Metattack builds dense {n} x {n} tensors; graphs up to max_nodes="
                f"{self.max_nodes} nodes are accepted (use PGD or GTA on larger graphs)"
            )
        train = data.train_mask
        if not bool(train.any()) or bool(train.all()):
            raise GraphAttackError("Metattack needs labelled (train_mask) and unlabelled nodes")
        dtype = data.x.dtype
        adj = torch.zeros(n, n, dtype=dtype)
        adj[data.edge_index[0], data.edge_index[1]] = 1
        x = feature_operand(data.x)
        classes = int(data.y.max()) + 1

        def draw():
            out = []
            for fan_in, fan_out in ((data.num_features, self.hidden), (self.hidden, classes)):
                bound = (6 / (fan_in + fan_out)) ** 0.5  # Glorot, as the surrogate's GCN
                out.append(
                    (torch.rand(fan_in, fan_out, generator=gen, dtype=dtype) * 2 - 1) * bound
                )
            return out

        if self.self_training == "linear":
            labels = self._linear_labels(adj, x, data.y, train, draw())
        else:
            with torch.no_grad():
                labels = model(data.x, data.edge_index).argmax(1)
        labels[train] = data.y[train]
        weights = draw()
        upper = torch.ones(n, n, dtype=torch.bool).triu(1)
        flips, done, steps = [], 0, 0
        while done < budget:
            if self.reinit and steps:
                weights = draw()
            score = self.meta_gradient(adj, x, labels, train, weights)
            steps += 1
            deg = adj.sum(1)
            lonely = (deg == 1)[:, None] | (deg == 1)[None, :]
            allowed = upper & ~(lonely & (adj == 1))
            score = score.masked_fill(~allowed, float("-inf"))
            k = min(self.flips_per_step, budget - done)
            idx = score.flatten().topk(k).indices
            i, j = idx // n, idx % n
            adj[i, j] = 1 - adj[i, j]
            adj[j, i] = adj[i, j]
            flips.append(torch.stack([i, j]))
            done += k
            if done % 50 < k or done == budget:
                log.info("metattack: %d/%d flips", done, budget)
        return torch.cat(flips, 1), steps + 1  # meta-gradients and the labelling forward
