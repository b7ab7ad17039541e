"""A training stage resolved against the recipe, the data on disk and the world size, checked before compute.

Everything that can be wrong with a stage (batch sizes that do not divide, missing or too-small shards,
a missing tokenizer or init checkpoint, a sequence longer than the model's context) is caught here, so
the run fails with one clear line before a model is built or a process group is started.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from modeling import ModelConfig
from recipes import Recipe, to_dict
from recipes.training import StageSection, stage_export_dir, stage_ref
from stagekit.io import StageError
from stagekit.shards import INDEX
from train.data import training_sequences, validation_sequences

VERSION = "1"
# Stage keys that only say how a run is driven and recorded, not what it computes: a checkpoint may be
# resumed, and an export stays fresh, when only these change.
BOOKKEEPING_KEYS = frozenset(
    {"resume", "log_every", "eval_every", "checkpoint_every", "keep_last", "max_skipped_steps"}
)


@dataclass
class StagePlan:
    recipe: Recipe
    stage: str
    section: StageSection
    world_size: int
    accumulation: int  # micro-steps per optimizer step on each rank
    model_config: ModelConfig
    train_dir: Path
    val_dir: Path
    tokenizer_dir: Path
    init_dir: Path | None
    eot_id: int | None
    # data phases (issue 15): (end step, train dir) per train.<stage>.phases entry
    phases: list[tuple[int, Path]] = dataclasses.field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return self.recipe.run_path / self.stage

    @property
    def checkpoints_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def export_dir(self) -> Path:
        return self.out_dir / "export"

    @property
    def exports_dir(self) -> Path:
        return self.out_dir / "exports"

    def step_export_dir(self, step: int) -> Path:
        return stage_export_dir(self.recipe.run_path, f"{self.stage}@{step}")

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    @property
    def tokens_per_step(self) -> int:
        return self.section.global_batch_size * self.section.seq_len

    def manifest_params(self) -> dict:
        """What the exported model depends on (the launch layout does not change the math, so it is left out)."""
        return {
            "stage": {k: v for k, v in to_dict(self.section).items() if k not in BOOKKEEPING_KEYS},
            "model": dataclasses.asdict(self.model_config),
            "seed": self.recipe.seed,
            "init_from": str(self.init_dir) if self.init_dir else None,
        }

    def manifest_inputs(self) -> list[Path]:
        """Shard indexes (they carry every shard's sha256, so big shard sets are not re-hashed), the tokenizer
        and the init checkpoint's manifest (or the checkpoint itself when it has none)."""
        inputs = [self.train_dir / INDEX, self.val_dir / INDEX, self.tokenizer_dir]
        inputs += [directory / INDEX for _, directory in self.phases]  # data phases (issue 15)
        if self.init_dir is not None:
            manifest = self.init_dir.with_name(self.init_dir.name + ".manifest.json")
            inputs.append(manifest if manifest.is_file() else self.init_dir)
        return inputs


def stage_key(stage: str, key: str) -> str:
    return f"train.{stage}.{key}"


def plan_stage(
    recipe: Recipe, stage: str, *, world_size: int | None = None, need_data: bool = True
) -> StagePlan:
    """Resolve and validate `stage`. need_data=False (dry runs) tolerates missing shards/checkpoints and then
    takes the vocabulary from the model preset."""
    section = recipe.train.section(stage)
    world = world_size or recipe.launch.world_size
    per_step = section.micro_batch_size * world
    if section.global_batch_size % per_step:
        raise StageError(
            f"{stage_key(stage, 'global_batch_size')} ({section.global_batch_size}) is not divisible by "
            f"micro_batch_size ({section.micro_batch_size}) x world size ({world}) = {per_step}"
        )
    data = recipe.run_path / "data"
    shards = Path(section.shards) if section.shards else data / "shards" / stage
    train_dir, val_dir, tokenizer_dir = shards / "train", shards / "val", data / "tokenizer"

    init_dir = _init_dir(recipe, stage, section)
    vocab_size = eot_id = None
    if need_data or (train_dir / INDEX).is_file():
        train = training_sequences(
            train_dir, section.seq_len, seed=0, shuffle=False, what=f"{stage} training"
        )
        validation_sequences(val_dir, section.seq_len, f"{stage} validation")
        vocab_size, eot_id = train.reader.vocab_size, train.reader.eot_id
    if need_data and not any(
        (tokenizer_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        raise StageError(
            f"{tokenizer_dir}: tokenizer not found (the export ships it for eval); run the data stages first"
        )

    if init_dir is not None and (need_data or (init_dir / "config.json").is_file()):
        if not (init_dir / "config.json").is_file():
            raise StageError(
                f"{init_dir}: no checkpoint to initialise {stage} from ({stage_key(stage, 'init_from')}="
                f"'{section.init_from}'); train the stage it names first"
            )
        config = ModelConfig.from_hf_config(json.loads((init_dir / "config.json").read_text()))
        if vocab_size is not None and config.vocab_size < vocab_size:
            raise StageError(
                f"{init_dir}: vocab_size {config.vocab_size} is smaller than the shards' {vocab_size}"
            )
    else:
        extra = {}
        if vocab_size is not None and recipe.model.overrides.get("vocab_size") is None:
            extra["vocab_size"] = vocab_size
        if eot_id is not None and recipe.model.overrides.get("eos_token_id") is None:
            extra["eos_token_id"] = eot_id
        try:
            config = recipe.model.config(**extra)
        except ValueError as e:
            raise StageError(f"model: {e}") from e
        if vocab_size is not None and config.vocab_size < vocab_size:
            raise StageError(
                f"model.overrides.vocab_size ({config.vocab_size}) is smaller than the shards' {vocab_size}"
            )
    if section.seq_len > config.max_seq_len:
        raise StageError(
            f"{stage_key(stage, 'seq_len')} ({section.seq_len}) exceeds the model's max_seq_len ({config.max_seq_len})"
        )
    return StagePlan(
        recipe=recipe,
        stage=stage,
        section=section,
        world_size=world,
        accumulation=section.global_batch_size // per_step,
        model_config=config,
        train_dir=train_dir,
        val_dir=val_dir,
        tokenizer_dir=tokenizer_dir,
        init_dir=init_dir,
        eot_id=eot_id,
        phases=_phases(stage, section, (vocab_size, eot_id), need_data),
    )


# --- data phases (issue 15) ---
def _phases(stage: str, section: StageSection, vocab_eot: tuple, need_data: bool) -> list[tuple[int, Path]]:
    """(end step, train dir) per `phases` entry, each checked to hold a sequence and to share the tokenizer."""
    out = []
    for i, phase in enumerate(section.phases):
        train_dir = Path(phase.shards) / "train"
        if need_data or (train_dir / INDEX).is_file():
            what = f"{stage_key(stage, 'phases')}[{i}]"
            reader = training_sequences(train_dir, section.seq_len, seed=0, shuffle=False, what=what).reader
            if vocab_eot[0] is not None and (reader.vocab_size, reader.eot_id) != vocab_eot:
                raise StageError(
                    f"{train_dir}: {what} was tokenized differently from {section.shards or stage}"
                )
        out.append((phase.until_step or section.max_steps, train_dir))
    return out


# --- end data phases ---


def _init_dir(recipe: Recipe, stage: str, section: StageSection) -> Path | None:
    if not section.init_from:
        return None
    if stage_ref(section.init_from) is not None:  # a stage's export or one of its step exports
        return stage_export_dir(recipe.run_path, section.init_from)
    return Path(section.init_from)
