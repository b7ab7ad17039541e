"""The training loop of one stage on one rank: model, optimizer, batches, guard, metrics, checkpoints, export."""

from __future__ import annotations

import functools
import hashlib
import inspect
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
from stagekit.io import StageError, atomic_path, fingerprint, is_fresh, read_manifest, write_manifest
from train import checkpoint as ckpt
from train.data import (
    IGNORE,
    Batch,
    PhasedBatches,
    TrainBatches,
    training_sequences,
    validation_batches,
    validation_sequences,
)
from train.guard import LossGuard
from train.launch import make_accelerator, mixed_precision, release
from train.metrics import MetricsLog, device_peak_flops, memory_gb, mfu
from train.optim import build_optimizer, lr_at, set_lr
from train.plan import VERSION, StagePlan

NO_LOSSES = {"loss": None, "val_loss": None}  # the latest step loss and validation loss
# modeling's fused LM head + chunked cross-entropy (never materialises the fp32 logits), where modeling has it.
FUSED_LOSS = "targets" in inspect.signature(Transformer.forward).parameters


def stage_is_fresh(plan: StagePlan) -> bool:
    """The stage's export and every step export it asks for match their manifests."""
    outputs = [plan.export_dir, *map(plan.step_export_dir, plan.section.exported_steps())]
    return all(
        is_fresh(
            out,
            stage=f"train.{plan.stage}",
            version=VERSION,
            params=plan.manifest_params(),
            inputs=plan.manifest_inputs(),
        )
        for out in outputs
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


def loss_sum(model: torch.nn.Module, batch: Batch, document_masking: bool) -> torch.Tensor:
    """Next-token cross-entropy summed over the batch's counted labels (IGNORE labels skipped). A sum, so the
    caller can divide by the step's token count over every micro-batch and rank (masks make counts uneven)."""
    positions = batch.position_ids if document_masking else None
    if FUSED_LOSS:
        return model(batch.input_ids, positions, targets=batch.labels, loss_reduction="sum")
    logits = model(batch.input_ids, position_ids=positions)
    return F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE, reduction="sum")


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
        completion_only = section.loss_on == "completion"
        sequences = training_sequences(
            plan.train_dir,
            section.seq_len,
            seed=plan.recipe.seed,
            shuffle=section.shuffle,
            what=f"{plan.stage} training",
            completion_only=completion_only,
        )
        rank, world = acc.process_index, acc.num_processes
        self.batches = TrainBatches(
            sequences,
            micro_batch=section.micro_batch_size,
            accumulation=plan.accumulation,
            world=world,
            rank=rank,
        )
        if plan.phases:  # data phases (issue 15): one batch source per range of steps
            self.batches = PhasedBatches.like(self.batches, plan.phases, f"{plan.stage} training")
        val = validation_sequences(
            plan.val_dir, section.seq_len, f"{plan.stage} validation", completion_only=completion_only
        )
        self.val_batches = [
            b.to(acc.device)
            for b in validation_batches(
                val, section.eval_sequences, micro_batch=section.micro_batch_size, world=world, rank=rank
            )
        ]
        self.guard = LossGuard.from_section(section)
        self.selection: dict[
            str, float
        ] = {}  # select_best: held-out loss of each exported step (keys: str(step))
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
            return self._start_over()
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
        self.selection = dict(state["selection"])
        if self.main:
            print(
                f"[train] {plan.stage}: resumed from {path} (step {state['step']})",
                file=sys.stderr,
                flush=True,
            )
        return state["step"], state["tokens"], state["last"]

    def _start_over(self) -> tuple[int, int, dict]:
        """Drop this stage's checkpoints and step exports (they belong to another run); metrics.jsonl is rewritten
        from step 1."""
        if self.main:
            shutil.rmtree(self.plan.checkpoints_dir, ignore_errors=True)
            shutil.rmtree(self.plan.exports_dir, ignore_errors=True)
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
        exported = set(section.exported_steps())
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
            if final or step in exported or (section.eval_every and step % section.eval_every == 0):
                record["val_loss"] = last["val_loss"] = self._validate()
            last["loss"] = loss
            if self.main and (final or step % section.log_every == 0 or "val_loss" in record):
                log.write(record)
            if loggers:
                acc.log({k: v for k, v in record.items() if v is not None}, step=step)
            bar.update(plan.tokens_per_step)
            bar.set_postfix(step=step, loss=f"{loss:.4f}", skipped=self.guard.skipped)
            if step in exported:  # before the checkpoint: a resumed run never lacks an export it has passed
                self._export_step(step, tokens, last, started)
            if final or (section.checkpoint_every and step % section.checkpoint_every == 0):
                saved_at = self._save(step, tokens, last)
        bar.close()
        if log is not None:
            log.close()
        return self._export(tokens, last, started, saved_at)

    def _step(self, step: int, lr: float) -> tuple[float, float | None]:
        """One optimizer step over `accumulation` micro-batches: (loss over all ranks' counted tokens, grad norm or
        None when the guard skipped the update).

        Each micro-batch backpropagates its loss sum over the step's token count on all ranks, times
        world x accumulation (accelerate divides by accumulation, data parallelism averages over ranks), so the
        gradient is that of sum / global count even when completion masks make the counts uneven."""
        acc, section, plan = self.accelerator, self.section, self.plan
        set_lr(self.optimizer, lr)
        batches = [self.batches.micro_batch(step, k).to(acc.device) for k in range(plan.accumulation)]
        count = acc.reduce(
            torch.tensor(float(sum(b.num_targets for b in batches)), dtype=torch.float64, device=acc.device),
            "sum",
        ).item()
        if count == 0:
            raise StageError(
                f"{plan.stage} step {step + 1}: no token of the step's batch counts in the loss (every label is a "
                f"prompt token; train.{plan.stage}.loss_on=completion needs completions in {plan.train_dir})"
            )
        per_share = count / (acc.num_processes * plan.accumulation)
        loss_total = torch.zeros((), dtype=torch.float64, device=acc.device)
        grad_norm, keep = None, True
        for k, batch in enumerate(batches):
            with acc.accumulate(self.model):
                summed = loss_sum(self.model, batch, section.document_masking)
                loss_total += summed.detach().double()
                last = k == plan.accumulation - 1
                if last:  # judge the step before the update (DeepSpeed updates inside backward)
                    step_loss = acc.reduce(loss_total, "sum").item() / count
                    keep = self.guard.accept(step + 1, step_loss, plan.stage)
                if keep:
                    acc.backward(summed / per_share)
                if last:
                    if keep:
                        norm = acc.clip_grad_norm_(self.model.parameters(), section.grad_clip or float("inf"))
                        grad_norm = None if norm is None else float(norm)
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
        return step_loss, grad_norm

    @torch.no_grad()
    def _validate(self) -> float:
        """Loss over the counted tokens of the fixed validation windows (summed over ranks, then divided)."""
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.accelerator.device)
        for batch in self.val_batches:
            total[0] += loss_sum(self.model, batch, self.section.document_masking).double()
            total[1] += batch.num_targets
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
            "selection": self.selection,
            "world_size": self.accelerator.num_processes,
            "param_sha256_per_rank": self._replica_digests(step),
            "inputs": self.inputs,
        }
        ckpt.save(
            self.accelerator, self.plan.checkpoints_dir, step, state, self.plan.recipe, self.section.keep_last
        )
        return step

    # ---- export -------------------------------------------------------------------------------------------

    def _write_model(self, directory, started: float, counts: dict, extra: dict) -> dict:
        """The current weights as an HF model directory + tokenizer, and its manifest (collective); returns the
        manifest on every rank."""
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
            model.save_pretrained(directory, tokenizer=AutoTokenizer.from_pretrained(plan.tokenizer_dir))
            manifest = self._manifest(directory, started, counts, extra)
        acc.wait_for_everyone()
        return manifest if manifest is not None else read_manifest(directory)

    def _manifest(self, directory, started: float, counts: dict, extra: dict) -> dict:
        plan = self.plan
        return write_manifest(
            directory,
            stage=f"train.{plan.stage}",
            version=VERSION,
            params=plan.manifest_params(),
            inputs=plan.manifest_inputs(),
            counts=counts,
            drops={"skipped_steps": self.guard.skipped},
            started=started,
            extra={
                "num_params": plan.model_config.num_params(),
                "world_size": self.accelerator.num_processes,
                "metrics": str(plan.metrics_path),
                **extra,
            },
        )

    def _counts(self, step: int, tokens: int) -> dict:
        return {"steps": step, "tokens": tokens, "sequences": step * self.section.global_batch_size}

    def _export_step(self, step: int, tokens: int, last: dict, started: float) -> None:
        """exports/step-N: this step's weights as a loadable model; `step` and its held-out loss in the manifest."""
        self._write_model(
            self.plan.step_export_dir(step),
            started,
            self._counts(step, tokens),
            {"step": step, "loss": last["loss"], "val_loss": last["val_loss"]},
        )
        if self.section.select_best:
            self.selection[str(step)] = last["val_loss"]

    def _export(self, tokens: int, last: dict, started: float, saved_at: int | None) -> dict:
        """export/: the final weights, or with select_best a copy of the exported step with the lowest held-out
        loss (earliest on a tie); its manifest's `step` says which step it holds."""
        plan, section = self.plan, self.section
        extra = {
            "final_loss": last["loss"],
            "final_val_loss": last["val_loss"],
            "checkpoint": str(plan.checkpoints_dir / f"step-{saved_at}"),
        }
        if not section.select_best:
            return self._write_model(
                plan.export_dir,
                started,
                self._counts(section.max_steps, tokens),
                {"step": section.max_steps, **extra},
            )
        best = min(self.selection, key=lambda k: (self.selection[k], int(k)))
        source = plan.step_export_dir(int(best))
        manifest = None
        if self.main:
            with atomic_path(plan.export_dir) as tmp:
                shutil.copytree(source, tmp)
            chosen = read_manifest(source)
            extra |= {
                "step": int(best),
                "selection": {
                    "metric": f"loss on the held-out split {plan.val_dir} (loss_on={section.loss_on})",
                    "candidates": self.selection,
                    "selected_step": int(best),
                    "selected_val_loss": self.selection[best],
                    "source": str(source),
                },
            }
            manifest = self._manifest(plan.export_dir, started, chosen["counts"], extra)
        self.accelerator.wait_for_everyone()
        return manifest if manifest is not None else read_manifest(plan.export_dir)


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
