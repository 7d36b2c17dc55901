"""A tiny 2-step message-passing potential for heat-flux tests (test helper, not a model).

    h_i^0 = 0.1 Z_i / 14
    s_i = Σ_j f(r_ij) h_j^l,   v_i = Σ_j f(r_ij) h_j^l r_ij      (scalar and vector messages)
    h_i^{l+1} = tanh(w_l0 h_i^l + w_l1 s_i + w_l2 |v_i|²),      l = 0, 1
    U_i = b_0 h_i^2 + b_1 (h_i^2)² + b_2 Σ_j f(r_ij)

with the smooth cutoff f(r) = (1 − r²/r_c²)² exp(−r/2) for r < r_c. U_i depends on atoms up to
2 r_c away (two message-passing steps), so the edge ("atom-pair") heat flux is not exact for it
while the unfolded and Hardy fluxes are. Vector features (m_i = Σ_j f r_ij) make messages depend
on bond directions, as in equivariant MPNNs.
"""
import jax
import jax.numpy as jnp

from curvax.potentials.base import Potential, safe_norm


class ToyMPNN(Potential):
    w: jnp.ndarray
    b: jnp.ndarray

    def __init__(self, cutoff=3.0, seed=0):
        self.cutoff = float(cutoff)
        self.n_interactions = 2
        self.elements = None
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        dtype = jnp.zeros(()).dtype
        self.w = jax.random.normal(k1, (2, 3), dtype) * 0.7
        self.b = jax.random.normal(k2, (3,), dtype)

    def __call__(self, r_ij, numbers, senders, receivers):
        n = numbers.shape[0]
        r = safe_norm(r_ij)
        rc2 = self.cutoff ** 2
        f = jnp.where(r < self.cutoff, (1 - r * r / rc2) ** 2 * jnp.exp(-0.5 * r), 0.0)
        h = 0.1 * numbers.astype(r.dtype) / 14.0
        for layer in range(2):
            s = jax.ops.segment_sum(f * h[senders], receivers, n)
            v = jax.ops.segment_sum((f * h[senders])[:, None] * r_ij, receivers, n)  # vector message
            h = jnp.tanh(self.w[layer, 0] * h + self.w[layer, 1] * s + self.w[layer, 2] * jnp.sum(v * v, -1))
        e0 = jax.ops.segment_sum(f, receivers, n)
        return self.b[0] * h + self.b[1] * h * h + self.b[2] * e0
