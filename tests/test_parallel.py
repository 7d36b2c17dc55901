"""Data parallelism (`curvax.parallel`) on 2 virtual CPU devices, in a subprocess (the device
count is fixed when JAX starts): a sharded training step equals the single-device step on the
same global batch, for the phonon (PFT), upstream and relaxation losses; a checkpoint written
from the 2-device state resumes on 1 device; FC2 and FC3 with their HVPs / third-order products
split over 2 devices equal those computed on one."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import jax, numpy as np, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 2, jax.devices()
    from ase.build import bulk
    from phonopy import Phonopy
    from curvax import batch as batching, parallel, load_potential
    from curvax.finetune import training
    from curvax.finetune.losses import EFSWeights, batch_efs_loss, batch_phonon_loss
    from curvax.finetune.relax_tune import PairSet
    from curvax.phonons.convert import atoms_to_phonopy
    from curvax.phonons.fc2 import force_constants
    from curvax.relax import make_batch, relax, Checkpointed
    from curvax.relax.metrics import batch_loss
    from curvax.system import from_atoms

    pot = load_potential("lj:sigma=1.0,epsilon=1.0,cutoff=2.5", jnp.float64)
    rng = np.random.default_rng(0)
    items = []
    for k in range(4):
        a = bulk("Ar", "fcc", a=1.6, cubic=True).repeat((2, 2, 1 + k % 2))
        a.positions += rng.normal(0, 0.03, a.positions.shape)
        s = from_atoms(a)
        items.append((s, batching.graph_of(s, 2.5), dict(forces=rng.normal(0, 0.1, (len(a), 3)), energy=-5.0 * len(a))))
    batch = batching.stack(batching.pad_all(items))
    n = batch.system.positions.shape[1]
    fc = jnp.asarray(rng.normal(0, 1.0, (4, n, n, 3, 3)))
    mesh = parallel.data_mesh("all")
    assert mesh is not None and mesh.devices.size == 2 and parallel.data_mesh(1) is None
    opt = training.make_optimizer(training.OptimizerConfig(learning_rate=1e-2, grad_clip=None))
    key = jax.random.PRNGKey(3)

    def phonon(model, b, k):
        return batch_phonon_loss(model, b[0], b[1], k, 100.0, EFSWeights(0.0, 20.0, 0.0), "random", "mae", 2)

    def upstream(model, b, k):
        return batch_efs_loss(model, b, EFSWeights(1.0, 10.0, 0.0))

    for name, loss, data in (("phonon", phonon, (batch, fc)), ("upstream", upstream, batch)):
        state, static = training.init_state(pot, opt)
        one, m1 = training.make_update(loss, opt, 0.5)(state, static, data, key)
        two, m2 = training.make_update(loss, opt, 0.5, mesh)(state, static, data, key)
        assert len(jax.tree.leaves(two.params)[0].sharding.device_set) == 2  # replicated on both
        np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-12)
        for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-10, atol=1e-14)
        print(name, "step equal", float(m1["loss"]))

    # relaxation fine-tuning: loss through a checkpointed FIRE relaxation of 2 structures
    starts = [from_atoms(bulk("Ar", "fcc", a=1.6 + 0.02 * k, cubic=True)) for k in range(2)]
    targets = [from_atoms(bulk("Ar", "fcc", a=1.58, cubic=True)) for k in range(2)]
    pairs = PairSet(make_batch(starts, 2.5, 0.3), make_batch(targets, 2.5, 0.3), jnp.zeros(2))

    def relax_loss(model, p, k):
        r = relax(model, p.start, cell=True, steps=6, fmax=0.0, adjoint=Checkpointed(3), skin=0.3)
        t = p.target.system
        return batch_loss(r, t.positions, t.cell, t.numbers, p.target.node_mask), {}

    state, static = training.init_state(pot, opt)
    one, m1 = training.make_update(relax_loss, opt, 0.5)(state, static, pairs, key)
    two, m2 = training.make_update(relax_loss, opt, 0.5, mesh)(state, static, pairs, key)
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-12)
    np.testing.assert_allclose(float(two.params.sigma), float(one.params.sigma), rtol=1e-12)
    print("relax step equal")

    # a checkpoint of the 2-device state resumes on one device (host arrays, no sharding kept)
    import tempfile, pathlib
    path = pathlib.Path(tempfile.mkdtemp()) / "c.eqx"
    training.save_checkpoint(path, two, {"step": 1})
    back, meta = training.load_checkpoint(path, training.init_state(pot, opt)[0])
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(two)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert len(jax.tree.leaves(back.params)[0].devices()) == 1
    print("checkpoint round trip")

    # FC2: HVPs over 2 devices (3 probes: one zero-padded) = one device
    ph = Phonopy(atoms_to_phonopy(bulk("Ar", "fcc", a=1.6)), supercell_matrix=np.diag([2, 2, 2]), log_level=0)
    ref = force_constants(ph, pot).force_constants
    split = force_constants(ph, pot, mesh=mesh)
    np.testing.assert_allclose(split.force_constants, ref, rtol=1e-12, atol=1e-12)

    class Bar:  # tqdm-like: the multi-device path advances it once per call
        total, n, calls = None, 0, 0
        def refresh(self): pass
        def update(self, k): self.n += k; self.calls += 1

    bar = Bar()
    blocked = force_constants(ph, pot, mesh=mesh, chunk=1, progress=bar)
    np.testing.assert_allclose(blocked.force_constants, ref, rtol=1e-12, atol=1e-12)
    assert bar.total == bar.n == blocked.n_hvp and bar.calls == -(-blocked.n_hvp // 2), (bar.n, bar.calls)
    print("fc2 equal", split.n_hvp, "probes;", bar.calls, "calls with a bar")
    from phono3py import Phono3py
    from curvax.phonons.fc3 import compute_fc3
    ph3 = Phono3py(atoms_to_phonopy(bulk("Ar", "fcc", a=1.6)), supercell_matrix=np.diag([2, 2, 2]), log_level=0)
    ref3 = compute_fc3(ph3, pot)
    split3 = compute_fc3(ph3, pot, mesh=mesh, chunk=1, progress=Bar())
    np.testing.assert_allclose(split3.fc3, ref3.fc3, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(split3.fc2, ref3.fc2, rtol=1e-10, atol=1e-10)
    print("fc3 equal", split3.n_third_order, "products")
    try:
        parallel.shard_batch(batching.take(batch, np.arange(3)), mesh)
    except ValueError as e:
        assert "cannot be split over 2 devices" in str(e), e
    else:
        raise AssertionError("an odd batch was split")
    print("OK")
''')


def test_two_devices_match_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("OK"), out.stdout


def test_distributed_flag_joins_before_the_command(monkeypatch, tmp_path):
    from curvax import parallel
    from curvax.cli import main

    calls = []
    monkeypatch.setattr(parallel, "initialize_distributed", lambda: calls.append("joined"))
    assert main(["--distributed", "relax", str(tmp_path / "missing.xyz"), "--model", "lj"]) == 2
    assert calls == ["joined"]
    assert parallel.is_writer() and parallel.device_count("all") >= 1
    for bad in (0, "two", True):
        try:
            parallel.device_count(bad)
        except ValueError as e:
            assert "devices must be 'all' or a positive integer" in str(e)
        else:
            raise AssertionError(bad)
