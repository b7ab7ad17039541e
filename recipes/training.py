"""Recipe sections `train` (per-stage hyperparameters) and `launch` (how the trainer processes are started).

Paper numbers: Phi-1 (Gunasekar et al. 2023, "Textbooks Are All You Need", Sec. 2.3). Pretraining
(phi-1-base, CodeTextbook): effective batch 1024 sequences of 2048 tokens (data parallel x accumulation),
max LR 1e-3, 750 warmup steps, weight decay 0.1, 36,000 steps (phi-1-base is the 24,000-step checkpoint),
AdamW, linear-warmup-linear-decay schedule, fp16, attention/residual dropout 0.1, 8 A100s with DeepSpeed.
Finetuning (phi-1, CodeExercises): same setup, effective batch 256, max LR 1e-4, 50 warmup steps,
weight decay 0.01, 6,000 steps, checkpoint every 1000 steps. The paper gives no AdamW betas/eps, clipping
or final LR; those defaults below are common practice, not Phi-1's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from recipes.config import setting

STAGES = ("pretrain", "finetune")
NO_DECAY_KINDS = ("bias", "norm", "embedding")
_STAGE_REF = re.compile(rf"({'|'.join(STAGES)})(?:@(\d+))?")


def stage_ref(text: str) -> tuple[str, int | None] | None:
    """'pretrain' -> ('pretrain', None), 'pretrain@24000' -> ('pretrain', 24000); anything else (a path): None."""
    match = _STAGE_REF.fullmatch(text)
    return (match.group(1), int(match.group(2)) if match.group(2) else None) if match else None


def stage_export_dir(run_path: Path, ref: str) -> Path:
    """The HF model directory a stage reference names: <run>/<stage>/export (the stage's export: its last or,
    with select_best, its best step) or <run>/<stage>/exports/step-N. Used by train (init_from) and eval."""
    parsed = stage_ref(ref)
    if parsed is None:
        raise ValueError(
            f"'{ref}' is not a stage reference (expected one of {', '.join(STAGES)}, optionally @STEP)"
        )
    stage, step = parsed
    return Path(run_path) / stage / ("export" if step is None else f"exports/step-{step}")


@dataclass
class DataPhase:
    """One data phase of a stage (Phi-3 Sec. 2: web-heavy first, then synthetic-heavy)."""

    shards: str = setting(
        "Packed shard directory whose train/ this phase reads (same tokenizer as the stage)."
    )
    until_step: int | None = setting(
        "Optimizer steps below this read the phase's shards; null: until the end of the stage (last phase only).",
        None,
    )


@dataclass
class StageSection:
    """Hyperparameters of one training stage; the defaults are CPU-sized."""

    shards: str = setting(
        "Packed shard directory holding train/ and val/ (stagekit.shards). Empty: <run>/data/shards/<stage>.",
        "",
    )
    # --- data phases (issue 15) ---
    phases: list[DataPhase] = setting(
        "Data phases by step: each {until_step, shards} feeds steps [previous until_step, until_step) from its "
        "shards' train/, starting at that set's first sequence; `shards` above still gives val/. Empty: one phase.",
        factory=list,
    )
    # --- end data phases ---
    init_from: str = setting(
        "Starting weights: '' a seeded random init, 'pretrain' the pretrain stage's export, 'pretrain@N' its "
        "step-N export (N must be in that stage's export_steps), or a path to an HF model directory. Phi-1 "
        "finetunes phi-1-base, the 24,000-step checkpoint of the pretrain run (Sec. 2.3).",
        "",
    )
    max_steps: int = setting(
        "Optimizer steps. Phi-1 Sec. 2.3: 36,000 pretraining (phi-1-base = step 24,000), 6,000 finetuning.",
        100,
    )
    global_batch_size: int = setting(
        "Sequences per optimizer step over all processes = micro_batch_size x world size x gradient "
        "accumulation (it must divide). Phi-1 'effective batch size': 1024 pretrain, 256 finetune.",
        8,
    )
    micro_batch_size: int = setting("Sequences per process per forward/backward pass.", 8)
    seq_len: int = setting(
        "Tokens per sequence, sliced from the packed token array (at most the model's max_seq_len). Phi-1: 2048.",
        256,
    )
    lr: float = setting("Peak learning rate (after warmup). Phi-1: 1e-3 pretrain, 1e-4 finetune.", 1e-3)
    min_lr_ratio: float = setting(
        "The schedule decays to min_lr_ratio x lr at the last step (0 decays to zero). Not given by Phi-1.",
        0.1,
    )
    warmup_steps: int = setting("Linear warmup steps from 0 to lr. Phi-1: 750 pretrain, 50 finetune.", 10)
    schedule: Literal["cosine", "linear", "wsd", "constant"] = setting(
        "Decay after warmup: cosine; linear (Phi-1's 'linear-warmup-linear-decay'); wsd = warmup-stable-decay, "
        "constant then a linear decay over the last decay_fraction of steps (Hu et al. 2024, MiniCPM); constant.",
        "cosine",
    )
    decay_fraction: float = setting("wsd only: fraction of max_steps spent in the final decay.", 0.2)
    weight_decay: float = setting("AdamW decoupled weight decay. Phi-1: 0.1 pretrain, 0.01 finetune.", 0.1)
    no_decay: list[Literal["bias", "norm", "embedding"]] = setting(
        "Parameter kinds exempt from weight decay (a tied LM head counts as the embedding).",
        factory=lambda: list(NO_DECAY_KINDS),
    )
    betas: list[float] = setting(
        "AdamW (beta1, beta2); Phi-1 does not report them.", factory=lambda: [0.9, 0.95]
    )
    eps: float = setting("AdamW epsilon.", 1e-8)
    fused_optimizer: bool | None = setting(
        "Fused AdamW kernel; null: fused on CUDA, the foreach implementation elsewhere.", None
    )
    grad_clip: float = setting(
        "Clip the global gradient norm to this value; 0 disables (the norm is still logged).", 1.0
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting(
        "Mixed precision. auto: bf16 autocast on a bf16-capable GPU, fp32 on CPU. Phi-1 used fp16.", "auto"
    )
    document_masking: bool = setting(
        "Attention stays inside each packed document and RoPE positions restart at document starts.", True
    )
    activation_checkpointing: bool = setting(
        "Recompute each transformer block in the backward pass (saves memory).", False
    )
    compile: bool = setting("torch.compile the model (inductor).", False)
    shuffle: bool = setting(
        "Shuffle the sequence windows each epoch (seeded by the recipe seed); false reads in order.", True
    )
    export_steps: list[int] = setting(
        "Also export the weights of these steps as loadable HF models, <stage>/exports/step-N/ (+ manifest "
        "with `step`), beside the resumable checkpoints. Phi-1: phi-1-base = step 24,000 of 36,000 (Sec. 2.3).",
        factory=list,
    )
    export_every: int = setting(
        "Also export every N steps to <stage>/exports/step-N/; 0: only export_steps and the end.", 0
    )
    select_best: bool = setting(
        "export/ holds the exported step (export_steps, export_every, or the last) with the lowest loss on this "
        "stage's held-out val/ split, never a benchmark; the manifest records every candidate. Phi-1 keeps the "
        "best of the finetune's 1,000-step checkpoints (Sec. 2.3). false: export/ holds the last step.",
        False,
    )
    loss_on: Literal["all", "completion"] = setting(
        "Tokens the loss covers: all, or completion (prompt tokens of shards written with prompt_tokens are "
        "masked; documents without a prompt count whole). Applies to training and validation loss.",
        "all",
    )
    log_every: int = setting(
        "Write a metrics.jsonl record every N steps (the last step is always logged).", 1
    )
    eval_every: int = setting("Validation loss every N steps and at the end; 0: only at the end.", 50)
    eval_sequences: int = setting(
        "Validation windows per evaluation: the first N of val/ in order, the same set for every world size.",
        32,
    )
    checkpoint_every: int = setting(
        "Save a resumable checkpoint every N steps and at the end; 0: only at the end.", 50
    )
    keep_last: int = setting(
        "Checkpoints kept on disk (older ones are deleted after a new one is complete).", 2
    )
    resume: Literal["auto", "never", "require"] = setting(
        "auto: continue from the latest checkpoint of the same run (one written with other hyperparameters, "
        "model, seed or inputs is dropped and the stage starts over); never: start over (old checkpoints and "
        "metrics are removed); require: fail unless such a checkpoint exists (`--resume`).",
        "auto",
    )
    loss_spike_factor: float = setting(
        "A step loss above factor x the median of the last loss_spike_window steps is a spike; 0 disables. "
        "NaN/inf losses are always caught.",
        3.0,
    )
    loss_spike_window: int = setting(
        "Recent accepted steps the spike test compares against (it needs 5 first).", 20
    )
    loss_spike_policy: Literal["stop", "skip"] = setting(
        "On a NaN/inf loss or a spike: stop with an error, or skip the batch (no optimizer update).", "stop"
    )
    max_skipped_steps: int = setting("With policy skip: stop after this many consecutive skipped steps.", 10)

    def __post_init__(self) -> None:
        positive = (
            "max_steps",
            "global_batch_size",
            "micro_batch_size",
            "seq_len",
            "log_every",
            "keep_last",
            "eval_sequences",
            "loss_spike_window",
            "max_skipped_steps",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "export_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) is not a multiple of micro_batch_size "
                f"({self.micro_batch_size})"
            )
        outside = [n for n in self.export_steps if not 1 <= n <= self.max_steps]
        if outside:
            raise ValueError(f"export_steps {outside} lie outside [1, max_steps={self.max_steps}]")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or not 0 < self.decay_fraction <= 1:
            raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1 and 0 < decay_fraction <= 1")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.loss_spike_factor < 0 or not self.eps > 0:
            raise ValueError("weight_decay, grad_clip and loss_spike_factor must be >= 0 and eps > 0")
        if self.phases and not _phases_cover(self.phases, self.max_steps):
            raise ValueError(
                f"phases: until_step values {[p.until_step for p in self.phases]} must rise, only the last may be "
                f"null, and the last must cover max_steps ({self.max_steps})"
            )

    def exported_steps(self) -> list[int]:
        """Steps written to exports/step-N/: export_steps, multiples of export_every, and with select_best the
        last step (a selection candidate)."""
        steps = set(self.export_steps)
        if self.export_every:
            steps.update(range(self.export_every, self.max_steps + 1, self.export_every))
        if self.select_best:
            steps.add(self.max_steps)
        return sorted(steps)


def _phases_cover(phases: list[DataPhase], max_steps: int) -> bool:
    """Rising until_step bounds, >= 1, only the last open (null), and the phases reach the last step."""
    ends = [max_steps if p.until_step is None else p.until_step for p in phases]
    open_inside = any(p.until_step is None for p in phases[:-1])
    rising = all(a < b for a, b in zip(ends, ends[1:]))
    return not open_inside and ends[0] >= 1 and rising and ends[-1] >= max_steps


@dataclass
class PretrainSection(StageSection):
    """phi-1-base: next-token prediction on the packed CodeTextbook-style corpus from a random init."""


@dataclass
class FinetuneSection(StageSection):
    """phi-1: the same loop on CodeExercises-style data, from the pretrain export, with its own hyperparameters."""

    init_from: str = setting(
        "Starting weights: 'pretrain' the pretrain stage's export, 'pretrain@N' its step-N export (Phi-1 "
        "finetunes phi-1-base = pretrain@24000), '' a seeded random init, or a path to an HF model directory.",
        "pretrain",
    )
    lr: float = setting("Peak learning rate. Phi-1 finetuning: 1e-4.", 1e-4)
    warmup_steps: int = setting("Linear warmup steps. Phi-1 finetuning: 50.", 5)
    weight_decay: float = setting("AdamW weight decay. Phi-1 finetuning: 0.01.", 0.01)


@dataclass
class TrainSection:
    pretrain: PretrainSection = setting("Stage 1 (phi-1-base): pretraining.", factory=PretrainSection)
    finetune: FinetuneSection = setting(
        "Stage 2 (phi-1): finetuning from the pretrain export.", factory=FinetuneSection
    )
    stages: list[Literal["pretrain", "finetune"]] = setting(
        "Stages `python -m train all` runs, in this order.", factory=lambda: list(STAGES)
    )
    loggers: list[Literal["tensorboard", "wandb"]] = setting(
        "Extra metric sinks besides metrics.jsonl (written under <stage>/logs).", factory=list
    )
    peak_flops: float | None = setting(
        "Peak FLOP/s of one device for MFU; null: look the device up in train.metrics.PEAK_FLOPS (CPU: no MFU).",
        None,
    )

    def __post_init__(self) -> None:
        for stage in STAGES:
            init = stage_ref(self.section(stage).init_from)
            if init is None:
                continue
            source, step = init
            if source == stage:
                raise ValueError(f"{stage}.init_from: a stage cannot start from its own export")
            if step is not None and step not in self.section(source).exported_steps():
                raise ValueError(
                    f"{stage}.init_from: {source}@{step} is never exported; add {step} to {source}.export_steps"
                )

    def section(self, stage: str) -> StageSection:
        if stage not in STAGES:
            raise ValueError(f"unknown training stage '{stage}' (known: {', '.join(STAGES)})")
        return getattr(self, stage)


@dataclass
class LaunchSection:
    accelerate_config: str = setting(
        "accelerate config file (relative to the repo root), e.g. recipes/accelerate/deepspeed_zero2.yaml. Empty: "
        "a plain process when num_processes is 1, else `accelerate launch --multi_gpu` (DDP; gloo on CPU).",
        "",
    )
    num_processes: int = setting(
        "Processes over all machines (accelerate's --num_processes), usually GPUs.", 1
    )
    num_machines: int = setting(
        "Nodes; above 1 run one launcher per node (see recipes/accelerate/slurm.sbatch).", 1
    )
    expected_world_size: int | None = setting(
        "The world size the trainer insists on; null: num_processes. A mismatch (e.g. N unsynchronised "
        "single processes) is an error before any compute.",
        None,
    )
    backend: Literal["auto", "gloo", "nccl"] = setting(
        "torch.distributed backend; auto: nccl on GPUs, gloo on CPU.", "auto"
    )
    threads_per_process: int | None = setting(
        "torch intra-op threads per process (OMP_NUM_THREADS); null: the launcher's / torch's default.", None
    )
    main_process_port: int | None = setting(
        "Rendezvous port for multi-process runs; null: accelerate's default.", None
    )

    def __post_init__(self) -> None:
        for name in ("num_processes", "num_machines"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_processes % self.num_machines:
            raise ValueError(
                f"num_processes ({self.num_processes}) must be a multiple of num_machines ({self.num_machines})"
            )

    @property
    def world_size(self) -> int:
        return self.expected_world_size or self.num_processes
