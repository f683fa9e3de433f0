"""The embedding of the torch engine as a ``torch.autograd.Function`` with its hand-written
backward, the twin of the NumPy engine's (``NumpyEngine.model_forward`` / ``model_backward``):

    e_t = W_emb[x_t] * m_t            (T, B, E): a row gather, times the dropout mask (or 1)
    dW_emb[v] += sum of the rows (de_t * m_t)[b] over every (t, b) whose token x_t[b] is v

The gradient is a row scatter-add (``index_add_``) into a zero (V, E) matrix, never a V-wide
product; with tied weights autograd adds it to the head's gradient of the same tensor. ``m`` is
(T, B, E), or (1, B, E) for variational dropout (the same at every step), and the backward
multiplies the forward's own mask.

Symbols: T steps, B batch, V vocabulary, E embedding size.
"""

from __future__ import annotations

import torch


class EmbeddingFunction(torch.autograd.Function):
    """``EmbeddingFunction.apply(ids (T, B) int64, weight (V, E), mask or None)`` -> (T, B, E)."""

    @staticmethod
    def forward(ctx, ids, weight, mask):
        T, B = ids.shape
        e = torch.index_select(weight, 0, ids.reshape(-1)).view(T, B, -1)  # e_t = W_emb[x_t]
        if mask is not None:
            e.mul_(mask)                                 # e_t * m_t: the embedding's dropout
        ctx.save_for_backward(ids, mask)
        ctx.vocab = weight.shape[0]
        return e

    @staticmethod
    def backward(ctx, de):
        ids, mask = ctx.saved_tensors
        if mask is not None:
            de = de * mask                               # the forward's mask, again
        E = de.shape[-1]
        dW = de.new_zeros((ctx.vocab, E))
        dW.index_add_(0, ids.reshape(-1), de.reshape(-1, E))  # dW_emb[v] += rows of token v
        return None, dW, None


def embed(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The rows of ``ids`` ((T, B) or (B,)) without a graph: generation and evaluation."""
    return torch.index_select(weight, 0, ids.reshape(-1)).view(*ids.shape, -1)
