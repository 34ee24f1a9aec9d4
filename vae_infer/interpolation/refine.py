"""Path refinement ("relaxation"): a latent path moved to minimise a discrete, cost-weighted energy in the
decoder's metric, by damped Gauss-Newton steps with finite-difference decoder Jacobians (vae_infer.interpolation.paths
uses it for graph paths)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..inputs import as_count
from ..work_limits import MAX_REFINE_ITERATIONS, MAX_REFINE_POINTS, check_at_most

REFINE_ITERATIONS = 6
FD_STEP = 1e-2  # latent finite-difference step for the decoder Jacobian


def relax(to_points, codes: NDArray, cost=None, power: float = 0.0, iterations: int = REFINE_ITERATIONS,
          h: float = FD_STEP, tol: float = 1e-4, accept=None) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """Minimise E = sum_i w_i ||x[i+1] - x[i]||^2 over the inner codes, x = to_points(z) (the decoder), w_i the
    mean of cost(z) ** power at the segment's two ends (cost(z, grad=True) -> (values, gradients)).

    Damped Gauss-Newton (Levenberg-Marquardt): each residual s_i (x[i+1] - x[i]) is linearised with
    finite-difference Jacobians of the decoder, so a step solves one small block-tridiagonal system. A step is
    taken only when it lowers E and, when given, accept(codes) is true (a constraint such as "no point fainter
    than ..."; a refused step is retried smaller, like one that raises E).
    At most MAX_REFINE_POINTS (256) codes and MAX_REFINE_ITERATIONS (100) iterations (vae_infer.work_limits):
    each iteration solves a (points x latent)^2 system.
    Returns the codes and {"energy_start", "energy", "iterations"}."""
    iterations = check_at_most(as_count(iterations, "iterations"), MAX_REFINE_ITERATIONS, "iterations",
                               "Gauss-Newton iterations")
    z = np.asarray(codes, dtype=np.float64).copy()
    n, d = z.shape
    check_at_most(n, MAX_REFINE_POINTS, "points", "codes of a refined path")
    m = n - 2
    if m < 1:
        return z.astype(np.float32), {"energy_start": 0.0, "energy": 0.0, "iterations": 0}
    weighted = cost is not None and power != 0

    def evaluate(z):
        x = to_points(z.astype(np.float32)).astype(np.float64)
        if weighted:
            c, gc = cost(z, grad=True)
            rho = c**power
            drho = (power * c ** (power - 1))[:, None] * gc  # (n, d)
        else:
            rho, drho = np.ones(n), np.zeros((n, d))
        wbar = 0.5 * (rho[:-1] + rho[1:])
        diff = np.diff(x, axis=0)
        return float((wbar * (diff * diff).sum(1)).sum()), x, drho, wbar, diff

    e, x, drho, wbar, diff = evaluate(z)
    start, lam, done = e, 1e-3, 0
    eye = np.eye(d)
    jac = np.zeros((n, d, x.shape[1]))  # transposed Jacobians, zero at the fixed endpoints
    for it in range(iterations):
        inner = z[1:-1]
        probes = np.concatenate([inner + h * eye[a] for a in range(d)]).astype(np.float32)
        xp = to_points(probes).astype(np.float64).reshape(d, m, -1)
        jac[1:-1] = np.swapaxes((xp - x[None, 1:-1]) / h, 0, 1)  # (m, d, features)
        # The residual of segment i is r_i = s_i (x[i+1] - x[i]) with s_i = sqrt(w_i); its Jacobians are
        # A_i = -s_i J_i + D_i u_i^T (on z_i) and B_i = s_i J_{i+1} + D_i v_i^T (on z_{i+1}), u, v = d s_i.
        s = np.sqrt(wbar)
        u = drho[:-1] / (4 * s[:, None])
        v = drho[1:] / (4 * s[:, None])
        jtj = jac @ np.swapaxes(jac, 1, 2)  # (n, d, d)
        j01 = jac[:-1] @ np.swapaxes(jac[1:], 1, 2)  # J_i^T J_{i+1}
        jda = (jac[:-1] @ diff[:, :, None])[..., 0]  # J_i^T D_i
        jdb = (jac[1:] @ diff[:, :, None])[..., 0]  # J_{i+1}^T D_i
        dd = (diff * diff).sum(1)
        s2 = (s * s)[:, None, None]
        sc = s[:, None, None]
        out = lambda p, q: p[:, :, None] * q[:, None, :]  # noqa: E731  (batched outer product)
        AA = s2 * jtj[:-1] - sc * (out(jda, u) + out(u, jda)) + dd[:, None, None] * out(u, u)
        BB = s2 * jtj[1:] + sc * (out(jdb, v) + out(v, jdb)) + dd[:, None, None] * out(v, v)
        AB = -s2 * j01 - sc * out(jda, v) + sc * out(u, jdb) + dd[:, None, None] * out(u, v)
        ga = -(s * s)[:, None] * jda + (s * dd)[:, None] * u
        gb = (s * s)[:, None] * jdb + (s * dd)[:, None] * v
        H = np.zeros((n, d, n, d))
        g = np.zeros((n, d))
        idx = np.arange(n - 1)
        H[idx, :, idx, :] += AA
        H[idx + 1, :, idx + 1, :] += BB
        H[idx, :, idx + 1, :] += AB
        H[idx + 1, :, idx, :] += np.swapaxes(AB, 1, 2)
        g[:-1] += ga
        g[1:] += gb
        H = H[1:-1, :, 1:-1, :].reshape(m * d, m * d)
        g = g[1:-1].reshape(-1)
        diag = np.diag(H).copy() + 1e-12
        improved = False
        while lam < 1e8:
            step = np.linalg.solve(H + lam * np.diag(diag), -g).reshape(m, d)
            trial = z.copy()
            trial[1:-1] += step
            res = evaluate(trial)
            if res[0] < e and (accept is None or accept(trial.astype(np.float32))):
                gain = (e - res[0]) / max(e, 1e-300)
                z = trial
                e, x, drho, wbar, diff = res
                lam = max(lam / 3, 1e-9)
                improved = True
                break
            lam *= 4
        done = it + 1
        if not improved or gain < tol:
            break
    return z.astype(np.float32), {"energy_start": start, "energy": e, "iterations": done}
