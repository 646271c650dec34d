"""The base of the components' typed inputs, and how one of them blames a key.

A component's inputs are pydantic models (`PostgresConfig`, `NodePoolConfig`, ...) that the
stack config (stacks/config.py) embeds as its sections: camelCase keys as the stack files write
them, snake_case in Python, and an unknown key is an error rather than a silent no-op.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


def _cron(value: str) -> str:
    if len(value.split()) != 5:
        raise ValueError(f"expected a 5-field cron expression, got {value!r}")
    return value


# A schedule as CronJobs and Backup for GKE read it (UTC).
CronSchedule = Annotated[str, AfterValidator(_cron)]


class Inputs(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class KeyProblem(ValueError):
    """Raised inside a model validator to blame one sub-key rather than the whole object."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem
