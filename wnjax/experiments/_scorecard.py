"""One scorecard for every experiment: each paper's claims, our numbers, and the verdicts.

``scorecard()`` runs every experiment at its default size with ``reproduce`` (or reads a
finished run's ``metrics.json`` with ``rerun=False``), and writes ``index.md`` (one row per
claim: paper, claim, detail, verdict, a link to the experiment's report and figure) and
``metrics.json`` (the counts of reproduced, not-reproduced and not-answered claims).

SIGINT/SIGTERM stop it at the running experiment's next safe point: the scorecard is written
marked PARTIAL, the interrupted experiment and those not run listed as not answered; with
``rerun=False`` a later call runs them (a stored run marked partial, or run with other
options than the scorecard's, is never reused).
"""

from __future__ import annotations

import json
import os
import time
import traceback

import wnjax._runtime.interrupt as _interrupt
from wnjax._sweeps.store import atomic_write_bytes, writable_dir
from wnjax.experiments._report import NOT_ANSWERED, NOT_REPRODUCED, REPRODUCED, not_answered
from wnjax.experiments._reproduce import EXPERIMENTS, mark_partial, reproduce

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


def is_partial(folder: str, metrics) -> bool:
    """Whether the run stored in ``folder`` was cut short by SIGINT/SIGTERM: its metrics say
    ``partial``, or its ``report.md`` carries a ``**PARTIAL**`` line."""
    if isinstance(metrics, dict) and metrics.get("partial"):
        return True
    try:
        with open(os.path.join(folder, "report.md")) as f:
            return any(line.startswith("**PARTIAL**") for line in f)
    except OSError:
        return False


def not_reusable(name: str, folder: str, metrics, seeds: int | None) -> str | None:
    """Why the run stored in ``folder`` cannot stand in the scorecard of experiment ``name``
    (``None`` if it can): it is partial (``is_partial``), or it was not run with the options
    and arithmetic the scorecard runs (the defaults, ``seeds`` if given, and float64 unless
    JAX's x64 mode is off)."""
    import jax

    if is_partial(folder, metrics):
        return "its run is partial"
    stored = metrics.get("options") if isinstance(metrics, dict) else None
    if not isinstance(stored, dict):
        return "its metrics.json does not record the options it was run with"
    from wnjax.experiments._reproduce import options_record, run_options

    wanted = options_record(name, run_options(name, **({} if seeds is None else {"seeds": seeds})))
    differ = sorted(k for k in set(wanted) | set(stored) if wanted.get(k) != stored.get(k))
    if differ:
        shown = ", ".join(f"{k}={stored.get(k)!r} (scorecard: {wanted.get(k)!r})" for k in differ)
        return f"its run has other options than the scorecard's: {shown}"
    arithmetic = "float64" if jax.config.read("jax_enable_x64") else "float32"
    if metrics.get("arithmetic", arithmetic) != arithmetic:
        return f"its run is in {metrics['arithmetic']}, the scorecard's in {arithmetic}"
    return None


def render(rows: list[dict], counts: dict, seconds: dict, stop: dict | None = None) -> str:
    """``index.md``: a PARTIAL line when ``stop`` (``interrupted``: the experiment the signal
    stopped, or ``None``; ``finished``; ``not_run``) is given, the counts, then one table row
    per claim."""
    lines = [
        "# Scorecard",
        "",
        "Every experiment of the four papers at its default size (`wnjax reproduce --all`).",
        "",
    ]
    if stop is not None:
        during = (
            f" during `{stop['interrupted']}` (its run is partial: no verdict)"
            if stop["interrupted"]
            else ""
        )
        lines += [
            f"**PARTIAL**: interrupted (SIGINT/SIGTERM){during}. Finished: "
            f"{', '.join(stop['finished']) or 'none'}. Not run: "
            f"{', '.join(stop['not_run']) or 'none'}. `wnjax reproduce --all --reuse` keeps the "
            "finished experiments and runs the others.",
            "",
        ]
    lines += [
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
    - `rerun`: ``False`` reads a finished ``out/NAME/metrics.json`` instead of running again;
      a run marked partial (``is_partial``), or run with other options or arithmetic than the
      scorecard's (``not_reusable``), is run again.

    **Returns:** the scorecard metrics: ``counts`` (claims per verdict), ``claims`` (one dict
    per claim: ``paper``, ``experiment``, ``claim``, ``detail``, ``verdict``, ``figure``),
    ``seconds`` (wall time per experiment), ``errors`` (experiment -> the error that stopped
    it; its claims count as not answered) and ``partial``. After SIGINT/SIGTERM ``partial`` is
    true, and ``interrupted`` (the experiment cut short, or ``None``), ``finished`` and
    ``not_run`` say how far it got; the claims of the unfinished experiments count as not
    answered.
    """
    names = list(EXPERIMENTS) if names is None else list(names)
    writable_dir(out)
    rows, seconds, errors, finished = [], {}, {}, []
    state = {"running": None, "started": 0.0}

    def row(name: str, v: dict, figure=None) -> dict:
        return {
            "paper": PAPERS.get(name, ""),
            "experiment": name,
            "claim": v["claim"],
            "detail": v.get("detail", ""),
            "verdict": v["verdict"],
            "figure": figure,
        }

    def write(stopped: bool) -> dict:
        table = list(rows)
        stop = None
        if stopped:
            running = state["running"]
            not_run = [n for n in names if n not in finished and n != running]
            stop = {"interrupted": running, "finished": list(finished), "not_run": not_run}
            if running is not None:
                why = "interrupted (SIGINT/SIGTERM): its run is partial, so no verdict is drawn"
                table.append(row(running, not_answered("every claim of the experiment", why)))
            for name in not_run:
                why = "not run: interrupted (SIGINT/SIGTERM) before it started"
                table.append(row(name, not_answered("every claim of the experiment", why)))
        counts = {k: sum(r["verdict"] == k for r in table) for k in VERDICTS}
        result = {
            "counts": counts,
            "claims": table,
            "seconds": dict(seconds),
            "errors": dict(errors),
            "experiments": names,
            "partial": stopped,
            **(stop or {}),
        }
        atomic_write_bytes(
            os.path.join(out, "index.md"), render(table, counts, seconds, stop).encode()
        )
        atomic_write_bytes(
            os.path.join(out, "metrics.json"), json.dumps(result, indent=2, default=str).encode()
        )
        return result

    def on_timeout() -> None:  # the command line ends the process: write what is finished
        if state["running"] is not None:
            mark_partial(os.path.join(out, state["running"]), state["started"])
        write(True)
        print(f"PARTIAL: interrupted; {out}/index.md covers the experiments that had finished.")

    with _interrupt.handling(on_timeout=on_timeout):
        for name in names:
            if _interrupt.requested():
                break
            folder = os.path.join(out, name)
            started = time.time()
            state.update(running=name, started=started)
            metrics = None
            path = os.path.join(folder, "metrics.json")
            reused = False
            if not rerun and os.path.exists(path):
                with open(path) as f:
                    metrics = json.load(f)
                why = not_reusable(name, folder, metrics, seeds)
                reused = why is None
                if not reused:
                    print(f"{folder}: {why}; running it again.", flush=True)
            if not reused:
                try:
                    kw = {} if seeds is None else {"seeds": seeds}
                    metrics = reproduce(name, out=folder, **kw)
                except Exception as err:  # one experiment's failure does not stop the others
                    errors[name] = f"{type(err).__name__}: {err}"
                    traceback.print_exc()
            # The experiment's own record (a reused run's too), else this loop's clock.
            clock = None if reused else time.time() - started
            seconds[name] = (metrics if isinstance(metrics, dict) else {}).get(
                "wall_seconds", clock
            )
            if not reused and _interrupt.requested():
                break  # cut short: its verdicts are not counted
            found = verdicts_of(metrics)
            if not found:
                why = errors.get(name, "the experiment returned no verdicts")
                found = [not_answered("every claim of the experiment", why)]
            figures = _figures(folder)
            rows.extend(row(name, v, figures[0] if figures else None) for v in found)
            finished.append(name)
            state["running"] = None
        if _interrupt.requested():
            _interrupt.stopping()
        return write(len(finished) < len(names))
