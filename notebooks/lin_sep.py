# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # lin-sep: EWN reaches the asymptotic regime sooner and keeps few neurons
#
# docs/theory.md §4: 4 points in R^2 ((1, 1) with y = -1, (-1, 1) with y = +1, one more per class
# drawn per seed), a 2-layer ReLU^2 net with 8 hidden neurons and no bias, GD with step
# `eta = eta0/L^(1-1/30)` and backtracking, to `log L = -300`, counting epochs (accepted steps)
# as the paper does. The default `schedule="paper-code"` is the authors' code: the previous
# iterate's loss normalizes the step, and the loss is logistic until every margin exceeds 30;
# `"paper-text"` is the schedule as the paper writes it. `eta0 = 0.01` is never grown;
# `lr=0.1, cap=1.0` grows it after each good step and gets there in tens of steps. The paper's
# claims:
#
# - **EWN reaches log L = -300 much faster than SWN** (its run: 653 vs 12,284 epochs);
# - **only a few neurons keep a non-negligible relative norm** `||w_u|| / ||W_1||`;
# - on a log-log plot of `||grad_u L||` against `||w_u||` the neurons with a nonzero limit satisfy
#   **x + y = const (EWN)** and **y - x = const (SWN)**;
# - **the neurons align with their negative gradients**: `cos(w_u, -grad_u L) -> 1`;
# - **the normalized margin rises**.
#
# What to look at: the loss panel (EWN's curve drops first), the log-log relation panel, the
# alignment panel, and the sorted relative norms; the report's verdicts state which claims our
# run reproduces.
#
# Set `WNJAX_SMOKE=1` to run at a tiny size (CI does).

# %%
import os

import jax

import wnjax

jax.config.update("jax_enable_x64", True)
SMOKE = os.environ.get("WNJAX_SMOKE") == "1"
NAME = "lin-sep"
OUT = os.path.join("runs", "notebooks", NAME)

# %% [markdown]
# ## Run it as the CLI does
#
# `wnjax.reproduce` runs exactly `wnjax reproduce lin-sep` (same defaults, same report) and
# returns the metrics dict; it also writes the figures, `metrics.json` and `report.md` under
# `OUT`. With `WNJAX_SMOKE=1` the sizes shrink to seconds (1 seed, to log L = -30, at most 200 steps).

# %%
options = dict(seeds=1, target=-30.0, max_steps=200) if SMOKE else {}
metrics = wnjax.reproduce(NAME, out=OUT, **options)
wnjax.experiments.show_run(OUT)

# %% [markdown]
# The metrics: GD epochs (accepted steps) to the target, undone steps and surviving neurons per parameterization, per seed.

# %%
for k in ("ewn", "swn", "standard"):
    cost = metrics.get(f"{k}_epochs_to_target", metrics.get(f"{k}_log_t_to_target"))
    print(f"{k:9s} to target: {cost}   undone: {metrics.get(f'{k}_undone')}   kept: {metrics[f'{k}_kept']}")

# %% [markdown]
# ## Change one thing and rerun
#
# The exact loss-normalized gradient flow instead of GD (ReLU^2 is smooth, so it is the
# same net); the cost is then `log t` at the target instead of GD epochs.
# Any flag of `wnjax reproduce lin-sep --help` works here, with `-` written as `_`. (At smoke
# size only the option names are checked, to keep CI fast.)

# %%
variant = dict(dynamics="flow")
assert set(variant) <= wnjax.experiments.options(NAME), sorted(wnjax.experiments.options(NAME))
if SMOKE:
    print("smoke run: the variant", variant, "is not run")
else:
    other = wnjax.reproduce(NAME, out=OUT + "-variant", **variant)
    wnjax.experiments.show_run(OUT + "-variant")
