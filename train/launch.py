"""Starting trainer processes: the `accelerate launch` command for a recipe, and the Accelerator each rank builds.

The model code knows nothing of parallelism; the engine (plain, DDP, DeepSpeed ZeRO, FSDP2) comes from the
accelerate config the job was launched with. Two CPU pitfalls are handled here rather than trusted away:
`Accelerator()` without a GPU under torchrun runs N unsynchronised single processes unless it is told to use
the CPU (gloo), and DeepSpeed/FSDP requests that accelerate would silently ignore on CPU. Every rank checks
the world size and engine it got against the ones the recipe expects before any compute starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from recipes.training import LaunchSection
from stagekit.io import StageError
from train.plan import StagePlan

REPO_ROOT = Path(__file__).resolve().parents[1]
# Set by torchrun / accelerate launch / the deepspeed launcher in every rank they start.
LAUNCHER_ENV = ("LOCAL_RANK", "WORLD_SIZE")


def in_launched_job() -> bool:
    return any(key in os.environ for key in LAUNCHER_ENV)


def needs_launcher(launch: LaunchSection) -> bool:
    """A plain in-process run is enough for one process with no accelerate config."""
    return launch.num_processes > 1 or launch.num_machines > 1 or bool(launch.accelerate_config)


def accelerate_config_path(launch: LaunchSection) -> Path | None:
    if not launch.accelerate_config:
        return None
    path = Path(launch.accelerate_config)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.is_file():
        raise StageError(f"launch.accelerate_config: {launch.accelerate_config} not found")
    return path.resolve()


def node_identity(launch: LaunchSection) -> tuple[str, str] | None:
    """(machine rank, main process address) of this node for a multi-node launch, from the environment."""
    if launch.num_machines == 1:
        return None
    rank = os.environ.get("MACHINE_RANK", os.environ.get("SLURM_NODEID"))
    address = os.environ.get("MASTER_ADDR")
    if rank is None or address is None:
        raise StageError(
            "a multi-node launch needs MASTER_ADDR and MACHINE_RANK (or SLURM_NODEID) in the environment of "
            "each node's launcher; see recipes/accelerate/slurm.sbatch"
        )
    return rank, address


def launch_command(
    launch: LaunchSection,
    recipe_file: Path,
    stage: str,
    flags: list[str] = (),
    node: tuple[str, str] | None = None,
) -> list[str]:
    """`accelerate launch ... -m train --recipe FILE --stage STAGE` for one node (`node`: see node_identity)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    config = accelerate_config_path(launch)
    if config is not None:
        cmd += ["--config_file", str(config)]
    elif launch.num_processes > 1:  # torchrun-style DDP launcher; the trainer picks gloo when there is no GPU
        cmd += ["--multi_gpu"]
    cmd += ["--num_processes", str(launch.num_processes), "--num_machines", str(launch.num_machines)]
    if node is not None:
        cmd += ["--machine_rank", node[0], "--main_process_ip", node[1]]
    if launch.main_process_port is not None:
        cmd += ["--main_process_port", str(launch.main_process_port)]
    if config is None:  # otherwise the config file decides; without one, say it so accelerate does not warn
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    return cmd + ["-m", "train", "--recipe", str(recipe_file), "--stage", stage, *flags]


def run_launcher(cmd: list[str], launch: LaunchSection, stage: str) -> None:
    env = dict(os.environ)
    if launch.threads_per_process:
        env["OMP_NUM_THREADS"] = str(launch.threads_per_process)
    print(f"[train] {stage}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    result = subprocess.run(cmd, env=env)
    if result.returncode:
        raise StageError(f"{stage}: the launched training job failed with exit status {result.returncode}")


def mixed_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no"}.get(precision, precision)


def check_world_size(synchronised: int, launched: int, expected: int) -> None:
    """The process group must span every launched process, and that must be the world the recipe planned for
    (batch layout and data sharding depend on it). N unsynchronised copies show up as synchronised=1 < launched."""
    if synchronised != expected or launched != expected:
        raise StageError(
            f"world size mismatch: this job runs {synchronised} synchronised process(es) (WORLD_SIZE={launched}) "
            f"but the recipe expects {expected} (launch.num_processes / launch.expected_world_size). On CPU start "
            "N processes with `accelerate launch --multi_gpu --num_processes N` or torchrun (gloo), not `--cpu`"
        )


def make_accelerator(plan: StagePlan) -> Accelerator:
    """This rank's Accelerator, after checking world size and engine against the recipe."""
    launch, section = plan.recipe.launch, plan.section
    if launch.threads_per_process:
        torch.set_num_threads(launch.threads_per_process)
    requested = _requested_engine()
    gpu = torch.cuda.is_available()
    handlers = []
    backend = launch.backend if launch.backend != "auto" else (None if gpu else "gloo")
    if backend and in_launched_job():
        handlers.append(InitProcessGroupKwargs(backend=backend))
    loggers = plan.recipe.train.loggers
    for name in loggers:
        if not _importable(name):
            raise StageError(f"train.loggers: '{name}' is not installed (pip install {name})")
    accelerator = Accelerator(
        # On CPU, cpu=True gives a synchronised gloo group (MULTI_CPU); DeepSpeed must not get it, since
        # accelerate then drops DeepSpeed, so its group is created with the gloo backend above instead.
        cpu=not gpu and requested != DistributedType.DEEPSPEED,
        mixed_precision=mixed_precision(section.precision),
        gradient_accumulation_steps=plan.accumulation,
        kwargs_handlers=handlers,
        log_with=loggers or None,
        project_dir=str(plan.out_dir / "logs"),
    )
    check_world_size(accelerator.num_processes, int(os.environ.get("WORLD_SIZE", "1")), plan.world_size)
    if requested is not None and accelerator.distributed_type != requested:
        raise StageError(
            f"the launch asked for {requested.value} but accelerate set up {accelerator.distributed_type.value} "
            f"on {accelerator.device.type} (FSDP needs GPUs)"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED and section.loss_spike_policy == "skip":
        raise StageError(
            f"train.{plan.stage}.loss_spike_policy=skip is not supported with DeepSpeed (its engine steps inside "
            "backward); use stop"
        )
    return accelerator


def release(accelerator: Accelerator) -> None:
    """End trackers and the process group, and forget accelerate's singletons (the next stage may run in
    this same process with a different accumulation)."""
    from accelerate.state import AcceleratorState, GradientState

    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _requested_engine() -> DistributedType | None:
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return DistributedType.DEEPSPEED
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return DistributedType.FSDP
    return None


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
