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
# # XOR: EWN concentrates the first layer on about 4 neurons
#
# docs/theory.md §4: the 4 XOR points, one hidden layer of 20 ReLU neurons without bias, the
# output layer **fixed** (+1 for neurons 0-9, -1 for 10-19), weight normalization on the first
# layer only, exponential loss to `log L = -50`. The paper's claims:
#
# - **EWN: about 4 neurons dominate** (relative norm 0.43-0.55) and 15 of 20 fall under 0.05;
# - **SWN keeps about 16**; **unnormalized keeps all 20** at similar norms;
# - **test accuracy 1.0**.
#
# What to look at: the three bar panels of sorted relative norms `||w_u|| / ||W_1||` (the
# dashed line is the 0.05 threshold) and the "kept" counts beside the paper's.
#
# Set `WNJAX_SMOKE=1` to run at a tiny size (CI does).

# %%
import os

import jax

import wnjax

jax.config.update("jax_enable_x64", True)
SMOKE = os.environ.get("WNJAX_SMOKE") == "1"
NAME = "xor"
OUT = os.path.join("runs", "notebooks", NAME)

# %% [markdown]
# ## Run it as the CLI does
#
# `wnjax.reproduce` runs exactly `wnjax reproduce xor` (same defaults, same report) and
# returns the metrics dict; it also writes the figures, `metrics.json` and `report.md` under
# `OUT`. With `WNJAX_SMOKE=1` the sizes shrink to seconds (1 seed, to log L = -10: too early for the sparsity to show).

# %%
options = dict(seeds=1, target=-10.0, max_steps=500) if SMOKE else {}
metrics = wnjax.reproduce(NAME, out=OUT, **options)
wnjax.experiments.show_run(OUT)

# %% [markdown]
# Kept neurons (relative norm above the threshold) per seed, from the returned metrics.

# %%
for k in ("ewn", "swn", "standard"):
    print(f"{k:9s} kept: {metrics[f'{k}_kept']}   accuracy: {metrics[f'{k}_accuracy']}")

# %% [markdown]
# ## Change one thing and rerun
#
# The exact loss-normalized gradient flow on the smooth ReLU^2 variant instead of GD on
# ReLU: does the relative sparsity of EWN survive the change of activation and dynamics?
# Any flag of `wnjax reproduce xor --help` works here, with `-` written as `_`. (At smoke
# size only the option names are checked, to keep CI fast.)

# %%
variant = dict(dynamics="flow")
assert set(variant) <= wnjax.experiments.options(NAME), sorted(wnjax.experiments.options(NAME))
if SMOKE:
    print("smoke run: the variant", variant, "is not run")
else:
    other = wnjax.reproduce(NAME, out=OUT + "-variant", **variant)
    wnjax.experiments.show_run(OUT + "-variant")
