"""The training loop every task shares: seeds, AdamW, resumable checkpoints, progress with an ETA, model
selection on the inner validation split, and data-parallel training over torchrun ranks.

Reproducibility: the model is built after `seed_everything(seed)`, and every random draw of step s (which
cases, which crops, which augmentations, LoRA dropout) comes from generators seeded with (seed, s, rank)
(`step_seed`). A run resumed from the checkpoint of step s therefore continues exactly as the uninterrupted
run would, and the checkpoint needs no RNG state: on CPU the weights come out bit-identical; on CUDA,
cuDNN's non-deterministic kernels make them close, not equal.

Distributed (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK): `Ranks.start` joins the process group (NCCL on
CUDA, gloo on CPU), every rank draws its own cases for each step, gradients are averaged over the ranks
before each optimiser step, and rank 0 alone writes files while the others wait at a barrier.

Work folder `<out>.work/` (beside the pack, kept after training): `checkpoint.pt` (weights, optimiser,
scheduler, step, best score; read with `torch.load(weights_only=True)`), `best.safetensors` (the selected
weights), `log.jsonl` (losses, validation, each rank's weight digest), `split.json`, `options.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from mafm3.engine.device import resolve_device
from mafm3.errors import MAFM3Error
from mafm3.files import atomic_write
from mafm3.progress import ProgressCallback, silent_progress

CHECKPOINT_FORMAT = "mafm3-train-checkpoint-v1"
PROCESS_GROUP_TIMEOUT = timedelta(
    hours=1
)  # first-run preprocessing of a large cohort happens between barriers


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(*keys: int) -> int:
    """A 32-bit seed from integer keys, e.g. (seed, step, rank); different keys give independent streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def steps_per_epoch(n_cases: int, batch_size: int, world_size: int) -> int:
    """Iterations for every rank to see its share of the cases once (shares padded as DistributedSampler)."""
    return math.ceil(math.ceil(n_cases / world_size) / batch_size)


def batch_indices(
    n_cases: int, batch_size: int, step: int, rank: int, world_size: int, seed: int
) -> list[int]:
    """The case indices rank `rank` trains on at iteration `step` (from 1): a pure function of its arguments.

    Each epoch is a fresh seeded shuffle, sharded over the ranks by torch's `DistributedSampler` (the
    shards are padded to equal length by repeating cases), and cut into batches of `batch_size`.
    """
    from torch.utils.data import DistributedSampler

    epoch, position = divmod(step - 1, steps_per_epoch(n_cases, batch_size, world_size))
    sampler = DistributedSampler(range(n_cases), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)[position * batch_size : (position + 1) * batch_size]


@dataclass
class Ranks:
    """This process's place among the training processes (one process: rank 0 of 1, no process group)."""

    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def start(cls, device: str = "auto") -> Ranks:
        """Join torchrun's process group if WORLD_SIZE > 1: NCCL on CUDA (a GPU per local rank), else gloo."""
        resolved = resolve_device(device)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls(0, 1, resolved)
        import torch.distributed as dist

        if resolved.type == "cuda":
            resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(resolved)
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), resolved)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def shard(self, items: list) -> list[tuple[int, object]]:
        """(index, item) pairs this rank handles: every world_size-th item, starting at its rank."""
        return [(i, item) for i, item in enumerate(items) if i % self.world_size == self.rank]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over the ranks (a copy; the input is left as is)."""
        total = tensor.detach().to(self.device, copy=True)
        if self.world_size > 1:
            torch.distributed.all_reduce(total)
        return total

    def broadcast(self, parameters: list[nn.Parameter]) -> None:
        """Copy rank 0's values into every rank's parameters, so all ranks start from the same weights."""
        if self.world_size > 1:
            with torch.no_grad():
                for parameter in parameters:
                    torch.distributed.broadcast(parameter.data, src=0)

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Replace each gradient with its mean over the ranks, in one all-reduce.

        Done by hand rather than with DistributedDataParallel: a skill's LoRA tensors live inside the shared
        backbone, which is deliberately not a submodule of the skill, so DDP would have to wrap a helper
        module that re-registers them; some preset adapters (temporal-stage LoRA of the prognosis skill) never
        receive a gradient, which DDP only tolerates with `find_unused_parameters` (an extra graph walk per
        step). One coalesced all-reduce of the few million trainable values after the backward pass costs
        milliseconds against the backbone's forward and backward; what it gives up is DDP's overlap of
        communication with the backward pass. Parameters without a gradient keep none, exactly as in a
        single process (AdamW then skips them, weight decay included); every rank runs the same graph, so
        the same parameters have gradients everywhere.
        """
        if self.world_size == 1:
            return
        with_grad = [p for p in parameters if p.grad is not None]
        if not with_grad:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in with_grad])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for parameter in with_grad:
            parameter.grad = flat[offset : offset + parameter.numel()].view_as(parameter)
            offset += parameter.numel()

    def digests(self, tensors: dict[str, torch.Tensor]) -> list[str]:
        """The sha256 of `tensors` (`weights_sha256`) on every rank, in rank order."""
        digest = weights_sha256(tensors)
        if self.world_size == 1:
            return [digest]
        mine = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8, device=self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        torch.distributed.all_gather(gathered, mine)
        return [bytes(t.cpu().tolist()).hex() for t in gathered]


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes and bytes of `tensors` in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class Schedule:
    """Optimisation hyper-parameters. One iteration is one optimiser step over every rank's batch."""

    iterations: int
    lr: float
    weight_decay: float
    lr_step: int = 0  # iterations between learning-rate decays (StepLR); 0 keeps it constant
    lr_gamma: float = 1.0  # decay factor
    lr_poly: bool = False  # instead: lr * (1 - step / iterations)^0.9, nnU-Net's decay to 0 at the end
    val_every: int = 0  # iterations between validations (and checkpoints); 0: only at the end
    seed: int = 42

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise MAFM3Error(f"Training needs at least one iteration, got {self.iterations}.")
        if not self.lr > 0 or self.weight_decay < 0:
            raise MAFM3Error("The learning rate must be positive and the weight decay non-negative.")


@dataclass
class Validation:
    """One validation: `score` is what selection maximises (NaN never wins); `values` are logged."""

    metric: str
    score: float
    values: dict = field(default_factory=dict)


@dataclass
class Network:
    """A trainable network as a task sees it: the module to call, what trains, and what gets saved."""

    module: nn.Module
    parameters: list[nn.Parameter]
    weights: Callable[[], dict[str, torch.Tensor]]
    load_weights: Callable[[dict[str, torch.Tensor]], None]

    @classmethod
    def of_skill(cls, skill) -> Network:
        """A `SkillModel` with its adapter activated for training: its own modules and its LoRA A/B."""
        skill.activate(trainable=True)
        return cls(skill, skill.trainable_parameters(), skill.skill_state_dict, skill.load_skill_state_dict)

    @classmethod
    def of_module(cls, module: nn.Module) -> Network:
        """A stand-alone module (the UNETR baseline): all of its parameters train."""
        return cls(module, list(module.parameters()), module.state_dict, module.load_state_dict)


class NetworkTask:
    """The parts of a `Task` that only delegate to its `Network`."""

    network: Network

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.network.parameters

    def set_training(self, mode: bool) -> None:
        self.network.module.train(mode)

    def weights(self) -> dict[str, torch.Tensor]:
        return self.network.weights()

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        self.network.load_weights(tensors)


class Task(Protocol):
    """What the loop needs from a task (segmentation, prognosis, baseline)."""

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def set_training(self, mode: bool) -> None: ...

    def loss(self, step: int) -> torch.Tensor:
        """The mean loss of this rank's batch for `step` (scalar, with a graph)."""

    def validate(self) -> Validation | None:
        """The inner-validation result, identical on every rank; None when there are no validation cases."""

    def weights(self) -> dict[str, torch.Tensor]: ...

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None: ...


@dataclass
class FitResult:
    """What a `fit` call did: the last step, whether it finished, the selection, this call's losses."""

    step: int
    finished: bool
    best_step: int
    best: Validation | None
    losses: list[float]
    selection: str


class WorkFolder:
    """`<out>.work/`: the checkpoint, the selected weights, the log and the split of one training run."""

    def __init__(self, out: Path) -> None:
        self.root = Path(out).with_name(Path(out).name + ".work")
        self.checkpoint = self.root / "checkpoint.pt"
        self.best = self.root / "best.safetensors"
        self.log = self.root / "log.jsonl"
        self.split = self.root / "split.json"
        self.options = self.root / "options.json"

    def append_log(self, record: dict) -> None:
        with open(self.log, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, allow_nan=True) + "\n")


def fit(
    task: Task,
    schedule: Schedule,
    work: WorkFolder,
    ranks: Ranks,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: ProgressCallback = silent_progress,
) -> FitResult:
    """Train `task` for `schedule.iterations` steps with AdamW; select the best validation score.

    resume: continue from `work.checkpoint` (weights, optimiser, scheduler, step, best); every rank reads
    the work folder, so multi-node runs need it on a shared file system.
    stop_after: take at most this many steps in this call, then checkpoint and return (finished False).
    Validation and a checkpoint happen every `val_every` steps and at the last one. Without validation
    cases the last step is selected. On a finished return every rank holds the selected weights.
    """
    from safetensors.torch import load_file, save_file

    parameters = task.trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=schedule.lr, weight_decay=schedule.weight_decay)
    schedulers = torch.optim.lr_scheduler
    if schedule.lr_poly:  # a closed form of the step, so a resumed run with more iterations stretches it

        def poly_decay(step: int) -> float:
            return (1 - min(step, schedule.iterations) / schedule.iterations) ** 0.9

        scheduler = schedulers.LambdaLR(optimizer, poly_decay)
    else:
        gamma = schedule.lr_gamma if schedule.lr_step else 1.0
        scheduler = schedulers.StepLR(optimizer, step_size=max(schedule.lr_step, 1), gamma=gamma)
    start, best_step, best, best_weights = 0, 0, None, None
    if resume:
        state = torch.load(work.checkpoint, map_location=ranks.device, weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise MAFM3Error(f"{work.checkpoint} is not a mafm3 training checkpoint; start a new run.")
        task.load_weights(state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
        record = json.loads(state["best"])
        best_step = record["step"]
        best = Validation(**record["validation"]) if record["validation"] else None
        if work.best.is_file():
            best_weights = load_file(work.best, device=str(ranks.device))
        if start > schedule.iterations:
            raise MAFM3Error(
                f"The checkpoint is at iteration {start}, beyond the {schedule.iterations} asked for; "
                "ask for at least as many iterations."
            )
    ranks.broadcast(parameters)

    def validate_and_select(step: int) -> None:
        nonlocal best_step, best, best_weights
        validation = task.validate()
        task.set_training(True)
        if validation is None or _better(validation, best):
            best_step, best = step, validation
            best_weights = {key: value.detach().clone() for key, value in task.weights().items()}
            if ranks.is_main:
                tensors = {key: value.cpu().contiguous() for key, value in best_weights.items()}
                atomic_write(work.best, lambda tmp: save_file(tensors, str(tmp)))
        if ranks.is_main and validation is not None:
            work.append_log({"step": step, "validation": asdict(validation), "best_step": best_step})

    def checkpoint(step: int, window: list[float]) -> None:
        digests = ranks.digests(task.weights())
        if len(set(digests)) > 1:
            raise RuntimeError(f"the ranks' weights diverged at iteration {step}: {digests}")
        if ranks.is_main:
            best_record = {"step": best_step, "validation": asdict(best) if best else None}
            state = {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "weights": task.weights(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "best": json.dumps(best_record),
            }
            atomic_write(work.checkpoint, lambda tmp: torch.save(state, tmp))
            loss = float(np.mean(window)) if window else math.nan
            lr = scheduler.get_last_lr()[0]
            work.append_log({"step": step, "loss": loss, "lr": lr, "weights_sha256": digests})
        ranks.barrier()

    task.set_training(True)
    losses: list[float] = []
    window: list[float] = []
    started = time.perf_counter()
    for step in range(start + 1, schedule.iterations + 1):
        torch.manual_seed(step_seed(schedule.seed, step, ranks.rank))
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(step)
        loss.backward()
        ranks.average_gradients(parameters)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        window.append(losses[-1])
        at_validation = step == schedule.iterations or (schedule.val_every and step % schedule.val_every == 0)
        stopping = stop_after is not None and step - start >= stop_after
        if at_validation:
            validate_and_select(step)
        if at_validation or stopping:
            checkpoint(step, window)
            window = []
        if ranks.is_main:
            progress(
                "train", step / schedule.iterations, _status(step, schedule, start, started, losses, best)
            )
        if stopping and step < schedule.iterations:
            return FitResult(step, False, best_step, best, losses, "")
    task.load_weights(best_weights)
    return FitResult(schedule.iterations, True, best_step, best, losses, _selection(best, best_step))


def _better(new: Validation, old: Validation | None) -> bool:
    """Whether `new` replaces `old` as the selection: a higher score; NaN never wins, but beats nothing."""
    if old is None:
        return True
    return not math.isnan(new.score) and (math.isnan(old.score) or new.score > old.score)


def _selection(best: Validation | None, best_step: int) -> str:
    if best is None:
        return f"last iteration ({best_step}): no inner validation cases"
    return f"best {best.metric} on the inner validation split, at iteration {best_step}"


def _status(step, schedule, start, started, losses, best) -> str:
    rate = (step - start) / max(time.perf_counter() - started, 1e-9)
    eta = (schedule.iterations - step) / rate if rate > 0 else math.inf
    recent = float(np.mean(losses[-20:])) if losses else math.nan
    text = f"iteration {step}/{schedule.iterations}, loss {recent:.4f}, {rate:.2f} it/s, ETA {_clock(eta)}"
    if best is not None:
        text += f", best {best.metric} {best.score:.4f}"
    return text


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
