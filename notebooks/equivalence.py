# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # EWN gradient flow = unnormalized flow with per-neuron rate ||w_u||^2
#
# Morwani & Ramaswamy (ALT 2022): if every `||v_u(0)|| = 1`, exponential weight normalization
# `w_u = exp(a_u) v_u/||v_u||` traces exactly the path of `dw_u/dt = -||w_u||^2 grad_u L`.
# Standard weight normalization does not. This notebook integrates all three flows with diffrax
# and compares the paths, then shows that GD approaches the flow with an error ~ eta.
#
# Set `WNJAX_SMOKE=1` to run at a tiny size (CI does).

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import wnjax

jax.config.update("jax_enable_x64", True)
SMOKE = os.environ.get("WNJAX_SMOKE") == "1"

# %% [markdown]
# A 2-layer ReLU^2 net (3-homogeneous) on separable Gaussian data.

# %%
net, X, y = wnjax._analysis.equivalence.default_problem(jax.random.key(0), n=8 if SMOKE else 16)
print("homogeneity degree:", wnjax.homogeneity_degree(net, X))
t1, rtol = (2.0, 1e-8) if SMOKE else (10.0, 1e-10)
kw = dict(t1=t1, rtol=rtol, atol=rtol * 1e-2, n_save=24)
ref = wnjax.gradient_flow(net, X, y, rate="neuron_norm_sq", **kw)
runs = {"EWN": wnjax.gradient_flow(wnjax.ewn(net), X, y, **kw),
        "SWN": wnjax.gradient_flow(wnjax.swn(net), X, y, **kw)}


# %%
def path(states):
    return jax.vmap(lambda s: wnjax._nets.neurons.flat_weights(wnjax.to_standard(s)))(states)


ref_path = path(ref.states)
fig, ax = plt.subplots(figsize=(5, 3.5))
for name, run in runs.items():
    err = jnp.linalg.norm(path(run.states) - ref_path, axis=1) / jnp.linalg.norm(ref_path, axis=1)
    ax.loglog(np.asarray(run.ts[1:]), np.asarray(err[1:]) + 1e-18, label=name)
ax.set(xlabel="t", ylabel="||w - w_rate|| / ||w_rate||", title="distance to the rate-||w_u||^2 flow")
ax.legend()
plt.show()

# %% [markdown]
# GD with step eta over the fixed time T = k eta: EWN-GD drifts from adaptive-rate GD, and both
# drift from the flow, by amounts proportional to eta.

# %%
gd = wnjax.gd_equivalence(net, X, y, etas=(0.01, 0.005) if SMOKE else (0.01, 0.005, 0.0025),
                          horizon=0.5 if SMOKE else 1.0, rtol=rtol, atol=rtol * 1e-2)
for (eta, drift), (_, gap) in zip(gd["gd_drift"], gd["gd_vs_flow"]):
    print(f"eta = {eta:<7g} EWN-GD vs rate-GD: {drift:.3e}   GD vs flow: {gap:.3e}")
