"""One scorecard for every experiment: each paper's claims, our numbers, and the verdicts.

``scorecard()`` runs every experiment at its default size with ``reproduce`` (or reads a
finished run's ``metrics.json`` with ``rerun=False``), and writes ``index.md`` (one row per
claim: paper, claim, detail, verdict, a link to the experiment's report and figure) and
``metrics.json`` (the counts of reproduced, not-reproduced and not-answered claims).
"""

from __future__ import annotations

import json
import os
import time
import traceback

import wnjax._runtime.interrupt as _interrupt
from wnjax._sweeps.store import atomic_write_bytes, writable_dir
from wnjax.experiments._report import NOT_ANSWERED, NOT_REPRODUCED, REPRODUCED, not_answered
from wnjax.experiments._reproduce import EXPERIMENTS, reproduce

# The paper each experiment reproduces.
PAPERS: dict[str, str] = {
    "simple-traj": "Morwani & Ramaswamy 2020",
    "lin-sep": "Morwani & Ramaswamy 2020",
    "xor": "Morwani & Ramaswamy 2020",
    "conv-rate": "Morwani & Ramaswamy 2020",
    "pruning": "Morwani & Ramaswamy 2020",
    "diagonal-wn": "Chou, Rauhut & Ward 2023",
    "tensor-regression": "Yun, Krishnan & Mobahi 2021",
    "tensor-classification": "Yun, Krishnan & Mobahi 2021",
    "small-init": "Kumar & Haupt 2024",
}
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_ANSWERED)


def verdicts_of(metrics) -> list[dict]:
    """The verdicts an experiment returned: ``metrics["verdicts"]`` as a list of
    ``{"claim", "verdict", "detail"}`` (a dict of lists, keyed by stage, is flattened)."""
    found = metrics.get("verdicts") if isinstance(metrics, dict) else None
    if isinstance(found, dict):
        flat = []
        for stage, items in found.items():
            for v in items if isinstance(items, list) else [items]:
                if isinstance(v, dict):
                    flat.append({**v, "claim": f"{v.get('claim', '')} ({stage})"})
        found = flat
    if not isinstance(found, list):
        return []
    return [v for v in found if isinstance(v, dict) and v.get("verdict") in VERDICTS]


def _figures(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if n.endswith(".png"))


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict], counts: dict, seconds: dict) -> str:
    """``index.md``: the counts, then one table row per claim."""
    lines = [
        "# Scorecard",
        "",
        "Every experiment of the four papers at its default size (`wnjax reproduce --all`).",
        "",
        "| verdict | claims |",
        "|---|---|",
        *(f"| {k} | {counts[k]} |" for k in VERDICTS),
        "",
        "| paper | experiment | claim | ours against the paper | verdict | report |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        links = f"[report]({r['experiment']}/report.md)"
        if r["figure"]:
            links += f", [figure]({r['experiment']}/{r['figure']})"
        lines.append(
            f"| {_cell(r['paper'])} | {r['experiment']} | {_cell(r['claim'])} | "
            f"{_cell(r['detail'])} | **{r['verdict']}** | {links} |"
        )
    lines += [
        "",
        "Wall time per experiment (s): "
        + ", ".join(
            f"{k} {'not recorded' if v is None else f'{v:.0f}'}" for k, v in seconds.items()
        ),
        "",
    ]
    return "\n".join(lines)


def scorecard(
    *,
    out: str = os.path.join("runs", "scorecard"),
    names=None,
    seeds: int | None = None,
    rerun: bool = True,
) -> dict:
    """Run every experiment (or ``names``) at its default size and write the scorecard.

    **Arguments:**

    - `out`: the folder; experiment ``NAME`` writes into ``out/NAME``, the scorecard into
      ``out/index.md`` and ``out/metrics.json``.
    - `names`: the experiments to run (default: all, in registry order).
    - `seeds`: the number of seeds of every experiment (default: each experiment's own).
    - `rerun`: ``False`` reads a finished ``out/NAME/metrics.json`` instead of running again.

    **Returns:** the scorecard metrics: ``counts`` (claims per verdict), ``claims`` (one dict
    per claim: ``paper``, ``experiment``, ``claim``, ``detail``, ``verdict``, ``figure``),
    ``seconds`` (wall time per experiment) and ``errors`` (experiment -> the error that stopped
    it; its claims count as not answered).
    """
    names = list(EXPERIMENTS) if names is None else list(names)
    writable_dir(out)
    rows, seconds, errors = [], {}, {}
    with _interrupt.handling():
        for name in names:
            if _interrupt.requested():
                break
            folder = os.path.join(out, name)
            started = time.time()
            metrics = None
            path = os.path.join(folder, "metrics.json")
            if not rerun and os.path.exists(path):
                with open(path) as f:
                    metrics = json.load(f)
            else:
                try:
                    kw = {} if seeds is None else {"seeds": seeds}
                    metrics = reproduce(name, out=folder, **kw)
                except Exception as err:  # one experiment's failure does not stop the others
                    errors[name] = f"{type(err).__name__}: {err}"
                    traceback.print_exc()
            # The experiment's own record (a reused run's too), else this loop's clock.
            reused = not rerun and os.path.exists(path)
            clock = None if reused else time.time() - started
            seconds[name] = (metrics if isinstance(metrics, dict) else {}).get(
                "wall_seconds", clock
            )
            found = verdicts_of(metrics)
            if not found:
                why = errors.get(name, "the experiment returned no verdicts")
                found = [not_answered("every claim of the experiment", why)]
            figures = _figures(folder)
            for v in found:
                rows.append(
                    {
                        "paper": PAPERS.get(name, ""),
                        "experiment": name,
                        "claim": v["claim"],
                        "detail": v.get("detail", ""),
                        "verdict": v["verdict"],
                        "figure": figures[0] if figures else None,
                    }
                )
    counts = {k: sum(r["verdict"] == k for r in rows) for k in VERDICTS}
    result = {
        "counts": counts,
        "claims": rows,
        "seconds": seconds,
        "errors": errors,
        "experiments": names,
        "partial": _interrupt.requested(),
    }
    atomic_write_bytes(os.path.join(out, "index.md"), render(rows, counts, seconds).encode())
    atomic_write_bytes(
        os.path.join(out, "metrics.json"), json.dumps(result, indent=2, default=str).encode()
    )
    return result
