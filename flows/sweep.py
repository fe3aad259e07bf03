"""The `sweep` flow: short training runs over a grid (or a random sample) of learning rate,
micro batch size and warmup, each a `train` subflow with the same backend machinery; the
best trial is the one with the lowest validation loss.

Trials run one after another: each is a whole distributed job that takes the resources it
asks for, and the tokenized data is shared (the first trial makes it, the rest reuse it).
"""

import itertools
import random
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.train import TrainParameters, train
from flows.train_report import artifact_key
from pipeline.storage import join

SWEPT = ("lr", "micro_batch_size", "warmup_steps")


class SweepParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: TrainParameters = Field(description="every trial's parameters, except the swept ones and run_name (a prefix here)")
    lr: list[float] = Field(default_factory=lambda: [3e-4, 1e-3], min_length=1)
    micro_batch_size: list[int] = Field(default_factory=lambda: [8], min_length=1)
    warmup_steps: list[int] = Field(default_factory=lambda: [10], min_length=1)
    search: Literal["grid", "random"] = "grid"
    trials: int | None = Field(None, ge=1, description="random search: how many points of the grid to sample")
    seed: int = 0

    @model_validator(mode="after")
    def _trials_for_random(self) -> "SweepParameters":
        if self.search == "random" and self.trials is None:
            raise ValueError("random search needs `trials`")
        return self


def trial_points(params: SweepParameters) -> list[dict[str, Any]]:
    """The grid in a fixed order, or `trials` distinct points of it drawn with `seed`."""
    grid = [dict(zip(SWEPT, values)) for values in itertools.product(params.lr, params.micro_batch_size, params.warmup_steps)]
    if params.search == "random":
        return random.Random(params.seed).sample(grid, min(params.trials, len(grid)))
    return grid


def trial_parameters(params: SweepParameters, index: int, point: dict[str, Any]) -> TrainParameters:
    name = f"{params.base.run_name}-t{index:02d}"
    return params.base.model_copy(
        update={**point, "run_name": name, "export_hf": False, "output_uri": join(params.base.outputs_uri, name)}
    )


@flow(name="sweep")
def sweep(params: SweepParameters) -> dict:
    logger = get_run_logger()
    rows: list[dict[str, Any]] = []
    for index, point in enumerate(trial_points(params)):
        trial = trial_parameters(params, index, point)
        state = train(params=trial, return_state=True)
        row = {"trial": trial.run_name, **point}
        if state.is_completed():
            result = state.result()
            summary = result["summary"]
            row.update(status="completed", val_loss=summary["final_val_loss"], train_loss=summary["final_train_loss"],
                       tokens_per_s=summary["tokens_per_s"], restarts=len(result["restarts"]), report=result["report"])  # fmt: skip
        else:
            row.update(
                status=state.type.value.lower(), val_loss=None, train_loss=None, tokens_per_s=None, restarts=None, report=None
            )
            logger.warning("trial %s did not complete: %s", trial.run_name, state.message)
        rows.append(row)
    finished = [r for r in rows if r["val_loss"] is not None]
    if not finished:
        raise RuntimeError(f"no trial of sweep {params.base.run_name} finished with a validation loss")
    best = min(finished, key=lambda r: r["val_loss"])
    for row in rows:
        row["best"] = row is best
    create_table_artifact(
        rows,
        key=artifact_key(params.base.run_name, "sweep"),
        description=f"sweep {params.base.run_name}: best {best['trial']} (val loss {best['val_loss']:.4f})",
    )
    logger.info("best trial %s: %s", best["trial"], {k: best[k] for k in SWEPT})
    return {"best": best, "trials": rows}
