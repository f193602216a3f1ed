"""Time per attempted SGD epoch of ``wnjax reproduce pruning --full`` (width 1024 on MNIST, all
seeds vmapped), and the total it extrapolates to.

    python benchmarks/pruning_full.py --data-dir DIR [--float32] [--seeds 5] [--epochs 2]

For each parameterization: one compiled call of one epoch (compilation included), then
``--epochs`` attempted epochs in one call, timed. The total is extrapolated from the Exp-WN
MNIST logs' kept epochs to log L = -300 (EWN 4,784, SWN 6,870, unnormalized 2,026), each doubled
for the undone epochs (kept and undone epochs come in about equal numbers under 1.1x/1.1x
backtracking: about 1 undone per kept epoch in the digits runs). ``--quick``: width 64,
1 seed, 512 training images (or scikit-learn digits without ``--data-dir``).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def main() -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2, help="attempted epochs timed per run")
    args = p.parse_args()
    C.setup(args)
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import wnjax.experiments._pruning as P
    from wnjax._losses import get_loss

    seeds, width = (1, 64) if args.quick else (args.seeds, 1024)
    opts = P.Options(
        full=not args.quick or args.data_dir is not None,
        data_dir=args.data_dir,
        data="mnist" if args.data_dir else "digits",
        seeds=seeds,
    )
    k_data, k_net, k_sgd = jax.random.split(jax.random.key(0), 3)
    Xtr, ytr, Xte, _, note = P.load(opts, k_data)
    if args.quick:
        Xtr, ytr = Xtr[:512], ytr[:512]
    Xtr, _ = P.standardize(Xtr, Xte)
    n = int(Xtr.shape[0])
    loss = get_loss("cross_entropy")
    keys = jax.random.split(k_net, seeds)
    levels = jnp.asarray(P.CHECKPOINTS, Xtr.dtype)
    rows, per_epoch = [], {}
    for name in P.NAMES:
        models = eqx.filter_vmap(
            lambda k: P.parameterized(name, P.init_net(k, Xtr.shape[1], width))
        )(keys)
        params, static = eqx.partition(models, eqx.is_inexact_array)
        state = P.initial_state(
            params,
            static,
            Xtr,
            ytr,
            loss=loss,
            levels=len(P.CHECKPOINTS),
            eta0=0.01,
            max_epochs=10**9,
        )
        seed_keys = jax.random.split(k_sgd, seeds)

        def call(state, limit):
            return P._epochs(
                state,
                seed_keys,
                static,
                Xtr,
                ytr,
                levels,
                jnp.asarray(limit, jnp.int32),
                loss=loss,
                batch_size=128,
                grow=1.1,
                shrink=1.1,
                min_eta0=1e-12,
            )

        t0 = time.perf_counter()
        state = jax.block_until_ready(call(state, 1))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        state = jax.block_until_ready(call(state, args.epochs))
        per = (time.perf_counter() - t0) / args.epochs
        per_epoch[name] = per
        kept = P.PAPER_EPOCHS[name][-1]
        rows.append(
            {
                "run": name,
                "s per epoch": per,
                "first call s": first,
                "Exp-WN kept epochs": kept,
                "projected h": 2 * kept * per / 3600,
                "log L": float(np.mean(np.asarray(state["log_loss"]))),
            }
        )
    total = sum(r["projected h"] for r in rows)
    print(
        f"{note}; n = {n}, width {width}, {seeds} seeds vmapped, "
        f"{'float32' if args.float32 else 'float64'}, {-(-n // 128)} SGD steps per epoch"
    )
    print(
        C.table(
            rows,
            ["run", "s per epoch", "first call s", "Exp-WN kept epochs", "projected h", "log L"],
        )
    )
    print(f"projected total to log L = -300 (2 x Exp-WN kept epochs): {total:.1f} h")
    C.write_result(
        "pruning_full",
        args,
        {
            "data": note,
            "n_train": n,
            "width": width,
            "seeds": seeds,
            "batch_size": 128,
            "steps_per_epoch": -(-n // 128),
            "epochs_timed": args.epochs,
            "seconds_per_attempted_epoch": per_epoch,
            "rows": rows,
            "projected_total_hours": total,
            "projection": "2 x the Exp-WN MNIST kept epochs to -300 (undone ~ kept)",
            "gpu": C.gpu_status(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
