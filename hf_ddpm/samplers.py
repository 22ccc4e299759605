"""The samplers: one table from the names the command lines and configs take to the scheduler each one
swaps into a pipeline, the objectives it can sample, and how the model card names it.

Importing this module loads neither torch nor diffusers, so the config can check sampler names cheaply;
`make_scheduler` in `hf_ddpm.pipeline` resolves the classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampler:
    name: str
    # A diffusers scheduler class, or hf-ddpm's `LinearNoiseScheduler` (the DDPM sampler of the paper).
    scheduler_class: str
    # The objectives (`diffusion.objective`) whose models it samples.
    objectives: tuple[str, ...]
    # Inference steps when none are asked for.
    default_steps: int
    # How the model card and the docs call it.
    title: str
    # `from_config` keyword arguments for a flow-matching model's scheduler config.
    flow_kwargs: dict[str, Any] = field(default_factory=dict)


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        # Algorithm 2 of Ho et al. 2020: ancestral sampling through every training timestep.
        Sampler("ddpm", "LinearNoiseScheduler", ("ddpm",), 1000, "DDPM ancestral sampling"),
        # Song et al. 2021, "Denoising Diffusion Implicit Models": deterministic (eta = 0).
        Sampler("ddim", "DDIMScheduler", ("ddpm",), 50, "DDIM"),
        # Lu et al. 2022, "DPM-Solver++": a second-order multistep solver; on a flow-matching model it
        # runs on the sigmas t of the straight path and reads the UNet's output as the velocity.
        Sampler(
            "dpm-solver",
            "DPMSolverMultistepScheduler",
            ("ddpm", "flow_matching"),
            20,
            "DPM-Solver++",
            flow_kwargs={"prediction_type": "flow_prediction", "use_flow_sigmas": True},
        ),
        # Flow matching: Euler steps along the learned velocity, the export's own sampler.
        Sampler(
            "flow-euler",
            "FlowMatchEulerDiscreteScheduler",
            ("flow_matching",),
            50,
            "flow matching Euler steps",
        ),
    )
}
# The sampler an export carries (and samples with when none is named), by objective.
SAVED_SAMPLER = {"ddpm": "ddpm", "flow_matching": "flow-euler"}


def sampler_names(objective: str | None = None) -> list[str]:
    """The sampler names, or those that sample `objective`'s models."""
    return [s.name for s in SAMPLERS.values() if objective is None or objective in s.objectives]


def check_sampler(name: str, objective: str, key: str = "sampler") -> None:
    """`ValueError` in one line when `name` is no sampler, or none of `objective`'s."""
    if name not in SAMPLERS:
        raise ValueError(f"{key} {name!r} is unknown: choose one of {sampler_names()}")
    if objective not in SAMPLERS[name].objectives:
        kind = "a flow-matching" if objective == "flow_matching" else "a DDPM"
        raise ValueError(
            f"{key} {name!r} cannot sample {kind} model: choose one of {sampler_names(objective)}"
        )
