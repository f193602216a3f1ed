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
# # simple-traj: EWN picks a coordinate axis, unnormalized GD drifts to x/||x||
#
# The smallest example of the first paper (Morwani & Ramaswamy, ALT 2022; docs/theory.md §4): a
# linear model `w . x` in R^2 on one point `x = (2, 1)`, exponential loss `exp(-w . x)`, run to
# `log L = -50`. Each coordinate is its own 1-D neuron, so under exponential weight
# normalization `w_i = exp(a_i)` and the EWN flow is `dw_i/dt = w_i^2 x_i L`. Solving it,
#
#     1/w_i(t) = 1/w_i(0) - x_i S(t),   S(t) = int_0^t L,
#
# so the coordinate with the largest `w_i(0) x_i` blows up first and **EWN ends on that axis**
# (paper: about (0.997, 0.080) from init (1, 1), (0.060, 0.998) from (1, 3)). The unnormalized
# flow `w(t) = w(0) + x S(t)` **drifts towards x/||x|| = (0.894, 0.447)**.
#
# What to look at: the trajectories panel (EWN bends to an axis, unnormalized to the dashed
# x/||x|| direction), the table of final directions beside the paper's, and the closed-form
# error (about 1e-10 for the exact flow).
#
# Set `WNJAX_SMOKE=1` to run at a tiny size (CI does).

# %%
import json
import os

import jax

import wnjax

jax.config.update("jax_enable_x64", True)
SMOKE = os.environ.get("WNJAX_SMOKE") == "1"
NAME = "simple-traj"
OUT = os.path.join("runs", "notebooks", NAME)

# %% [markdown]
# ## Run it as the CLI does
#
# `wnjax.reproduce` runs exactly `wnjax reproduce simple-traj` (same defaults, same report) and
# returns the metrics dict; it also writes the figures, `metrics.json` and `report.md` under
# `OUT`. With `WNJAX_SMOKE=1` the sizes shrink to seconds (GD to log L = -20 instead of the exact flow to -50).

# %%
options = dict(seeds=1, dynamics="gd", target=-20.0, lr=5e-3) if SMOKE else {}
metrics = wnjax.reproduce(NAME, out=OUT, **options)
wnjax.experiments.show_run(OUT)

# %% [markdown]
# The returned metrics hold the same numbers: the final EWN direction of each init, and the
# axis predicted by `argmax_i w_i(0) x_i`.

# %%
print("EWN final directions:", metrics["final_direction"]["ewn"][:5])
print("EWN axis / predicted axis:", metrics["ewn_axis"], metrics["predicted_axis"])
print("closed-form max relative error:", json.dumps(metrics["closed_form_max_rel_error"]))

# %% [markdown]
# ## Change one thing and rerun
#
# GD instead of the exact flow: the step `eta0/L` makes GD follow the same path up to
# `O(eta0)`, so the same axes come out.
# Any flag of `wnjax reproduce simple-traj --help` works here, with `-` written as `_`. (At smoke
# size only the option names are checked, to keep CI fast.)

# %%
variant = dict(dynamics="gd", lr=5e-3)
assert set(variant) <= wnjax.experiments.options(NAME), sorted(wnjax.experiments.options(NAME))
if SMOKE:
    print("smoke run: the variant", variant, "is not run")
else:
    other = wnjax.reproduce(NAME, out=OUT + "-variant", **variant)
    wnjax.experiments.show_run(OUT + "-variant")
