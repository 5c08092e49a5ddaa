"""Losses: BPR with the paper code's L2 on the batch's ego embeddings, and ranking distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """mean softplus(s_neg - s_pos) = -mean log sigmoid(s_pos - s_neg) (Rendle et al. 2009)."""
    return F.softplus(neg_scores - pos_scores).mean()


def ego_l2(*ego: torch.Tensor) -> torch.Tensor:
    """0.5 * sum ||e||^2 / batch over the batch's *ego* (layer-0) embeddings, as LightGCN's code."""
    batch = ego[0].shape[0]
    return 0.5 * sum(e.pow(2).sum() for e in ego) / batch


def rank_discount_weights(k: int, lam: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Ranking Distillation's position weights w_r ~ exp(-r / lambda), r = 1..k, normalized to sum 1.

    Tang & Wang (KDD 2018): higher-ranked teacher items are more likely true positives, so they weigh more.
    """
    ranks = torch.arange(1, k + 1, dtype=torch.float32, device=device)
    weights = torch.exp(-ranks / lam)
    return weights / weights.sum()


def ranking_distillation_loss(student_topk_scores: torch.Tensor, neg_scores: torch.Tensor,
                              weights: torch.Tensor) -> torch.Tensor:
    """sum_r w_r softplus(s(u, j) - s(u, pi_r)): the teacher's top-k items pi_r as rank-weighted soft
    positives, each ranked above the batch's sampled negative j, as BPR ranks the true positive.
    Pairwise on purpose: the pointwise form (-log sigmoid s(u, pi_r), Tang & Wang) only raises the
    scores of items the teacher likes, i.e. of popular items, beside a pairwise BPR loss (measured on
    Gowalla: a 16-dim student fell 10% below its no-KD twin)."""
    return (F.softplus(neg_scores[:, None] - student_topk_scores) * weights).sum(1).mean()


def kl_distillation_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) over each row's candidates (Hinton et al.)."""
    teacher_log = F.log_softmax(teacher_scores / temperature, dim=1)
    student_log = F.log_softmax(student_scores / temperature, dim=1)
    return temperature ** 2 * F.kl_div(student_log, teacher_log, log_target=True, reduction="batchmean")
