"""Few-step sample quality of every sampler on a Gaussian mixture in GFF noise with the exact score (issue 4).

Data: a 3-component Gaussian mixture on 1x8x8 images (dense random component covariances, eigenvalues in
[0.02, 0.3], means 0.5 N(0, I)), noised by NIVP / NI-VE SDEs with GFF noise (power 1) and by the isotropic VP SDE
(rows "VP white"). Rows "mixture 2" use a second mixture, fixed before any of its numbers were seen and never used to
choose a default: 5 components (weights 0.3, 0.25, 0.2, 0.15, 0.1), eigenvalues in [0.01, 0.5], means 0.7 N(0, I),
another seed. The score of every marginal is exact (tests/gaussian_oracle.py), so the only errors are the samplers'.

Error (low variance): each sample is assigned to the components by its exact responsibilities r_k(x) (soft), a
Gaussian is fitted per component (weighted mean and covariance) and the weights are estimated by mean r_k; the error
is sum_k w_k KL(N(m_k_hat, S_k_hat) || N(m_k, S_k)) + KL(w_hat || w), minus the mean of the same estimator on exact
samples of the same size (so 0 means "as good as exact sampling"; the residual noise is about 0.006 nats at n = 1e4).

Run from the repository root (it imports tests.gaussian_oracle):

    python -m benchmarks.sampler_quality                       # the table (about an hour on 2 CPU cores)
    python -m benchmarks.sampler_quality --rows unipc --nfes 10 20   # only some rows and budgets
    python -m benchmarks.sampler_quality --gaussian            # discretisation allowances of the sampler tests
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import samplers
from tests.gaussian_oracle import SHAPE, GaussianMixture, gff_cov, moment_statistics, oracle_sde

NFES = (10, 20, 50, 100, 1000)


FAMILIES = {"vp": "nivp", "ve": "nive", "white": "vp"}  # row family -> oracle_sde name ("white": Sigma = I)


def second_mixture() -> GaussianMixture:
    """Mixture 2: not used to choose any default (module docstring)."""
    weights = (0.3, 0.25, 0.2, 0.15, 0.1)
    generator = torch.Generator().manual_seed(2025)
    return GaussianMixture.mixture(SHAPE, generator, weights, separation=0.7, low=0.01, high=0.5)


def problem() -> dict:
    cov = gff_cov()
    gmm = GaussianMixture.mixture(SHAPE, torch.Generator().manual_seed(2024))
    base = {"gmm": gmm, "gmm2": second_mixture(), "cov": cov}
    return base | {family: oracle_sde(name, cov) for family, name in FAMILIES.items()}


def discretised(base: dict, family: str, N: int):
    """The family's SDE with N discrete levels, or None where its discretisation does not exist (VP: beta_max < N)."""
    if N == base[family].N:
        return base[family]
    try:
        return oracle_sde(FAMILIES[family], base["cov"], N=N)
    except ValueError:
        return None


def configurations(nfe: int) -> list[tuple[str, str, dict, int]]:
    """(row label, SDE family, sample() arguments, SDE discretisation N) for a budget of `nfe` evaluations; a label
    starting with "mixture 2" samples the second mixture."""
    vp, ve, white = "vp", "ve", "white"
    tuned = {"schedule": "logsnr", "warp": 0.65, "eps": 5e-3}  # tuned on mixture 1 (before the signal grid)
    logsnr = {"schedule": "logsnr"}  # dpm2m's default grid before the signal grid
    return [
        ("ddpm (var = posterior beta~, default)", vp, {"method": "ddpm", "steps": nfe}, 1000),
        ("ddpm (var = beta)", vp, {"method": "ddpm", "steps": nfe, "var": "beta"}, 1000),
        ("ddim (eta=0)", vp, {"method": "ddim", "steps": nfe}, 1000),
        ("dpm2m (defaults: signal grid, eps 1e-3)", vp, {"method": "dpm2m", "steps": nfe}, 1000),
        ("dpm2m (logsnr grid, the earlier default)", vp, {"method": "dpm2m", "steps": nfe} | logsnr, 1000),
        ("dpm2m (logsnr warp 0.65, eps 5e-3)", vp, {"method": "dpm2m", "steps": nfe} | tuned, 1000),
        ("dpm2m (time grid)", vp, {"method": "dpm2m", "steps": nfe, "schedule": "time"}, 1000),
        ("unipc (defaults: order 3 + UniC, signal grid)", vp, {"method": "unipc", "steps": nfe}, 1000),
        ("unipc (logsnr grid)", vp, {"method": "unipc", "steps": nfe} | logsnr, 1000),
        ("unipc (order 3, no corrector)", vp, {"method": "unipc", "steps": nfe, "corrector": "none"}, 1000),
        ("pc euler_maruyama", vp, {"method": "pc", "steps": nfe}, 1000),
        ("pc reverse_diffusion (N=NFE)", vp, {"method": "pc", "steps": nfe, "predictor": "reverse_diffusion"}, nfe),
        ("pc ancestral (N=NFE)", vp, {"method": "pc", "steps": nfe, "predictor": "ancestral"}, nfe),
        (
            "pc EM + langevin snr 0.16 (NFE/2 steps)",
            vp,
            {"method": "pc", "steps": nfe // 2, "corrector": "langevin"},
            1000,
        ),
        ("ode euler (NFE-1 steps + denoise)", vp, {"method": "ode", "solver": "euler", "steps": nfe - 1}, 1000),
        ("NI-VE dpm2m (defaults: signal grid)", ve, {"method": "dpm2m", "steps": nfe}, 1000),
        ("NI-VE dpm2m (logsnr grid)", ve, {"method": "dpm2m", "steps": nfe} | logsnr, 1000),
        ("NI-VE unipc (defaults)", ve, {"method": "unipc", "steps": nfe}, 1000),
        (
            "NI-VE pc reverse_diffusion (N=NFE)",
            ve,
            {"method": "pc", "steps": nfe, "predictor": "reverse_diffusion"},
            nfe,
        ),
        ("NI-VE cas (eta = max(0.062, 1-1/r+0.01))", ve, {"method": "cas", "steps": nfe}, 1000),
        (
            "NI-VE als (3 per level, eta 0.3, +denoise)",
            ve,
            {"method": "als", "steps": (nfe - 1) // 3, "n_steps_each": 3},
            1000,
        ),
        ("VP white dpm2m (defaults: signal grid)", white, {"method": "dpm2m", "steps": nfe}, 1000),
        ("VP white dpm2m (logsnr grid)", white, {"method": "dpm2m", "steps": nfe} | logsnr, 1000),
        ("VP white unipc (defaults)", white, {"method": "unipc", "steps": nfe}, 1000),
        ("mixture 2: dpm2m (defaults: signal grid)", vp, {"method": "dpm2m", "steps": nfe}, 1000),
        ("mixture 2: dpm2m (logsnr grid)", vp, {"method": "dpm2m", "steps": nfe} | logsnr, 1000),
        ("mixture 2: dpm2m (logsnr warp 0.65, eps 5e-3)", vp, {"method": "dpm2m", "steps": nfe} | tuned, 1000),
        ("mixture 2: unipc (defaults)", vp, {"method": "unipc", "steps": nfe}, 1000),
        ("mixture 2: NI-VE dpm2m (defaults: signal grid)", ve, {"method": "dpm2m", "steps": nfe}, 1000),
        ("mixture 2: NI-VE unipc (defaults)", ve, {"method": "unipc", "steps": nfe}, 1000),
    ]


def cas_eps_step(sde, steps: int, eps: float = samplers.common.DEFAULT_EPS) -> float:
    """eps_step for CAS over `steps` levels: eta = max(0.062, 1 - 1/r + 0.01) (eta = eps_step / sigma_L^2).

    0.062 is the default (NCSNv2's eps_step); fewer levels force eta >= 1 - 1/r, and a larger eta loses variance
    on non-degenerate data (x0_hat is under-dispersed), so the smallest admissible eta is the better choice.
    """
    sigma_last = float(sde.marginal_std(torch.tensor(eps, dtype=torch.float64)))
    ratio = (sde.sigma_max / sigma_last) ** (1 / (steps - 1))
    return max(0.062, 1 - 1 / ratio + 0.01) * sigma_last**2


def run_table(n: int, seed: int, rows: list[str] | None, nfes: tuple[int, ...] = NFES) -> None:
    base = problem()
    nulls = {}
    for key, name in (("gmm", "mixture 1"), ("gmm2", "mixture 2")):
        null_mean, null_sd = base[key].fit_error_null(n, replicates=20)
        nulls[key] = null_mean
        print(f"exact samples, {name}: fit error {null_mean:.4f} +- {null_sd:.4f} nats (n = {n}, 20 replicates)")
    results: dict[str, dict[int, tuple[float, int]]] = {}
    for nfe in nfes:
        for label, family, args, N in configurations(nfe):
            if rows and not any(r in label for r in rows):
                continue
            key = "gmm2" if label.startswith("mixture 2") else "gmm"
            gmm, null_mean = base[key], nulls[key]
            args = dict(args)
            if args.get("steps", 1) < 1:
                continue
            sde = discretised(base, family, N)
            if sde is None:
                print(f"{label:40s} NFE {nfe:5d}  n/a: no {family.upper()} discretisation with N = {N}", flush=True)
                continue
            if args["method"] == "cas":
                args["eps_step"] = cas_eps_step(sde, args["steps"])
            if args["method"] == "als":
                args["eps_step"] = 0.3 * float(sde.marginal_std(torch.tensor(1e-3, dtype=torch.float64))) ** 2
            start = time.time()
            x, used = samplers.sample(
                sde,
                gmm.score_fn(sde),
                (n, *SHAPE),
                generator=torch.Generator().manual_seed(seed),
                dtype=torch.float64,
                **args,
            )
            err = gmm.fit_error(x) - null_mean
            results.setdefault(label, {})[nfe] = (err, used)
            print(f"{label:40s} NFE {used:5d}  error {err:8.4f}  ({time.time() - start:.1f} s)", flush=True)
    print()
    print("| method | " + " | ".join(f"NFE {nfe}" for nfe in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for label, row in results.items():
        cells = []
        for nfe in nfes:
            if nfe in row:
                err, used = row[nfe]
                cells.append(f"{err:.3f}" + ("" if used == nfe else f" ({used})"))
            else:
                cells.append("-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if rows:
        return
    print()
    print("| ode dopri5 (adaptive, + denoise), rtol = atol | NFE | error |")
    print("|---|---|---|")
    gmm, null_mean = base["gmm"], nulls["gmm"]
    for tol in (1e-2, 1e-3, 1e-4, 1e-5):
        sde = base["vp"]
        generator = torch.Generator().manual_seed(seed)
        x, used = samplers.sample(
            sde, gmm.score_fn(sde), (n, *SHAPE), "ode", generator=generator, dtype=torch.float64, rtol=tol, atol=tol
        )
        print(f"| {tol:g} | {used} | {gmm.fit_error(x) - null_mean:.3f} |", flush=True)


def gaussian_allowances(n: int, seed: int, cases: list[str] | None) -> None:
    """Bias of the two statistics of tests/test_samplers.py for each of its sampler cases, with n samples."""
    from tests.test_samplers import ACCURACY_CASES, gaussian_problem

    data, sdes = gaussian_problem()
    print("| case | NFE | KL excess (sd) | variance ratio - 1 (sd) | test allowances (KL, variance) |")
    print("|---|---|---|---|---|")
    for name, (sde_name, args, _, kl_allow, var_allow) in ACCURACY_CASES.items():
        if cases and name not in cases:
            continue
        sde = sdes[sde_name]
        generator = torch.Generator().manual_seed(seed)
        x, nfe = samplers.sample(sde, data.score_fn(sde), (n, *SHAPE), generator=generator, dtype=torch.float64, **args)
        st = moment_statistics(x, data.means[0], data.covs[0])
        print(
            f"| {name} | {nfe} | {st['kl_excess']:+.4f} ({st['kl_sd']:.4f}) | {st['var_excess']:+.4f} "
            f"({st['var_sd']:.4f}) | {kl_allow}, {var_allow} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000, help="samples per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small tensors: 1 is fastest)")
    parser.add_argument("--gaussian", action="store_true", help="measure the allowances of tests/test_samplers.py")
    parser.add_argument("--cases", nargs="*", help="with --gaussian: only these cases of ACCURACY_CASES")
    parser.add_argument("--rows", nargs="*", help="table: only the rows whose label contains one of these")
    parser.add_argument("--nfes", nargs="*", type=int, default=list(NFES), help="table: these budgets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}")
    if args.gaussian:
        gaussian_allowances(args.n, args.seed, args.cases)
    else:
        run_table(args.n, args.seed, args.rows, tuple(args.nfes))


if __name__ == "__main__":
    main()
