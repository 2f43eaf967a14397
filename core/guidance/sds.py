"""Score distillation in x0 form, as pure tensor functions.

CasTex writes SDS as a regression towards the model's (clamped) clean-image estimate:

    x_t    = sqrt(abar) x + sqrt(1 - abar) eps
    x0_hat = clamp((x_t - sqrt(1 - abar) eps_hat) / sqrt(abar), -1, 1)
    loss   = 0.5 * w * sum((x - sg(x0_hat))^2) / B,   w = sqrt(abar (1 - abar))

Without the clamp its gradient equals the classic eps-form SDS gradient
`w * sqrt(1-abar)/sqrt(abar) * (eps_hat - eps) / B` (= (1 - abar) (eps_hat - eps) / B);
the clamp keeps the target a valid image, which the authors credit for better colours.
Everything here is float32 math; callers cast UNet outputs before using these.
"""

from __future__ import annotations

import torch


def _broadcast(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """Scalars stay scalars; a per-batch tensor [B] or [1] is shaped to broadcast over [B, C, H, W]."""
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value.reshape(-1, *([1] * (like.ndim - 1)))
    return value


def sds_weight(alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """w(t) = sqrt(abar (1 - abar)): small at both ends of the schedule, largest at mid noise."""
    return torch.sqrt(alpha_bar_t * (1.0 - alpha_bar_t))


def cfg(eps_uncond: torch.Tensor, eps_text: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: move from the unconditional prediction along the text direction."""
    return eps_uncond + scale * (eps_text - eps_uncond)


def add_noise(x: torch.Tensor, noise: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """Forward diffusion q(x_t | x) with the variance-preserving parametrization."""
    a = _broadcast(alpha_bar_t, x)
    return torch.sqrt(a) * x + torch.sqrt(1.0 - a) * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Clean-image estimate from a noise prediction; clamped to the model's data range [-1, 1]."""
    a = _broadcast(alpha_bar_t, x_t)
    x0 = (x_t - torch.sqrt(1.0 - a) * eps) / torch.sqrt(a)
    return x0.clamp(-1.0, 1.0) if clamp else x0


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def epsilon_from_output(output: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor,
                        prediction_type: str = "epsilon") -> torch.Tensor:
    """The noise estimate implied by a UNet output of the scheduler's `prediction_type`.

    DeepFloyd IF predicts eps. Small models trained from scratch on simple data learn the caption
    far better as v-prediction (`v = sqrt(abar) eps - sqrt(1 - abar) x0`: at high noise v is
    nearly -x0, so the text-dependent part of the target is O(1) instead of O(sqrt(abar))); the
    demo cascade is one. With x_t = sqrt(abar) x0 + sqrt(1 - abar) eps:
    eps = sqrt(abar) v + sqrt(1 - abar) x_t, and from an x0 ("sample") prediction
    eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar).
    """
    if prediction_type == "epsilon":
        return output
    a = _broadcast(alpha_bar_t, x_t)
    if prediction_type == "v_prediction":
        return torch.sqrt(a) * output + torch.sqrt(1.0 - a) * x_t
    if prediction_type == "sample":
        return (x_t - torch.sqrt(a) * output) / torch.sqrt(1.0 - a)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def sds_x0_loss(x: torch.Tensor, x0_hat: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """0.5 * w * sum((x - x0_hat)^2) / B with the target detached: its gradient is w (x - x0_hat) / B."""
    w = _broadcast(weight, x)
    return 0.5 * (w * (x - x0_hat.detach()).square()).sum() / x.shape[0]


def eps_form_grad(eps_hat: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor,
                  weight: torch.Tensor | float) -> torch.Tensor:
    """Reference gradient of classic SDS w.r.t. x for the same loss scale (used to test the x0 form).

    `w * sqrt(1 - abar) / sqrt(abar) * (eps_hat - eps) / B`, i.e. what `sds_x0_loss` yields when
    the clamp in `predict_x0` is inactive.
    """
    a = _broadcast(alpha_bar_t, eps)
    w = _broadcast(weight, eps)
    return w * torch.sqrt(1.0 - a) / torch.sqrt(a) * (eps_hat - eps) / eps.shape[0]
