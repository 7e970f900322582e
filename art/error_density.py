"""The PF-ODE field f and the error density Q of ART [paper v1, eqs. 7-8].

In EDM form the PF-ODE is dx/dsigma = f(x, sigma) = (x - D(x; sigma))/sigma. The paper's backward field in psi-time
(psi = T - sigma, docs/method.md §2) is F(x, psi) = -f(x, T - psi), and its Euler local-error density (eqs. 7-8) is the
total derivative of F along the flow, Q = (grad_x F) F + d_psi F. Substituting F = -f and d/dpsi = -d/dsigma:

    Q = d/de F(x + e F, psi + e) |_{e=0} = d/de [-f(x - e f, sigma - e)] |_{e=0} = (J_x f) f + d_sigma f,

so Q computed in sigma-form with the tangent (f, +1) is the paper's Q exactly (same vector, same sign, not only the
same norm). On the 1-D example (data N(0,1)) this gives Q = x/(1+sigma^2)^2, as in [paper v1 §5.1].

Q costs one forward-mode JVP of (x, sigma) -> f with tangent (f, 1) after one forward pass for f; the finite-difference
fallback [f(x + delta f, sigma + delta) - f(x, sigma)]/delta costs one extra forward pass instead.
"""

import warnings
from typing import Callable, Optional, Tuple

import torch

MODES = ('jvp', 'fd', 'auto')
Tensor = torch.Tensor


def _sigma_vector(sigma, x: Tensor) -> Tensor:
    """Per-sample noise levels as a float64 [B] tensor."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).detach().reshape(-1)
    return sigma.expand(x.shape[0]).clone() if sigma.numel() == 1 else sigma   # own memory: JVP writes into it


def _field_fn(net, x: Tensor, sigma: Tensor, class_labels: Optional[Tensor],
              model_kwargs: dict) -> Tuple[Callable, Tensor, dict]:
    """(x, s) -> f(x, s) in float64, with s 0-dim (one level for the batch, as samplers call) or [B].

    Returns the function, s, and a dict where each call records the dtype of the network's output D.
    """
    scalar = bool((sigma == sigma[0]).all())
    info = {}

    def fn(x_: Tensor, s_: Tensor) -> Tensor:
        D = net(x_, s_ if scalar else s_.reshape(-1, 1, 1, 1), class_labels, **model_kwargs)
        info['dtype'] = D.dtype
        return (x_ - D.to(torch.float64)) / s_.reshape(-1, 1, 1, 1)

    return fn, (sigma[0] if scalar else sigma), info


def _count(stats: Optional[dict], key: str, n: int) -> None:
    """Add n per-sample evaluations of kind key to stats."""
    if stats is not None:
        stats[key] = stats.get(key, 0) + n


def field(net, x: Tensor, sigma, class_labels: Optional[Tensor] = None, stats: Optional[dict] = None,
          **model_kwargs) -> Tensor:
    """The PF-ODE field f = (x - D(x; sigma))/sigma in float64; sigma is a float, 0-dim or per-sample [B]."""
    x = x.detach().to(torch.float64)
    fn, s, _ = _field_fn(net, x, _sigma_vector(sigma, x), class_labels, model_kwargs)
    with torch.no_grad():
        f = fn(x, s)
    _count(stats, 'forward', x.shape[0])
    return f


def _q_jvp(fn: Callable, x: Tensor, s: Tensor, f: Tensor) -> Tensor:
    """Q = d/de f(x + e f, s + e) by one forward-mode JVP."""
    return torch.func.jvp(fn, (x, s), (f, torch.ones_like(s)))[1]


def _q_fd(fn: Callable, x: Tensor, s: Tensor, f: Tensor, delta: Optional[float], eps: float) -> Tensor:
    """Q by the forward difference [f(x + delta f, s + delta) - f(x, s)]/delta (toward higher noise)."""
    step = eps ** 0.5 * s.clamp(min=1.0) if delta is None else torch.full_like(s, float(delta))
    with torch.no_grad():
        f_step = fn(x + step.reshape(-1, 1, 1, 1) * f, s + step)
    return (f_step - f) / step.reshape(-1, 1, 1, 1)


def error_density(net, x: Tensor, sigma, class_labels: Optional[Tensor] = None, mode: str = 'jvp',
                  delta: Optional[float] = None, stats: Optional[dict] = None, **model_kwargs) -> Tuple[Tensor, Tensor]:
    """(f, Q) at (x, sigma) in float64, Q = (J_x f) f + d_sigma f, the paper's Q of eq. 8 [B,C,H,W].

    mode: 'jvp' (forward-mode autodiff), 'fd' (forward difference with step delta, default sqrt(eps) max(sigma, 1)
    where eps is the machine epsilon of the network's output dtype: relative to sigma above 1, absolute below, where
    the cancellation in x - D makes smaller steps lose accuracy), or 'auto' (jvp, falling back to fd with a warning
    when the network does not support forward-mode AD). stats, if given, counts per-sample evaluations: 'forward' and
    'jvp'.
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {", ".join(MODES)}, got {mode!r}')
    x = x.detach().to(torch.float64)
    fn, s, info = _field_fn(net, x, _sigma_vector(sigma, x), class_labels, model_kwargs)
    with torch.no_grad():
        f = fn(x, s)
    _count(stats, 'forward', x.shape[0])
    if mode in ('jvp', 'auto'):
        try:
            Q = _q_jvp(fn, x, s, f)
            _count(stats, 'jvp', x.shape[0])
            return f, Q
        except (RuntimeError, NotImplementedError) as exc:
            if mode == 'jvp':
                raise
            warnings.warn(f'forward-mode AD failed ({str(exc).splitlines()[0][:120]}); using finite differences')
    Q = _q_fd(fn, x, s, f, delta, torch.finfo(info['dtype']).eps)
    _count(stats, 'forward', x.shape[0])
    return f, Q


def q_norm(Q: Tensor) -> Tensor:
    """|Q|: the Euclidean norm over all but the batch dimension, [B] float64."""
    return Q.reshape(Q.shape[0], -1).norm(dim=1)
