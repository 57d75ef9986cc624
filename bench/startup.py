"""How fast a worker with every model becomes ready, loading its models one at a time or in
parallel (``WORKER_LOAD_THREADS``), and its resident memory once ready. One run, fresh stacks.

    .venv/bin/python -m bench.startup [--threads 1,3] [--tasks embed,similar,...]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import (
    build_predict_model,
    print_table,
    save,
    stack,
    temp_repository,
    worker_state,
)

ALL = "embed,similar,entities,forecast,predict"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,3")
    parser.add_argument("--tasks", default=ALL)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    rows = []
    with temp_repository() as repository:
        build_predict_model(Path(repository))
        for threads in args.threads.split(","):
            for run in range(args.runs):
                env = {"WORKER_LOAD_THREADS": threads, "MODEL_REPOSITORY": repository}
                with stack(args.tasks, f"startup-{threads}-{run}", **env) as config:
                    state = worker_state(config)
                tasks = state["tasks"]
                results[f"{threads} threads, run {run + 1}"] = state
                rows.append(
                    [
                        f"{threads} thread(s), run {run + 1}",
                        *(tasks[t]["load_s"] for t in args.tasks.split(",")),
                        state["load_s"],
                        state["ready_after_s"],
                        state["rss_mb"],
                    ]
                )
    print_table(
        "Worker start-up, seconds (every model; predict with one small Keras model)",
        ["loading", *args.tasks.split(","), "all models", "ready after", "RSS MiB"],
        rows,
    )
    save("startup", results)


if __name__ == "__main__":
    main()
