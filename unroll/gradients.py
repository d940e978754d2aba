"""How gradients flow through the unrolled iterations: an object, not a hard-wired choice.

Each mode runs ``(flow_{i+1}, state_{i+1}) = step((flow_i, state_i), i)`` for a fixed number of
iterations with ``jax.lax.scan`` and decides what the backward pass sees (``state`` is whatever a
recurrent step operator carries; None for the classical ones):

* ``Unrolled``: differentiate through every iteration (optionally rematerialised, so memory is
  bounded by one iteration's activations instead of all of them).
* ``Truncated``: stop the gradient between iterations, as RAFT does; each step is differentiated
  with respect to its parameters but not through the flow it started from.
* ``Implicit``: differentiate the fixed point ``grad E(w*) = 0`` by the implicit function theorem,
  solving the adjoint system with conjugate gradients (valid where the energy has a unique
  minimiser, e.g. the quadratic Horn-Schunck energy). Memory is independent of the iteration count.
"""

from __future__ import annotations

import abc
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Carry = tuple  # (flow (h, w, 2), step state)
StepFn = Callable[[Carry, jax.Array], Carry]
#: What to keep of each iterate for the trajectory (e.g. the flow, upsampled); None keeps nothing.
RecordFn = Callable[[Carry], jax.Array] | None


def _scan(body: StepFn, carry0: Carry, num_iters: int, record: RecordFn, unroll: bool):
    def scan_body(carry, i):
        new = body(carry, i)
        return new, (record(new) if record is not None else None)

    return jax.lax.scan(scan_body, carry0, jnp.arange(num_iters), unroll=unroll)


def conjugate_gradient(matvec: Callable[[jax.Array], jax.Array], rhs: jax.Array, num_iters: int) -> jax.Array:
    """``num_iters`` conjugate-gradient iterations on ``matvec(x) = rhs`` (symmetric positive definite)."""

    def body(_, state):
        x, r, p, rr = state
        ap = matvec(p)
        alpha = rr / jnp.maximum(jnp.vdot(p, ap), jnp.finfo(rhs.dtype).tiny)
        x, r = x + alpha * p, r - alpha * ap
        rr_new = jnp.vdot(r, r)
        return x, r, r + (rr_new / jnp.maximum(rr, jnp.finfo(rhs.dtype).tiny)) * p, rr_new

    zero = jnp.zeros_like(rhs)
    return jax.lax.fori_loop(0, num_iters, body, (zero, rhs, rhs, jnp.vdot(rhs, rhs)))[0]


class AbstractGradientMode(nnx.Module):
    """Runs the fixed iteration stack and chooses what its derivative is."""

    @abc.abstractmethod
    def __call__(self, step: StepFn, carry0: Carry, num_iters: int, record: RecordFn,
                 residual: Callable[[jax.Array], jax.Array], unroll: bool = False) -> tuple[Carry, jax.Array | None]:
        """Return the final carry ``(flow (h, w, 2), state)`` and, unless ``record`` is None, the
        trajectory: ``record(carry)`` of every iterate, stacked (``(num_iters, ...)``).

        ``residual(flow)`` is the energy gradient, zero at the fixed point (used by ``Implicit``).
        ``unroll=True`` lays the iterations out as straight-line code instead of a loop.
        """


class Unrolled(AbstractGradientMode):
    """Backpropagate through every iteration; ``remat=True`` recomputes each one on the way back."""

    def __init__(self, remat: bool = False):
        self.remat = remat

    def __call__(self, step, carry0, num_iters, record, residual, unroll=False):
        body = jax.checkpoint(step) if self.remat else step
        return _scan(body, carry0, num_iters, record, unroll)


class Truncated(AbstractGradientMode):
    """Stop the gradient of the flow between iterations (RAFT's ``coords1.detach()``)."""

    def __call__(self, step, carry0, num_iters, record, residual, unroll=False):
        def body(carry, i):
            flow, state = carry
            return step((jax.lax.stop_gradient(flow), state), i)

        return _scan(body, carry0, num_iters, record, unroll)


class Implicit(AbstractGradientMode):
    """Implicit differentiation of the fixed point; the trajectory carries no gradient.

    Args:
        adjoint_iters: conjugate-gradient iterations for the adjoint system ``H lambda = v``.
    """

    def __init__(self, adjoint_iters: int = 200):
        self.adjoint_iters = adjoint_iters

    def __call__(self, step, carry0, num_iters, record, residual, unroll=False):
        if carry0[1] is not None:
            raise ValueError("implicit differentiation needs a memoryless step operator (its fixed point "
                             "must be a zero of the energy gradient); use Unrolled or Truncated")
        (flow, _), trajectory = jax.lax.stop_gradient(_scan(step, carry0, num_iters, record, unroll))
        residual_fn, consts = jax.closure_convert(residual, flow)
        return (_fixed_point(residual_fn, self.adjoint_iters, flow, *consts), None), trajectory


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fixed_point(residual_fn, adjoint_iters, flow, *consts):
    """Identity on the converged ``flow``; its derivative is the implicit function theorem's."""
    return flow


def _fixed_point_fwd(residual_fn, adjoint_iters, flow, *consts):
    return flow, (flow, consts)


def _fixed_point_bwd(residual_fn, adjoint_iters, saved, cotangent):
    # At grad E(w*, theta) = 0: dw*/dtheta = -H^-1 d(grad E)/dtheta, so theta's cotangent is
    # -(d(grad E)/dtheta)^T lambda with H lambda = cotangent (H, the Hessian, is symmetric).
    flow, consts = saved
    hvp = lambda v: jax.jvp(lambda w: residual_fn(w, *consts), (flow,), (v,))[1]
    adjoint = conjugate_gradient(hvp, cotangent, adjoint_iters)
    _, vjp = jax.vjp(lambda *c: residual_fn(flow, *c), *consts)
    return (jnp.zeros_like(flow), *(-g for g in vjp(adjoint)))


_fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)
