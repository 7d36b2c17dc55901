"""Adapter for Nequix models (`nequix` package, `.nqx` files).

A `.nqx` file is one JSON line (the model config) followed by equinox-serialised leaves.
`NequixPotential` wraps the loaded `nequix.model.Nequix` and maps atomic numbers to the
model's species indices; energies come from `Nequix.node_energies(r_ij, species, senders,
receivers)` (eV per atom; bond vectors in Å with the same r_ij = x_j − x_i + S·cell).

Ref.: T. Koker, T. Smidt et al., Nequix: an E(3)-equivariant foundation potential trained
on a budget (2025), https://github.com/atomicarchitects/nequix .
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from curvax.io import atomic_write
from curvax.potentials.base import REMAT_EDGE_CHUNK, Potential, cast_floats


class NequixPotential(Potential):
    """Per-atom energies from a Nequix model. `model` is the trainable pytree.

    With `remat_edges` = n > 0 (`rematerialised(n)`) each interaction block computes its edge
    messages n edges at a time under `jax.checkpoint` and adds them onto the receivers chunk by
    chunk (`_edge_chunked_node_energies`): reverse passes keep each chunk's inputs and the
    running sums and recompute the chunk, so the per-edge working set of grad_θ of an HVP
    (third-order AD, the phonon fine-tuning loss) is that of n edges; what still grows with
    size is the running sums kept per chunk (atoms × features × chunks): Nequix MP, CPU, 632 MiB
    at 64 atoms and 1.5 GB at 128 against ≈ 0.66 MiB per edge plain (benchmarks/README.md).
    The same function; the sums' order differs (float rounding)."""

    model: eqx.Module
    config: dict = eqx.field(static=True)
    remat_edges: int = eqx.field(static=True)

    def __init__(self, model, config, remat_edges: int = 0):
        self.model = model
        self.config = _HashableDict(config)
        if not int(remat_edges) >= 0:
            raise ValueError(f"remat_edges must be ≥ 0 (0: off), got {remat_edges!r}")
        self.remat_edges = int(remat_edges)
        self.cutoff = float(config["cutoff"])
        self.n_interactions = int(config["n_layers"])
        self.elements = tuple(int(z) for z in config["atomic_numbers"])

    def rematerialised(self, edge_chunk: int = REMAT_EDGE_CHUNK) -> "NequixPotential":
        return NequixPotential(self.model, self.config, edge_chunk)

    def species(self, numbers):
        """Atomic numbers -> model species indices (unknown elements map to 0: call check_species first)."""
        table = np.zeros(max(self.elements) + 1, dtype=np.int32)
        table[list(self.elements)] = np.arange(len(self.elements), dtype=np.int32)
        return jnp.asarray(table)[jnp.clip(numbers, 0, len(table) - 1)]

    def __call__(self, r_ij, numbers, senders, receivers):
        species = self.species(numbers)
        if self.remat_edges:
            e = _edge_chunked_node_energies(self.model, r_ij, species, senders, receivers, self.remat_edges)
        else:
            e = self.model.node_energies(r_ij, species, senders, receivers)
        return e[:, 0].astype(r_ij.dtype)

    def save(self, path) -> Path:
        """Write a `.nqx` file that `curvax.load_potential` and `nequix.model.load_model` both read (atomic)."""
        save_model = _nequix_model().save_model
        model = cast_floats(self.model, jnp.float32)
        return atomic_write(path, lambda tmp: save_model(tmp, model, dict(self.config)))


class _LoadedOnFirstUse(types.ModuleType):
    """Stands in `sys.modules` for a module until one of its attributes is first read, then
    imports the real module and hands the attribute over (later reads go to the real module)."""

    def __getattr__(self, attribute):  # called only for attributes a plain module lacks
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update(real.__dict__)
        return getattr(real, attribute)


def _nequix_model():
    """The `nequix.model` module — the one place curvax imports nequix (and with it e3nn-jax).
    e3nn-jax imports scipy.signal at start-up for a peak finder (`e3nn_jax.s2grid`) that Nequix
    never calls: it is put off until first used (≈ 0.3 s of every command's start on a 2-core
    CPU)."""
    if "scipy.signal" not in sys.modules and importlib.util.find_spec("scipy.signal") is not None:
        sys.modules["scipy.signal"] = _LoadedOnFirstUse("scipy.signal")
    import nequix.model

    return nequix.model


def _edge_chunked_node_energies(model, r_ij, species, senders, receivers, chunk: int):
    """`Nequix.node_energies` (nequix 0.4.5, same operations) with each interaction layer's
    edge messages computed `chunk` edges at a time under `jax.checkpoint` (`_edge_chunked_layer`)."""
    nequix_model = _nequix_model()
    import e3nn_jax as e3nn

    features = e3nn.IrrepsArray(e3nn.Irreps(f"{model.n_species}x0e"), jax.nn.one_hot(species, model.n_species))
    square_r_norm = jnp.sum(r_ij ** 2, axis=-1)
    r_norm = jnp.where(square_r_norm == 0.0, 0.0, jnp.sqrt(square_r_norm))
    radial_basis = (nequix_model.bessel_basis(r_norm, model.radial_basis_size, model.cutoff)
                    * nequix_model.polynomial_cutoff(r_norm, model.cutoff, model.radial_polynomial_p)[:, None])
    sh = e3nn.spherical_harmonics(e3nn.s2_irreps(model.lmax), r_ij, normalize=True, normalization="component")
    for layer in model.layers:
        features = _edge_chunked_layer(layer, features, species, sh, radial_basis, senders, receivers, chunk)
    e = model.readout(features)
    e = e * jax.lax.stop_gradient(model.scale) + jax.lax.stop_gradient(model.shift)
    return (e + jax.lax.stop_gradient(model.atom_energies[species, None])).array


def _edge_chunked_layer(layer, features, species, sh, radial_basis, senders, receivers, chunk: int):
    """`NequixConvolution.__call__` (nequix 0.4.5, e3nn path) with the message sum
    m_i = Σ_{e: receiver i} (W x)_{sender e} ⊗ Y(r_e) · R(|r_e|) taken over chunks of `chunk`
    edges in a `lax.scan`, each chunk under `jax.checkpoint`. The edges are padded to a
    multiple of `chunk` with zero-weight edges."""
    import e3nn_jax as e3nn

    messages = layer.linear_1(features)
    n_edges = senders.shape[0]
    n_chunks = -(-n_edges // chunk)
    pad = n_chunks * chunk - n_edges

    def chunked(x):  # (n_edges, ...) -> (n_chunks, chunk, ...), padded with zeros
        return jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]).reshape((n_chunks, chunk) + x.shape[1:])

    weight = jnp.ones(n_edges, radial_basis.dtype)  # 0 on the padding
    edges = tuple(map(chunked, (senders, receivers, sh.array, radial_basis, weight)))

    def edge_messages(s, y, radial, w):
        m = e3nn.tensor_product(messages[s], e3nn.IrrepsArray(sh.irreps, y), filter_ir_out=layer.tp_irreps)
        return m * (jax.vmap(layer.radial_mlp)(radial) * w[:, None])

    out = jax.eval_shape(edge_messages, *(edges[k][0] for k in (0, 2, 3, 4)))

    @jax.checkpoint
    def add_chunk(total, x):
        s, r, y, radial, w = x
        return total + e3nn.scatter_sum(edge_messages(s, y, radial, w).array, dst=r, output_size=features.shape[0]), None

    total, _ = jax.lax.scan(add_chunk, jnp.zeros((features.shape[0],) + out.array.shape[1:], out.array.dtype), edges)
    messages_agg = e3nn.IrrepsArray(out.irreps, total) / jnp.sqrt(jax.lax.stop_gradient(layer.avg_n_neighbors))
    skip = layer.skip(species, features) if layer.index_weights else layer.skip(features)
    features = layer.linear_2(messages_agg) + skip
    if layer.layer_norm is not None:
        features = layer.layer_norm(features)
    return e3nn.gate(features, even_act=jax.nn.silu, odd_act=jax.nn.tanh, even_gate_act=jax.nn.silu)


# The keys that define the network (what `nequix.model.load_model` builds from); training
# metadata (paths, optimiser, epochs, ...) differs between a base model and its fine-tuned
# versions and must not make them different programs to JAX.
ARCHITECTURE_KEYS = ("atomic_numbers", "hidden_irreps", "lmax", "cutoff", "n_layers", "radial_basis_size",
                     "radial_mlp_size", "radial_mlp_layers", "radial_polynomial_p", "mlp_init_scale",
                     "index_weights", "layer_norm", "shift", "scale", "avg_n_neighbors")


class _HashableDict(dict):
    """The model config as a static field: hashed and compared on `ARCHITECTURE_KEYS` only, so
    models of one architecture (base, fine-tuned, the authors' PFT) share compiled programs."""

    def _arch(self):
        return json.dumps({k: self.get(k) for k in ARCHITECTURE_KEYS}, sort_keys=True, default=str)

    def __hash__(self):
        return hash(self._arch())

    def __eq__(self, other):
        return isinstance(other, _HashableDict) and self._arch() == other._arch()

    def __ne__(self, other):
        return not self == other


def read_nequix(path) -> NequixPotential:
    """Read a `.nqx` file (float32 weights, as written) into a `NequixPotential`; errors name
    the file. Use `curvax.load_potential`, which also resolves names and applies the precision
    policy."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            config = json.loads(f.readline().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a Nequix .nqx file (first line is not a JSON config: {e})")
        try:
            # the template must be float32 like the file, also when jax x64 is on
            with jax.enable_x64(False):
                model = eqx.tree_deserialise_leaves(f, _template(config), filter_spec=_read_leaf)
        except Exception as e:  # truncated / incompatible weights, config keys missing
            raise ValueError(f"{path}: could not read Nequix weights ({type(e).__name__}: {e})") from e
    return NequixPotential(_shared_static(model, _HashableDict(config)), config)


def _read_leaf(f, x):
    """One weight array, straight to the device: `jnp.load` (equinox's default) compiles a small
    program for every new array shape, ≈ 10–20 ms each."""
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return jax.device_put(np.load(f))
    return eqx.default_deserialise_filter_spec(f, x)


def _template(config: dict):
    """The Nequix module of `config` with shapes in place of weights, to read a file's weights
    into: `nequix.model.load_model` builds it by a random initialisation, 5–7 s of small eager
    computations on CPU; `eqx.filter_eval_shape` only traces it (≈ 1 s; same tree, tested)."""
    return eqx.filter_eval_shape(lambda: initialised(config, jax.random.key(0)))


def initialised(config: dict, key):
    """A `nequix.model.Nequix` of `config`'s architecture (`ARCHITECTURE_KEYS`) with nequix's
    own random initialisation (eager: seconds for Nequix MP's size on CPU)."""
    return _nequix_model().Nequix(key=key, n_species=len(config["atomic_numbers"]), kernel=False,
                                  **{k: config[k] for k in ARCHITECTURE_KEYS if k != "atomic_numbers"})


_STATIC_TEMPLATES: dict = {}


def _shared_static(model, config: _HashableDict):
    """`model` rebuilt on the tree structure of the first loaded model of the same architecture.

    e3nn's layers keep objects compared by identity (FunctionalLinear) in their static fields,
    so two loads of one architecture would be different programs to JAX and every model would
    recompile everything; sharing the structure lets base, fine-tuned and reference models
    reuse compiled code (the parameters are arguments)."""
    leaves, treedef = jax.tree.flatten(model)
    template = _STATIC_TEMPLATES.setdefault(config._arch(), treedef)
    if str(template) != str(treedef):  # identity-free comparison
        return model
    return jax.tree.unflatten(template, leaves)
