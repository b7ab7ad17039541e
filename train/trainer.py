"""The training loop of one stage on one rank: model, optimizer, batches, guard, metrics, checkpoints, export."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, set_seed
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from modeling import Transformer
from stagekit.io import StageError, fingerprint, is_fresh, write_manifest
from train import checkpoint as ckpt
from train.data import Batch, TrainBatches, training_sequences, validation_batches, validation_sequences
from train.guard import LossGuard
from train.launch import make_accelerator, mixed_precision, release
from train.metrics import MetricsLog, device_peak_flops, memory_gb, mfu
from train.optim import build_optimizer, lr_at, set_lr
from train.plan import VERSION, StagePlan

NO_LOSSES = {"loss": None, "val_loss": None}  # the latest step loss and validation loss


def stage_is_fresh(plan: StagePlan) -> bool:
    return is_fresh(
        plan.export_dir,
        stage=f"train.{plan.stage}",
        version=VERSION,
        params=plan.manifest_params(),
        inputs=plan.manifest_inputs(),
    )


def run_stage(plan: StagePlan, *, force: bool = False) -> dict | None:
    """Train `plan` in this process (the only one, or one rank of a launched job). Returns the export's manifest
    (on every rank), or None when the export is already fresh and force is off."""
    if not force and stage_is_fresh(plan):
        return None
    accelerator = make_accelerator(plan)
    try:
        return Trainer(plan, accelerator, force=force).run()
    finally:
        release(accelerator)


def build_model(plan: StagePlan) -> Transformer:
    if plan.init_dir is not None:
        return Transformer.from_pretrained(plan.init_dir, dtype=torch.float32)
    return Transformer(plan.model_config)  # initialised from the seeded global RNG: identical on every rank


def checkpoint_blocks(model: Transformer) -> None:
    """Recompute each block in backward. The forward is swapped per instance so state-dict keys do not change."""
    for block in model.layers:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def lm_loss(
    model: torch.nn.Module, batch: Batch, document_masking: bool, reduction: str = "mean"
) -> torch.Tensor:
    logits = model(batch.input_ids, position_ids=batch.position_ids if document_masking else None)
    return F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), reduction=reduction)


class Trainer:
    def __init__(self, plan: StagePlan, accelerator: Accelerator, *, force: bool = False):
        self.plan, self.accelerator, self.section = plan, accelerator, plan.section
        self.main = accelerator.is_main_process
        self.deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        self.force = force

    # ---- setup --------------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        plan, section, acc = self.plan, self.section, self.accelerator
        set_seed(plan.recipe.seed)
        model = build_model(plan)
        if section.activation_checkpointing:
            checkpoint_blocks(model)
        if (
            section.compile
        ):  # in place (nn.Module.compile): parameter names, checkpoints and export are unchanged
            model.compile()
        optimizer = build_optimizer(model, section, acc.device)
        if self.deepspeed:
            config = acc.state.deepspeed_plugin.deepspeed_config
            config["train_micro_batch_size_per_gpu"] = section.micro_batch_size
            config["gradient_accumulation_steps"] = plan.accumulation
            config["train_batch_size"] = section.global_batch_size
            config["gradient_clipping"] = section.grad_clip
        self.model, self.optimizer = acc.prepare(model, optimizer)
        sequences = training_sequences(
            plan.train_dir,
            section.seq_len,
            seed=plan.recipe.seed,
            shuffle=section.shuffle,
            what=f"{plan.stage} training",
        )
        rank, world = acc.process_index, acc.num_processes
        self.batches = TrainBatches(
            sequences,
            micro_batch=section.micro_batch_size,
            accumulation=plan.accumulation,
            world=world,
            rank=rank,
        )
        val = validation_sequences(plan.val_dir, section.seq_len, f"{plan.stage} validation")
        self.val_batches = [
            b.to(acc.device)
            for b in validation_batches(
                val, section.eval_sequences, micro_batch=section.micro_batch_size, world=world, rank=rank
            )
        ]
        self.guard = LossGuard.from_section(section)
        self.peak = plan.recipe.train.peak_flops or device_peak_flops(
            acc.device, _precision_name(section.precision)
        )
        self.flops_per_token = plan.model_config.flops_per_token(section.seq_len)
        self.inputs = {str(p): fingerprint(p) for p in plan.manifest_inputs()}

    def _resume(self) -> tuple[int, int, dict]:
        """(step, tokens, last losses) to start from, after restoring a checkpoint when the recipe asks for one."""
        plan, acc = self.plan, self.accelerator
        mode = "never" if self.force else self.section.resume
        if mode == "never":
            return self._start_over()
        path = ckpt.latest(plan.checkpoints_dir)
        if path is None:
            if mode == "require":
                raise StageError(f"{plan.checkpoints_dir}: no checkpoint to resume {plan.stage} from")
            return 0, 0, dict(NO_LOSSES)
        saved = ckpt.read_state(path)
        changed = ckpt.differences(
            path, plan.recipe, plan.stage, saved, self.inputs, self.batches.position(saved["step"])
        )
        if changed:
            why = f"{path} belongs to another run (changed: {'; '.join(changed)})"
            if mode == "require":
                raise StageError(f"{why}; start over with train.{plan.stage}.resume=never or --force")
            if self.main:
                print(f"[train] {plan.stage}: {why}; starting over", file=sys.stderr, flush=True)
            return self._start_over()
        state = ckpt.load(acc, path)
        self.guard.load_state_dict(state["guard"])
        if self.main:
            print(
                f"[train] {plan.stage}: resumed from {path} (step {state['step']})",
                file=sys.stderr,
                flush=True,
            )
        return state["step"], state["tokens"], state["last"]

    def _start_over(self) -> tuple[int, int, dict]:
        """Drop this stage's checkpoints (they belong to another run); metrics.jsonl is rewritten from step 1."""
        if self.main:
            shutil.rmtree(self.plan.checkpoints_dir, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return 0, 0, dict(NO_LOSSES)

    # ---- loop ---------------------------------------------------------------------------------------------

    def run(self) -> dict:
        started = time.time()
        plan, section, acc = self.plan, self.section, self.accelerator
        self._prepare()
        step, tokens, last = self._resume()
        resumed = step > 0
        loggers = bool(plan.recipe.train.loggers)
        if loggers:
            acc.init_trackers(f"{plan.recipe.name}-{plan.stage}", config=_flat(plan.manifest_params()))
        log = MetricsLog(plan.metrics_path, resume_step=step if resumed else None) if self.main else None
        bar = tqdm(
            total=section.max_steps * plan.tokens_per_step,
            initial=step * plan.tokens_per_step,
            unit="tok",
            unit_scale=True,
            desc=plan.stage,
            disable=not self.main,
            dynamic_ncols=True,
        )
        saved_at = step if resumed else None
        self.model.train()
        while step < section.max_steps:
            t0 = time.perf_counter()
            lr = lr_at(section, step)
            loss, grad_norm = self._step(step, lr)
            step += 1
            tokens += plan.tokens_per_step
            elapsed = time.perf_counter() - t0
            record = {
                "step": step,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": tokens,
                "tokens_per_s": plan.tokens_per_step / elapsed,
                "mfu": mfu(
                    plan.tokens_per_step / elapsed, self.flops_per_token, self.peak, acc.num_processes
                ),
                "memory_gb": memory_gb(acc.device),
                "skipped": self.guard.skipped,
                "elapsed_s": time.time() - started,
            }
            final = step == section.max_steps
            if final or (section.eval_every and step % section.eval_every == 0):
                record["val_loss"] = last["val_loss"] = self._validate()
            last["loss"] = loss
            if self.main and (final or step % section.log_every == 0 or "val_loss" in record):
                log.write(record)
            if loggers:
                acc.log({k: v for k, v in record.items() if v is not None}, step=step)
            bar.update(plan.tokens_per_step)
            bar.set_postfix(step=step, loss=f"{loss:.4f}", skipped=self.guard.skipped)
            if final or (section.checkpoint_every and step % section.checkpoint_every == 0):
                saved_at = self._save(step, tokens, last)
        bar.close()
        if log is not None:
            log.close()
        return self._export(tokens, last, started, saved_at)

    def _step(self, step: int, lr: float) -> tuple[float, float | None]:
        """One optimizer step over `accumulation` micro-batches: (mean loss over all ranks, grad norm or None
        when the guard skipped the update)."""
        acc, section, plan = self.accelerator, self.section, self.plan
        set_lr(self.optimizer, lr)
        loss_sum = torch.zeros((), device=acc.device)
        grad_norm, keep = None, True
        for k in range(plan.accumulation):
            batch = self.batches.micro_batch(step, k).to(acc.device)
            with acc.accumulate(self.model):
                loss = lm_loss(self.model, batch, section.document_masking)
                loss_sum += loss.detach()
                last = k == plan.accumulation - 1
                if last:  # judge the step before the update (DeepSpeed updates inside backward)
                    step_loss = acc.reduce(loss_sum, "mean").item() / plan.accumulation
                    keep = self.guard.accept(step + 1, step_loss, plan.stage)
                if keep:
                    acc.backward(loss)
                if last:
                    if keep:
                        norm = acc.clip_grad_norm_(self.model.parameters(), section.grad_clip or float("inf"))
                        grad_norm = None if norm is None else float(norm)
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
        return step_loss, grad_norm

    @torch.no_grad()
    def _validate(self) -> float:
        """Mean next-token loss over the fixed validation windows (summed over ranks, then divided)."""
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.accelerator.device)
        for batch in self.val_batches:
            total[0] += lm_loss(self.model, batch, self.section.document_masking, reduction="sum").double()
            total[1] += batch.labels.numel()
        total = self.accelerator.reduce(total, "sum")
        self.model.train()
        return float(total[0] / total[1])

    def _replica_digests(self, step: int) -> list[str] | None:
        """sha256 of the parameters on every rank (collective). Data-parallel replicas must be bitwise equal;
        a difference means the ranks are not synchronised. None when parameters are sharded (ZeRO-3, FSDP)."""
        acc = self.accelerator
        if acc.distributed_type == DistributedType.FSDP or (
            self.deepspeed and acc.state.deepspeed_plugin.zero_stage == 3
        ):
            return None
        digest = hashlib.sha256()
        for param in acc.unwrap_model(self.model).parameters():
            digest.update(param.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes())
        digests = gather_object([digest.hexdigest()])
        if len(set(digests)) > 1:
            raise StageError(f"{self.plan.stage} step {step}: model replicas differ across ranks: {digests}")
        return digests

    def _save(self, step: int, tokens: int, last: dict) -> int:
        state = {
            "step": step,
            "tokens": tokens,
            "last": last,
            "data": self.batches.position(step),
            "guard": self.guard.state_dict(),
            "world_size": self.accelerator.num_processes,
            "param_sha256_per_rank": self._replica_digests(step),
            "inputs": self.inputs,
        }
        ckpt.save(
            self.accelerator, self.plan.checkpoints_dir, step, state, self.plan.recipe, self.section.keep_last
        )
        return step

    # ---- export -------------------------------------------------------------------------------------------

    def _export(self, tokens: int, last: dict, started: float, saved_at: int | None) -> dict:
        """The final weights as an HF Llama directory + tokenizer, and its manifest (collective)."""
        plan, acc = self.plan, self.accelerator
        state = acc.get_state_dict(self.model)  # gathers ZeRO-3 / FSDP shards; every rank must call it
        manifest = None
        if self.main:
            from transformers import AutoTokenizer

            with torch.device("meta"):
                model = Transformer(plan.model_config)
            model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
            if plan.model_config.tie_word_embeddings:
                model.lm_head.weight = model.embed.weight
            model.save_pretrained(
                plan.export_dir, tokenizer=AutoTokenizer.from_pretrained(plan.tokenizer_dir)
            )
            manifest = write_manifest(
                plan.export_dir,
                stage=f"train.{plan.stage}",
                version=VERSION,
                params=plan.manifest_params(),
                inputs=plan.manifest_inputs(),
                counts={
                    "steps": self.section.max_steps,
                    "tokens": tokens,
                    "sequences": self.section.max_steps * self.section.global_batch_size,
                },
                drops={"skipped_steps": self.guard.skipped},
                started=started,
                extra={
                    "final_loss": last["loss"],
                    "final_val_loss": last["val_loss"],
                    "num_params": plan.model_config.num_params(),
                    "world_size": acc.num_processes,
                    "checkpoint": str(plan.checkpoints_dir / f"step-{saved_at}"),
                    "metrics": str(plan.metrics_path),
                },
            )
        acc.wait_for_everyone()
        if manifest is None:
            manifest = json.loads(plan.export_dir.with_name("export.manifest.json").read_text())
        return manifest


def _precision_name(precision: str) -> str:
    """The PEAK_FLOPS column of a recipe precision (DeepSpeed runs report 'no' to accelerate, so ask the recipe)."""
    resolved = mixed_precision(precision)
    return {"no": "fp32"}.get(resolved, resolved)


def _flat(params: dict, prefix: str = "") -> dict:
    """Nested params as flat scalar key/values (tracker hyperparameter tables take no nesting or lists)."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, int | float | str | bool) else str(value)
    return out
