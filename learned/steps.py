"""Learned step operators. Each wraps a hand-tuned step and starts out equal to it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from learned.nets import ConvGRU, ConvNet, normalise_image
from unroll.operators import AbstractStep


class LearnedStepSizes(AbstractStep):
    """``w <- w + s_i (step(w) - w)``: one learned scale per iteration ``i``, initially 1.

    Iterations beyond ``num_iters`` (e.g. more at test time) reuse the last scale.
    """

    def __init__(self, step: AbstractStep, num_iters: int):
        self.step = step
        self.scales = nnx.Param(jnp.ones((num_iters,)))

    def init_state(self, energy, evidence, flow):
        return self.step.init_state(energy, evidence, flow)

    def __call__(self, energy, evidence, flow, iteration, state):
        new, state = self.step(energy, evidence, flow, iteration, state)
        scale = self.scales[jnp.minimum(iteration, self.scales.shape[0] - 1)]
        return flow + scale * (new - flow), state


class LearnedPreconditioner(AbstractStep):
    """``w <- w + r(I1) * (step(w) - w)``: a per-pixel, per-component relaxation of the update
    predicted from frame 1 by a small CNN ``s``: ``r = max_scale * sigmoid(s + logit(1 / max_scale))``,
    which is 1 where ``s`` is zero (at initialisation) and stays in ``(0, max_scale)``. Unbounded
    (``exp(s)``), a few early optimiser steps pushed it past 2, where the Jacobi iteration diverges
    (a loss of 1e7 in training)."""

    def __init__(self, step: AbstractStep, channels: int, *, rngs: nnx.Rngs, hidden: int = 16,
                 max_scale: float = 2.0):
        self.step = step
        self.net = ConvNet(channels, 2, rngs=rngs, hidden=hidden)
        self.max_scale = max_scale

    def context(self, image):
        """The relaxation ``(h, w, 2)``: the image alone decides it."""
        offset = -math.log(self.max_scale - 1.0)  # logit(1 / max_scale)
        return self.max_scale * jax.nn.sigmoid(self.net(normalise_image(image)) + offset)

    def init_state(self, energy, evidence, flow):
        scale = self.context(evidence["image"]) if evidence.get("step") is None else evidence["step"]
        return scale, self.step.init_state(energy, evidence, flow)

    def __call__(self, energy, evidence, flow, iteration, state):
        scale, inner = state
        new, inner = self.step(energy, evidence, flow, iteration, inner)
        return flow + scale * (new - flow), (scale, inner)


class RecurrentStep(AbstractStep):
    """RAFT-style recurrent update on top of a hand-tuned step.

    A ConvGRU reads the current flow, the hand-tuned step's proposed increment (the data term's
    evidence, preconditioned) and context features of frame 1, and a flow head adds a learned
    correction: ``w <- step(w) + head(h)``. The head starts at zero, so the operator starts equal
    to the hand-tuned step. Its hidden state is carried across iterations (``init_state``).
    """

    def __init__(self, step: AbstractStep, channels: int, *, rngs: nnx.Rngs, hidden: int = 32):
        self.step = step
        self.encoder = ConvNet(channels, 2 * hidden, rngs=rngs, hidden=hidden, zero_last=False)
        self.gru = ConvGRU(hidden, 4 + hidden, rngs=rngs)
        self.head = ConvNet(hidden, 2, rngs=rngs, hidden=hidden, depth=2)

    def context(self, image):
        """The initial hidden state and the context features ``(h, w, hidden)`` of frame 1."""
        hidden, context = jnp.split(self.encoder(normalise_image(image)), 2, axis=-1)
        return jnp.tanh(hidden), jax.nn.relu(context)

    def init_state(self, energy, evidence, flow):
        hidden, context = self.context(evidence["image"]) if evidence.get("step") is None else evidence["step"]
        return hidden, context, self.step.init_state(energy, evidence, flow)

    def __call__(self, energy, evidence, flow, iteration, state):
        hidden, context, inner = state
        proposal, inner = self.step(energy, evidence, flow, iteration, inner)
        hidden = self.gru(hidden, jnp.concatenate([flow, proposal - flow, context], -1))
        return proposal + self.head(hidden), (hidden, context, inner)
