"""DINO self-distillation parts: projection head, loss with centering, EMA teacher, schedules.

Reimplemented from the DINO/DINOv2 papers' description (not their code):

* DINOHead: MLP in -> hidden -> hidden -> bottleneck (GELU; with `use_bn` a batch norm after each
  hidden Linear, as DINO's `use_bn` option), L2-normalised bottleneck, then a
  weight-normalised prototype layer without bias whose weight norm is fixed to 1 (each
  prototype row is normalised in the forward pass, which is weight norm with g = 1).
* DINOLoss: teacher probabilities softmax((t - center) / tau_t) on the global crops, student
  log-probabilities log_softmax(s / tau_s) on every crop; cross-entropy over all (teacher crop,
  student crop) pairs of different crops, averaged. The center is an EMA of the teacher's batch
  mean (all-reduced across processes) and is updated after the loss is computed.
* EMA teacher update and the cosine momentum / linear teacher-temperature schedules.

Health statistics (`DINOLoss.loss_and_stats`): the teacher's mean per-sample entropy H(q), the
student-teacher KL (cross-entropy minus H(q), exact since every teacher crop enters the same
number of pairs) and the entropy of the teacher's batch-mean distribution. A teacher entropy at
ln K means uniform collapse (centering has removed everything that differs between tiles: the
loss is ln K and carries no signal); a marginal entropy near 0 means every tile picks the same
prototype (dimension collapse).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < n_layers - 1:
                if use_bn:
                    # batch statistics in train and eval mode alike (the EMA teacher runs in
                    # eval mode and has no running statistics of its own to trust): features
                    # that share a large common component across tiles (a little-trained
                    # backbone) are spread out before the prototypes see them
                    layers.append(nn.BatchNorm1d(dims[i + 1], track_running_stats=False))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        # prototype layer: weight-normed, norm fixed to 1, no bias
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return [self.prototypes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.mlp(x)
        z = F.normalize(z, dim=-1, p=2)
        w = F.normalize(self.prototypes, dim=-1, p=2)
        return F.linear(z, w)


class DINOLoss(nn.Module):
    """Cross-entropy between centred, sharpened teacher and student distributions."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self,
        student_out: torch.Tensor,
        teacher_out: torch.Tensor,
        teacher_temp_now: float,
        n_crops: int,
        n_global: int = 2,
    ) -> torch.Tensor:
        """student_out [n_crops*B, K] (globals first, view-major), teacher_out [n_global*B, K];
        `teacher_temp_now`: this step's teacher temperature (`teacher_temperature`: the config's
        teacher_temp_start warming up to teacher_temp_final)."""
        return self.loss_and_stats(student_out, teacher_out, teacher_temp_now, n_crops, n_global)[0]

    def loss_and_stats(
        self,
        student_out: torch.Tensor,
        teacher_out: torch.Tensor,
        teacher_temp_now: float,
        n_crops: int,
        n_global: int = 2,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and detached health statistics (nats): teacher_entropy, dino_kl,
        teacher_marginal_entropy (see module docstring)."""
        t = F.softmax((teacher_out.float() - self.center) / teacher_temp_now, dim=-1).detach()
        teacher_chunks = t.chunk(n_global)
        student_chunks = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(
            n_crops
        )
        total = student_out.new_zeros((), dtype=torch.float32)
        n_terms = 0
        for iq, q in enumerate(teacher_chunks):
            for v, logp in enumerate(student_chunks):
                if v == iq:
                    continue  # the student never matches the teacher on the same crop
                total = total + torch.sum(-q * logp, dim=-1).mean()
                n_terms += 1
        loss = total / max(n_terms, 1)
        with torch.no_grad():
            h = entropy(t).mean()
            stats = {
                "teacher_entropy": h,
                "dino_kl": loss.detach() - h,
                "teacher_marginal_entropy": entropy(t.mean(dim=0)),
            }
        return loss, stats

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_sum = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor([teacher_out.shape[0]], device=teacher_out.device, dtype=torch.float32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        batch_center = batch_sum / count
        m = self.center_momentum
        self.center.mul_(m).add_(batch_center, alpha=1 - m)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension of probabilities `p`."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, parameter by parameter (matched by name)."""
    s_params = dict(student.named_parameters())
    t_list, s_list = [], []
    for name, tp in teacher.named_parameters():
        sp = s_params.get(name)
        if sp is None:
            raise KeyError(f"EMA: student has no parameter {name}")
        t_list.append(tp.data)
        s_list.append(sp.detach().data.to(tp.dtype))
    if not t_list:
        return
    torch._foreach_mul_(t_list, momentum)
    torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)


def cosine_momentum(step: int, total_steps: int, base: float, final: float) -> float:
    """EMA momentum: `base` at step 0 rising to `final` at `total_steps` on a half cosine."""
    if total_steps <= 0:
        return final
    t = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * t) + 1) / 2


def teacher_temperature(step: int, start: float, final: float, warmup_steps: int) -> float:
    """Linear warm-up of the teacher temperature from `start` to `final`, then constant."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return final
    return start + (final - start) * step / warmup_steps
