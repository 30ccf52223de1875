"""The pruning loop: Hyperflows' two phases, and the baselines run through the same harness.

Phase 1 (``epochs``): weights by SGD (cosine ``lr -> lr * lr_final_frac``); Hyperflows scores by
their own Adam; loss = cross-entropy (label smoothing) + ``P * mean(t)`` with ``P = gamma ** 1.5``
and gamma moved by the controller toward the sigmoid trajectory. GMP raises sparsity on the cubic
schedule; one-shot magnitude and random prune before the first step.
Phase 2 (``regrowth_epochs``): pressure off, weight lr reset to ``ft_lr`` (cosine to
``ft_lr * ft_lr_final_frac``); Hyperflows' score lr reset and multiplied by 0.75 per epoch, then 0
after ``score_freeze_frac`` of the phase, which freezes the mask. At that moment the mask is
trimmed (by score) to the exact requested count, so the last part of phase 2 fine-tunes the weights
under the final mask instead of ending on an untrained trim. Baselines fine-tune with fixed masks.

On CUDA the forward runs under bfloat16 autocast where the GPU supports it. Under ``torchrun`` the
scored model runs in DistributedDataParallel: weights and scores are
parameters, so both gradients are averaged over ranks and every rank takes identical optimiser
steps; ``batch_size`` is the global batch. The density the controller reads is averaged over ranks
(bit-identical everywhere) so gamma, the GMP schedule and the final trim agree on every rank.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow import distributed
from edgeflow.progress import ProgressBar
from edgeflow.prune.baselines import cubic_density, magnitude_keep, random_keep
from edgeflow.prune.config import PruneConfig
from edgeflow.prune.pressure import PressureController, fit_power_law, gamma_for_density, solve_trajectory
from edgeflow.prune.scored import MaskSet, attach_scores
from edgeflow.train import evaluate, resolve_device
from edgeflow.train.augment import random_crop_flip
from edgeflow.train.loop import cosine_lr


@dataclass
class PruneResult:
    """What :func:`prune` returns: the masks, per-epoch metrics and the controller's log."""

    masks: MaskSet
    target_density: float
    history: list[dict] = field(default_factory=list)
    controller: list[dict] = field(default_factory=list)  # per update: step, density, target, gamma
    reach_step: int | None = None  # first step at which density <= trajectory (Hyperflows)
    power_law: dict | None = None
    score_lr: float = 0.0
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.masks.density()


def _weight_params(model: nn.Module, ms: MaskSet) -> list[nn.Parameter]:
    skip = {id(s) for s in ms.scores()}
    return [p for p in model.parameters() if id(p) not in skip]


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 autocast on CUDA GPUs that support it (Ampere/Orin and later), else full precision.

    Only bf16: fp16 would need loss scaling across two optimisers, and a scaled pressure term."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _train_step(net, ms, xb, yb, *, opt, score_opt, pressure: float, config: PruneConfig):
    """One step; ``net`` is the model or its DDP wrapper (whose forward all-reduces gradients)."""
    amp = _amp_dtype(xb.device)
    with torch.autocast(xb.device.type, dtype=amp, enabled=amp is not None):
        logits = net(xb).float()
    loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
    total = loss + pressure * ms.mean_score() if pressure > 0 else loss
    opt.zero_grad(set_to_none=True)
    if score_opt is not None:
        score_opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    if score_opt is not None and score_opt.param_groups[0]["lr"] > 0:
        score_opt.step()
    return loss, logits


def pressure_sweep(model: nn.Module, ms: MaskSet, train, *, config: PruneConfig, score_lr: float,
                   device: torch.device, generator: torch.Generator,
                   net: nn.Module | None = None, aug_generator: torch.Generator | None = None) -> dict:
    """Constant-pressure runs from the current state; fit density ~ c * gamma^-alpha; restore.

    Each gamma trains weights and scores for ``sweep_steps`` steps at ``P = gamma ** 1.5``; the
    model is restored after each. Returns the points, the fit and the steps spent. ``net`` is the
    DDP wrapper when distributed; ``aug_generator`` the per-rank augmentation generator.
    """
    net = net or model
    aug_generator = aug_generator or generator
    state = copy.deepcopy(model.state_dict())
    points = []
    x, y = train
    for gamma in config.sweep_gammas:
        opt = torch.optim.SGD(_weight_params(model, ms), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
        sopt = torch.optim.Adam(ms.scores(), lr=score_lr)
        done = 0
        while done < config.sweep_steps:
            for idx in distributed.rank_batches(len(y), batch_size=config.batch_size,
                                                generator=generator):
                xb, yb = x[idx], y[idx]
                if config.augment:
                    xb = random_crop_flip(xb, padding=4, generator=aug_generator)
                _train_step(net, ms, xb.to(device), yb.to(device), opt=opt, score_opt=sopt,
                            pressure=gamma ** 1.5, config=config)
                done += 1
                if done >= config.sweep_steps:
                    break
        points.append({"gamma": gamma,
                       "density": distributed.mean_over_ranks(ms.density(config.budget), device)})
        model.load_state_dict(state)
    out: dict = {"points": points, "steps": config.sweep_steps * len(config.sweep_gammas)}
    try:
        out["c"], out["alpha"] = fit_power_law([p["gamma"] for p in points],
                                               [p["density"] for p in points])
    except Exception as exc:  # an uninformative sweep is reported, not fatal
        out["error"] = str(exc)
    return out


def prune(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], *, config: PruneConfig,
          progress: bool = False, on_epoch_end: Callable[[dict], None] | None = None) -> PruneResult:
    """Prune ``model`` in place (masks attached) on preprocessed ``train`` = (x, y).

    Call :func:`edgeflow.prune.finalize` on the model afterwards for a plain ``nn.Module``.
    Example: ``res = prune(net, (x, y), config=PruneConfig(sparsity=0.95, epochs=3))``.
    """
    from edgeflow.train.batchnorm import frozen_batchnorm

    with frozen_batchnorm(model, enabled=config.freeze_bn):
        return _prune(model, train, config=config, progress=progress, on_epoch_end=on_epoch_end)


def _prune(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], *, config: PruneConfig,
           progress: bool, on_epoch_end: Callable[[dict], None] | None) -> PruneResult:
    t_start = time.perf_counter()
    device = distributed.device_for_rank(resolve_device(config.device))
    rank = distributed.setup(device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)  # batch order, masks: identical on every rank
    # crops and flips: one stream per rank (the single-process run keeps its one generator)
    aug_gen = torch.Generator().manual_seed(config.seed + 7919 * rank.rank) if rank.enabled else gen
    model.to(device).train()
    ms = attach_scores(model, granularity=config.granularity, exclude=config.exclude,
                       score_init=config.score_init, slope=config.ste_slope,
                       init_order=config.score_init_order,
                       generator=torch.Generator().manual_seed(config.seed + 1),
                       channel_groups=config.channel_groups)
    for s in ms.scores():
        s.data = s.data.to(device)
    x, y = train
    spe = distributed.steps_per_epoch(len(y), config.batch_size)
    p_steps, r_steps = spe * config.epochs, spe * config.regrowth_epochs
    target = 1.0 - config.sparsity
    use_pressure = config.method == "hyperflows"
    near_pattern = False  # n:m asked at (or within a point of) the pattern's own sparsity
    if config.kind == "n:m":
        pattern = ms.density(config.budget)  # every score starts >= 0: the pure n:m density
        near_pattern = pattern - target <= 0.01  # e.g. 2:4 with a dense RGB stem: 50.2% -> 50%
        if target >= pattern:  # the pattern alone is as sparse as asked: flows only choose
            target, use_pressure = pattern, False
    learn = config.method == "hyperflows"
    for s in ms.scores():
        s.requires_grad_(learn)
    net = distributed.wrap_ddp(model, device)
    # Auto score lr: under pressure the scores must travel their init range (0.2-0.5) within the
    # run, so short runs need more than the spec's 1e-3. At the n:m pattern's own sparsity flows
    # mostly choose which n of m survive (the last fraction of a point comes from the final trim),
    # and the spec's 1e-3 keeps the magnitude projection unless a flow is consistent (B1, 2:4:
    # 79.5% top-1 at 1e-3 vs 62.6% at 10 / steps, dense 78.9%).
    if config.score_lr is not None:
        score_lr = config.score_lr
    elif use_pressure and not near_pattern:
        score_lr = max(1e-3, 10.0 / max(1, p_steps))
    else:
        score_lr = 1e-3
    every = config.controller_every or max(1, p_steps // 25)
    updates = max(1, p_steps // every)
    trajectory = solve_trajectory(target, updates, ceiling=config.trajectory_ceiling,
                                  steepness=config.trajectory_steepness)[1] if use_pressure else []
    ctrl = PressureController(step=config.controller_step, gamma=config.gamma_init,
                              release=config.release)
    result = PruneResult(masks=ms, target_density=target, score_lr=score_lr if learn else 0.0)
    opt = torch.optim.SGD(_weight_params(model, ms), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    score_opt = torch.optim.Adam(ms.scores(), lr=score_lr) if learn else None
    if use_pressure and config.power_law_start:
        sweep = pressure_sweep(model, ms, train, config=config, score_lr=score_lr, device=device,
                               generator=gen, net=net, aug_generator=aug_gen)
        if "alpha" in sweep:
            k = min(updates, max(1, config.sweep_steps // every))
            ctrl.gamma = sweep["gamma0"] = gamma_for_density(trajectory[k - 1], sweep["c"], sweep["alpha"])
        result.power_law = sweep
    if config.method == "magnitude":
        ms.set_keep(magnitude_keep(ms, target))
    elif config.method == "random":
        ms.set_keep(random_keep(ms, target, generator=gen))
    gmp_every = config.gmp_every or max(1, p_steps // 50)
    freeze_step = p_steps + int(config.score_freeze_frac * r_steps)
    trimmed = not learn
    bar = ProgressBar(progress and rank.is_main, p_steps + r_steps, config.method)
    step = 0
    shown = ms.density()  # recounted at controller/mask updates only: counting every step is slow
    for epoch in range(config.epochs + config.regrowth_epochs):
        phase = 1 if epoch < config.epochs else 2
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in distributed.rank_batches(len(y), batch_size=config.batch_size, generator=gen):
            xb, yb = x[idx], y[idx]
            if device.type == "cuda":  # pinned host memory: the copy overlaps the previous step
                xb = xb.pin_memory().to(device, non_blocking=True)
            if config.augment:
                xb = random_crop_flip(xb, padding=4, generator=aug_gen)
            if phase == 1:
                lr = cosine_lr(step, p_steps, peak=config.lr, final_frac=config.lr_final_frac)
                slr = score_lr
            else:
                lr = cosine_lr(step - p_steps, r_steps, peak=config.ft_lr,
                               final_frac=config.ft_lr_final_frac)
                slr = 0.0 if step >= freeze_step else \
                    score_lr * config.score_lr_decay ** ((step - p_steps) / spe)
            for g in opt.param_groups:
                g["lr"] = lr
            if score_opt is not None:
                for g in score_opt.param_groups:
                    g["lr"] = slr
            pressure = ctrl.pressure if (use_pressure and phase == 1) else 0.0
            loss, logits = _train_step(net, ms, xb.to(device), yb.to(device), opt=opt,
                                       score_opt=score_opt, pressure=pressure, config=config)
            step += 1
            loss_sum += loss.item() * len(yb)
            correct += int((logits.argmax(1).cpu() == yb).sum())
            seen += len(yb)
            if phase == 1 and use_pressure and step % every == 0 and step // every <= updates:
                u = step // every
                density = distributed.mean_over_ranks(ms.density(config.budget), device)
                if result.reach_step is None and density <= trajectory[u - 1]:
                    result.reach_step = step
                ctrl.update(density, trajectory[u - 1])
                result.controller.append({"step": step, "density": density,
                                          "target": trajectory[u - 1], "gamma": ctrl.gamma})
                shown = ms.density()
            if phase == 1 and config.method == "gmp" and (step % gmp_every == 0 or step == p_steps):
                ms.set_keep(magnitude_keep(ms, cubic_density(step, p_steps, target)))
                shown = ms.density()
            if not trimmed and step >= freeze_step:
                ms.trim(target, budget=config.budget, min_channels=config.min_channels,
                        multiple=config.channel_multiple)
                trimmed = True
                shown = ms.density()
            # what fits an 80-column line beside the bar (edgeflow.progress): loss and the
            # controller's gamma are in the returned history
            bar.advance(f"ep {epoch + 1}/{config.epochs + config.regrowth_epochs} sparsity "
                        f"{1 - shown:.3f} acc {correct / seen:.3f}")
        if phase == 1 and epoch == config.epochs - 1:
            ctrl.off()
        shown = ms.density()
        loss_sum, correct, seen = distributed.all_reduce_sum([loss_sum, correct, seen], device)
        metrics = {"epoch": epoch + 1, "phase": phase, "loss": loss_sum / max(1, seen),
                   "train_acc": correct / max(1, seen), "sparsity": 1 - shown,
                   "gamma": ctrl.gamma, "lr": lr, "seconds": time.perf_counter() - t0}
        result.history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    distributed.sync_buffers(model)
    if not trimmed:
        ms.trim(target, budget=config.budget, min_channels=config.min_channels,
                multiple=config.channel_multiple)
    bar.close()
    model.eval()
    result.seconds = time.perf_counter() - t_start
    return result


__all__ = ["PruneResult", "evaluate", "pressure_sweep", "prune"]
